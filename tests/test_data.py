import dataclasses
import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from data import (DatasetError, DeviceLoader, channel_stats, check_available, class_names, load_dataset,
                  make_loaders, split_train_val)
from data.datasets import CIFAR10
from tests.conftest import SHARED_CIFAR, compose_cfg, small_data_overrides, write_batch, write_cifar


def load_cifar10(root, **kwargs):
    return load_dataset(CIFAR10, root, **kwargs)


def test_reads_batches_into_uint8_tensors(cifar_root):
    splits = load_cifar10(cifar_root, expected_train=500, expected_test=200)
    x, y = splits["train"]
    assert x.shape == (500, 3, 32, 32) and x.dtype == torch.uint8
    assert y.shape == (500,) and y.dtype == torch.int64 and 0 <= y.min() and y.max() <= 9
    assert splits["test"][0].shape == (200, 3, 32, 32)
    # root may also be the batches folder itself
    assert load_cifar10(cifar_root / "cifar-10-batches-py", expected_train=500, expected_test=200)


def test_missing_dataset_names_the_fix(tmp_path):
    with pytest.raises(DatasetError, match="CIFAR10_ROOT.*data.download=true") as loader_error:
        load_cifar10(tmp_path)
    # the cheap check the sweeper's preflight uses says the same, without reading anything
    data_cfg = dict(name="cifar10", root=str(tmp_path), download=False)
    with pytest.raises(DatasetError) as check_error:
        check_available(OmegaConf.create(data_cfg))
    assert str(check_error.value) == str(loader_error.value)
    data_cfg["download"] = True  # the loader will fetch them: not an error yet
    assert check_available(OmegaConf.create(data_cfg)) == tmp_path / "cifar-10-batches-py"


def test_check_available_reads_nothing(cifar_root, monkeypatch):
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("check_available read a file"))
    assert check_available(OmegaConf.create(dict(name="cifar10", root=str(cifar_root), download=False))).is_dir()


@pytest.mark.parametrize("damage, message", [
    ("truncate", "cannot read"),
    ("shape", r"uint8 \[N, 3072\]"),
    ("labels", "labels outside 0..9"),
    ("count", "expected 500"),
    ("not_dict", "not a CIFAR-10 batch"),
])
def test_corrupted_files_are_rejected(tmp_path, damage, message):
    root = write_cifar(tmp_path)
    path = root / "cifar-10-batches-py" / "data_batch_3"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "shape":
        write_batch(path, np.zeros((100, 1024), np.uint8), [0] * 100)
    elif damage == "labels":
        write_batch(path, np.zeros((100, 3072), np.uint8), [12] * 100)
    elif damage == "count":
        write_batch(path, np.zeros((99, 3072), np.uint8), [0] * 99)
    else:
        path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DatasetError, match=message):
        load_cifar10(root, expected_train=500, expected_test=200)


def test_split_is_fixed_disjoint_and_subsettable():
    x = torch.arange(1000).view(-1, 1, 1, 1).expand(-1, 3, 32, 32).to(torch.uint8)
    y = torch.arange(1000)
    (tx, ty), (vx, vy) = split_train_val(x, y, val_size=100, seed=0)
    (tx2, ty2), (vx2, vy2) = split_train_val(x, y, val_size=100, seed=0)
    assert torch.equal(vy, vy2) and len(vy) == 100 and len(ty) == 900
    assert not set(ty.tolist()) & set(vy.tolist())
    (sx, sy), (_, vy3) = split_train_val(x, y, val_size=100, seed=0, subset=50)
    assert len(sy) == 50 and torch.equal(vy3, vy)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_download_path_fetches_and_checks_md5(dataset, tmp_path, local_http):
    """The official archive's layout, served over HTTP: unpacked and read; a wrong md5 is refused."""
    import hashlib
    import tarfile

    from data.datasets import CIFAR100
    from tests.conftest import write_cifar100
    spec, write = {"cifar10": (CIFAR10, write_cifar), "cifar100": (CIFAR100, write_cifar100)}[dataset]
    source = write(tmp_path / "src")
    archive = tmp_path / spec.archive_url.rsplit("/", 1)[1]
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / spec.folder, arcname=spec.folder)
    spec = dataclasses.replace(spec, archive_url=f"{local_http}/{archive.name}",
                               archive_md5=hashlib.md5(archive.read_bytes()).hexdigest())
    splits = load_dataset(spec, tmp_path / "dest", download_missing=True, expected_train=500, expected_test=200)
    assert len(splits["train"][0]) == 500 and (tmp_path / "dest" / spec.folder / spec.test_files[0]).is_file()
    root_variable = {"cifar10": "CIFAR10_ROOT", "cifar100": "CIFAR100_ROOT"}[dataset]
    with pytest.raises(DatasetError, match=f"could not download {spec.title} .* point {root_variable} at a copy"):
        load_dataset(dataclasses.replace(spec, archive_md5="0" * 32), tmp_path / "dest2", download_missing=True,
                     expected_train=500, expected_test=200)


@pytest.mark.parametrize("chunk_images", [1, 8, 1024])  # batches prepared 1, 2 and all at a time
def test_loader_normalises_and_covers_every_image(chunk_images):
    x = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(10)
    mean, std = channel_stats(x)
    loader = DeviceLoader(x, y, batch_size=4, mean=mean, std=std, shuffle=True, chunk_images=chunk_images)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(10))
    for images, labels in batches:  # each image still travels with its own label
        assert torch.allclose(images, loader.normalize(x[labels]))
    dropped = list(DeviceLoader(x, y, 4, mean, std, shuffle=True, drop_last=True, chunk_images=chunk_images))
    assert [len(b[1]) for b in dropped] == [4, 4] and len(set(torch.cat([b[1] for b in dropped]).tolist())) == 8
    whole = torch.cat([b[0] for b in batches])
    assert whole.dtype == torch.float32 and abs(whole.mean().item()) < 0.1
    assert len(DeviceLoader(x, y, 4, mean, std, drop_last=True)) == 2


@pytest.mark.skipif(not (SHARED_CIFAR / "cifar-10-batches-py").is_dir(), reason="shared CIFAR-10 copy not present")
def test_shared_copy_is_real_cifar10():
    splits = load_cifar10(SHARED_CIFAR)
    (x, y), (tx, ty) = splits["train"], splits["test"]
    assert len(x) == 50_000 and len(tx) == 10_000
    assert y[:5].tolist() == [6, 9, 9, 4, 1] and ty[:5].tolist() == [3, 8, 8, 0, 6]
    assert torch.bincount(y).tolist() == [5000] * 10
    mean, std = channel_stats(x)
    assert torch.allclose(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=1e-3)
    assert torch.allclose(std, torch.tensor([0.2470, 0.2435, 0.2616]), atol=1e-3)
    assert class_names(CIFAR10, SHARED_CIFAR) == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                  "horse", "ship", "truck"]


@pytest.mark.parametrize("overrides, message", [
    # each key alone: the schema (training/schema.py) knows the data keys
    (["data.name=imagenet"], "data.name=imagenet: use one of cifar10, cifar100"),
    (["data.autoaugment_policy=cifar100"], "data.autoaugment_policy=cifar100: use one of cifar10, imagenet, svhn"),
    (["data.mean=[0.5,0.5]", "data.std=[0.2,0.2,0.2]"], "data.mean=[0.5,0.5]: must be a list of 3 numbers"),
    (["data.mean=[0.5,0.5,0.5]", "data.std=[0.2,0,0.2]"], "data.std=[0.2,0,0.2]: must be a list of 3 numbers"),
    # across keys: data.check_data_config
    (["data.num_classes=100"], "data.num_classes=100: cifar10 has 10; remove the override"),
    (["data.image_size=64"], "data.image_size=64: cifar10 has 32"),
    (["model.num_classes=5"], "model.num_classes=5: must equal data.num_classes=10 for cifar10"),
    (["data.val_size=50000"], "data.val_size=50000: must be an integer in [0, data.train_images=50000)"),
    (["data.mean=[0.5,0.5,0.5]"], "data.mean=[0.5,0.5,0.5] data.std=null: give both"),
])
def test_bad_data_settings_fail_in_the_gate(overrides, message):
    from errors import ConfigError
    from training.gate import check_config
    with pytest.raises(ConfigError) as caught:
        check_config(compose_cfg(["model=tiny", *overrides]))
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_loaders_take_normalisation_and_policy_from_the_data_config(cifar_root, mlflow_store):
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy
    cfg = compose_cfg(["model=tiny", "augmentation=autoaugment", *small_data_overrides(cifar_root, mlflow_store)])
    train, val, test = make_loaders(cfg, torch.device("cpu"), channels_last=False)
    assert (len(train.images), len(val.images), len(test.images)) == (400, 100, 200)
    mean, std = channel_stats(train.images)  # by default, from the training images
    assert torch.allclose(train.scale.flatten(), 1 / (std * 255)) and torch.allclose(val.offset.flatten(), -mean / std)
    assert train.augment.autoaugment.policies == AutoAugment(AutoAugmentPolicy.CIFAR10).policies

    cfg = compose_cfg(["model=tiny", "augmentation=autoaugment", "data.autoaugment_policy=svhn",
                       "data.mean=[0.5,0.4,0.3]", "data.std=[0.25,0.2,0.5]",
                       *small_data_overrides(cifar_root, mlflow_store)])
    train, val, test = make_loaders(cfg, torch.device("cpu"), channels_last=False)
    assert train.augment.autoaugment.policies == AutoAugment(AutoAugmentPolicy.SVHN).policies
    for loader in (train, val, test):
        given_mean, given_std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.25, 0.2, 0.5])
        assert torch.allclose(loader.offset.flatten(), -given_mean / given_std)
        assert torch.allclose(loader.scale.flatten(), 1 / (given_std * 255))


def test_every_data_group_file_agrees_with_its_spec(monkeypatch):
    """conf/data/<name>.yaml ships the spec's facts (and its conventional AutoAugment policy) for each
    registered dataset, and there is no group file without a spec."""
    from pathlib import Path

    from data import DATASETS
    from tests.conftest import CONF_DIR
    assert sorted(p.stem for p in (Path(CONF_DIR) / "data").glob("*.yaml")) == sorted(DATASETS)
    for spec in DATASETS.values():
        monkeypatch.delenv(spec.root_env, raising=False)
        data = compose_cfg([f"data={spec.name}"]).data
        assert (data.name, data.num_classes, data.image_size, data.train_images, data.test_images,
                data.autoaugment_policy) == (spec.name, spec.num_classes, spec.image_size, spec.train_images,
                                             spec.test_images, spec.autoaugment_policy)
        monkeypatch.setenv(spec.root_env, "/elsewhere")
        assert compose_cfg([f"data={spec.name}"]).data.root == "/elsewhere"


def test_each_loader_records_its_split_with_a_digest_of_exactly_its_images(cifar_root, mlflow_store):
    from data import make_loaders
    from data.build import digest
    cfg = compose_cfg(["model=tiny", *small_data_overrides(cifar_root, mlflow_store)])
    loaders = make_loaders(cfg, torch.device("cpu"), channels_last=False)
    splits = [loader.split for loader in loaders]
    assert [(s.name, s.context, len(s.images)) for s in splits] == [
        ("train", "training", 400), ("val", "validation", 100), ("test", "test", 200)]
    for loader, split in zip(loaders, splits):
        assert torch.equal(loader.images.cpu(), split.images) and split.digest == digest(loader.images, loader.labels)
    # Another split seed holds out other images: other digests; the same settings give the same ones.
    other = make_loaders(compose_cfg(["model=tiny", *small_data_overrides(cifar_root, mlflow_store),
                                      "data.split_seed=1"]), torch.device("cpu"), channels_last=False)
    assert other[0].split.digest != splits[0].digest
    assert other[2].split.digest == splits[2].digest  # the test set is the test set
    again = make_loaders(cfg, torch.device("cpu"), channels_last=False)
    assert [loader.split.digest for loader in again] == [s.digest for s in splits]
