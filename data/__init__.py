from data.augment import Augmentation
from data.cifar10 import DatasetError, channel_stats, load_cifar10, split_train_val
from data.loader import DeviceLoader

__all__ = ["Augmentation", "DatasetError", "DeviceLoader", "channel_stats", "load_cifar10", "split_train_val"]
