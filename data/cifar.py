"""CIFAR-format datasets (CIFAR-10, CIFAR-100) from their official pickled files, straight into uint8 tensors.

We read the files ourselves instead of using torchvision's CIFAR10/CIFAR100 classes: it is faster
(one reshape per file, no PIL), and copies whose per-image file names differ from the original
(so their md5 differs, like the shared CIFAR-10 copy) still load: we check structure (shapes, dtypes,
label range, counts). Only a download is md5-checked, on the archive. Which files, which label key and
how many classes come from the dataset's spec (data/datasets.py).
"""
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from errors import DatasetError


def dataset_dir(spec, root) -> Path:
    """Accept either the folder holding `spec.folder` or that folder itself."""
    from sweeper.stores import from_launch_dir  # a relative root is the launch folder's, with hydra.job.chdir too
    root = Path(from_launch_dir(os.path.expanduser(str(root))))
    return root if root.name == spec.folder else root / spec.folder


def missing_files(spec, directory):
    return [name for name in spec.train_files + spec.test_files if not (Path(directory) / name).is_file()]


def not_found_message(spec, directory, missing):
    return (f"{spec.title} not found: {directory} lacks {', '.join(missing)}. Set data.root (or the "
            f"{spec.root_env} environment variable) to the folder holding {spec.folder}/, or add "
            f"data.download=true to fetch it")


def _unpickle(spec, path, what):
    if not path.is_file():
        raise DatasetError(f"missing {spec.title} file {path}")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as err:  # truncated or not a pickle at all
        raise DatasetError(f"cannot read {path} as a {spec.title} {what} ({type(err).__name__}: {err}); "
                           f"delete it and download again") from err


def read_batch(spec, path):
    """One data file -> (uint8 [N, 3, S, S], int64 [N]), after checking its structure."""
    path = Path(path)
    entry = _unpickle(spec, path, "batch")
    if not isinstance(entry, dict) or "data" not in entry or spec.label_key not in entry:
        raise DatasetError(f"{path} is not a {spec.title} batch: expected a dict with 'data' and '{spec.label_key}'")
    size = spec.image_size
    data = np.asarray(entry["data"])
    labels = np.asarray(entry[spec.label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * size * size:
        raise DatasetError(f"{path}: 'data' should be uint8 [N, {3 * size * size}], "
                           f"got {data.dtype} {list(data.shape)}")
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"{path}: {data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DatasetError(f"{path}: labels outside 0..{spec.num_classes - 1} (found {labels.min()}..{labels.max()})")
    return torch.from_numpy(data.reshape(-1, 3, size, size).copy()), torch.from_numpy(labels)


def read_split(spec, directory, files, expected):
    images, labels = zip(*(read_batch(spec, Path(directory) / name) for name in files))
    x, y = torch.cat(images), torch.cat(labels)
    if len(x) != expected:
        raise DatasetError(f"{directory}: expected {expected:,} images in {', '.join(files)}, found {len(x):,}")
    return x, y


def class_names(spec, root):
    """The class names in label order, from the dataset's meta file."""
    path = dataset_dir(spec, root) / spec.meta_file
    entry = _unpickle(spec, path, "meta file")
    names = entry.get(spec.names_key) if isinstance(entry, dict) else None
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise DatasetError(f"{path}: expected '{spec.names_key}' with {spec.num_classes} class names")
    return names


def download(spec, root: Path):
    """Fetch and unpack the official archive (md5-checked) with torchvision's downloader."""
    from torchvision.datasets.utils import download_and_extract_archive
    try:
        download_and_extract_archive(spec.archive_url, download_root=str(root), md5=spec.archive_md5)
    except Exception as err:
        raise DatasetError(f"could not download {spec.title} from {spec.archive_url} into {root}: {err}. "
                           f"Download it by hand, unpack it there, or point {spec.root_env} at a copy") from err


_CACHE = {}


def load_dataset(spec, root, download_missing=False, expected_train=None, expected_test=None):
    """Return {'train': (x, y), 'test': (x, y)} as uint8 images [N, 3, S, S] and int64 labels.

    Expected sizes default to the official split's. Read once per process: later calls for the same
    unchanged files (every trial of a sweep running in this process) get the same tensors back, which
    callers must not modify in place.
    """
    expected_train = spec.train_images if expected_train is None else expected_train
    expected_test = spec.test_images if expected_test is None else expected_test
    directory = dataset_dir(spec, root)
    key = (spec.name, str(directory.resolve()), expected_train, expected_test, _files_stamp(spec, directory))
    if key not in _CACHE:
        _CACHE.clear()  # one dataset at a time; a changed file replaces the old entry
        _CACHE[key] = _read(spec, directory, download_missing, expected_train, expected_test)
    return _CACHE[key]


def _files_stamp(spec, directory):
    """(name, size, mtime) of every data file, so a replaced or repaired file is read again."""
    stamp = []
    for name in spec.train_files + spec.test_files:
        try:
            info = (directory / name).stat()
            stamp.append((name, info.st_size, info.st_mtime_ns))
        except OSError:
            stamp.append((name, None, None))
    return tuple(stamp)


def _read(spec, directory, download_missing, expected_train, expected_test):
    missing = missing_files(spec, directory)
    if missing and download_missing:
        download(spec, directory.parent)
        missing = missing_files(spec, directory)
    if missing:
        raise DatasetError(not_found_message(spec, directory, missing))
    return {"train": read_split(spec, directory, spec.train_files, expected_train),
            "test": read_split(spec, directory, spec.test_files, expected_test)}
