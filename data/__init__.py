from data.augment import Augmentation
from data.build import (channel_stats, check_available, check_data_config, make_loaders, normalization,
                        split_train_val)
from data.cifar import class_names, dataset_dir, load_dataset
from data.datasets import DATASETS, DatasetSpec, get_dataset
from data.loader import DeviceLoader
from errors import DatasetError

__all__ = ["Augmentation", "DATASETS", "DatasetError", "DatasetSpec", "DeviceLoader", "channel_stats",
           "check_available", "check_data_config", "class_names", "dataset_dir", "get_dataset", "load_dataset",
           "make_loaders", "normalization", "split_train_val"]
