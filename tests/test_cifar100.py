"""data=cifar100: the official cifar-100-python format (synthetic files here: no copy is available offline),
its fine labels, its md5-checked download, and a model head with 100 outputs."""
import os
import pickle
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from data import DATASETS, DatasetError, check_available, class_names, load_dataset
from data.datasets import CIFAR10, CIFAR100
from errors import ConfigError
from models import build_model
from tests.conftest import REPO, compose_cfg, synthetic_images, write_cifar100, write_cifar100_file
from tests.faultkit import MICRO_MODEL, fresh_sqlite_store
from training import app
from training.gate import check_config


@pytest.mark.parametrize("spec, reference", [(CIFAR10, torchvision.datasets.CIFAR10),
                                             (CIFAR100, torchvision.datasets.CIFAR100)])
def test_specs_agree_with_torchvision(spec, reference):
    """Folder, file names, meta file and key, archive URL and md5: torchvision's own record of each dataset."""
    assert spec.folder == reference.base_folder
    assert spec.train_files == tuple(name for name, _ in reference.train_list)
    assert spec.test_files == tuple(name for name, _ in reference.test_list)
    assert (spec.meta_file, spec.names_key) == (reference.meta["filename"], reference.meta["key"])
    assert (spec.archive_url, spec.archive_md5) == (reference.url, reference.tgz_md5)
    assert DATASETS[spec.name] is spec


def test_reads_fine_labels_into_uint8_tensors(cifar100_root):
    splits = load_dataset(CIFAR100, cifar100_root, expected_train=500, expected_test=200)
    (x, y), (tx, ty) = splits["train"], splits["test"]
    assert x.shape == (500, 3, 32, 32) and x.dtype == torch.uint8 and tx.shape == (200, 3, 32, 32)
    assert ty.tolist() == synthetic_images(200, 100, num_classes=100)[1]
    _, fine = synthetic_images(500, 1, num_classes=100)  # what conftest wrote as fine_labels
    assert y.dtype == torch.int64 and y.tolist() == fine and y.max() >= 20  # fine, not the 20 coarse labels
    assert class_names(CIFAR100, cifar100_root) == [f"fine{i}" for i in range(100)]
    # root may also be the cifar-100-python folder itself
    assert load_dataset(CIFAR100, cifar100_root / "cifar-100-python", expected_train=500, expected_test=200)


@pytest.mark.parametrize("damage, message", [
    ("cifar10_labels", "not a CIFAR-100 batch: expected a dict with 'data' and 'fine_labels'"),
    ("labels", "labels outside 0..99"),
    ("truncate", "cannot read .* as a CIFAR-100 batch"),
    ("count", "expected 500 images in train, found 499"),
])
def test_damaged_files_are_rejected(tmp_path, damage, message):
    root = write_cifar100(tmp_path)
    path = root / "cifar-100-python" / "train"
    images, labels = synthetic_images(500, 1, num_classes=100)
    if damage == "cifar10_labels":  # a CIFAR-10-style file: 'labels', no 'fine_labels'
        path.write_bytes(pickle.dumps({"data": images, "labels": labels}))
    elif damage == "labels":
        write_cifar100_file(path, images, labels[:-1] + [100])
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        write_cifar100_file(path, images[:499], labels[:499])
    with pytest.raises(DatasetError, match=message):
        load_dataset(CIFAR100, root, expected_train=500, expected_test=200)


def test_missing_dataset_names_its_own_folder_and_variable(tmp_path):
    with pytest.raises(DatasetError) as loader_error:
        load_dataset(CIFAR100, tmp_path)
    message = str(loader_error.value)
    assert message.startswith(f"CIFAR-100 not found: {tmp_path / 'cifar-100-python'} lacks train, test.")
    assert "CIFAR100_ROOT" in message and "cifar-100-python/" in message and "data.download=true" in message
    with pytest.raises(DatasetError) as check_error:
        check_available(OmegaConf.create(dict(name="cifar100", root=str(tmp_path), download=False)))
    assert str(check_error.value) == message


def test_data_group_sets_the_model_head(monkeypatch):
    monkeypatch.delenv("CIFAR100_ROOT", raising=False)
    cfg = compose_cfg(["data=cifar100", "model=final"])
    assert cfg.model.num_classes == 100 and cfg.data.root == "./data/cifar100"
    assert compose_cfg([]).data.name == "cifar10"  # the default
    with pytest.raises(ConfigError, match="data.num_classes=10: cifar100 has 100"):
        check_config(compose_cfg(["data=cifar100", "data.num_classes=10"]))


def test_dry_run_counts_a_100_class_head_without_data(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               CIFAR100_ROOT=str(tmp_path / "no-data-here"))  # proves no data is read
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "data=cifar100", "model=tiny", "dry_run=true"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # tiny's last layer has 128 channels: its CIFAR-10 head (128 x 10 + 10) becomes 128 x 100 + 100
    assert result.stdout.strip().splitlines()[-1] == f"params={135_370 - 1_290 + 12_900} budget=5000000 feasible=true"


def test_one_epoch_on_synthetic_cifar100_logs_the_dataset(cifar100_root, mlflow_store):
    cfg = compose_cfg(["data=cifar100", f"data.root={cifar100_root}", "data.train_images=500",
                       "data.test_images=200", "data.val_size=100", *MICRO_MODEL, "trainer.epochs=1",
                       "trainer.batch_size=50", "trainer.device=cpu", "trainer.log_every=0", "mlflow.log_model=false",
                       "mlflow.log_curves=false", f"mlflow.tracking_uri={fresh_sqlite_store(mlflow_store)}"])
    val_acc = app.run(cfg)
    assert 0.0 <= val_acc <= 1.0
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    [run] = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], output_format="list")
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["data.name"] == "cifar100" and params["data.num_classes"] == "100"
    assert params["model.num_classes"] == "100"
    # the micro model's last layer has 32 channels: its head is 32 x 100 + 100
    built = build_model(cfg, device="meta")
    assert built.head[-1].out_features == 100
    assert int(params["num_params"]) == sum(p.numel() for p in built.parameters())
    assert "test_acc" in run.data.metrics and np.isfinite(run.data.metrics["train_loss"])
