"""Shared fixtures: synthetic CIFAR-10 in the real batch format, composed configs, a tmp MLflow store."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = str(REPO / "conf")
SHARED_CIFAR = REPO.parent / "shared" / "cifar10"


def synthetic_images(n, seed):
    """Learnable fake CIFAR: each class has its own colour and a bright square at its own place."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 3, 32, 32), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, label % 3] += 100
        row, col = divmod(int(label), 5)
        images[i, :, 4 + row * 14:14 + row * 14, 2 + col * 6:8 + col * 6] = 230
    return images.reshape(n, -1), labels.tolist()


def write_batch(path, images, labels):
    with open(path, "wb") as f:
        pickle.dump({"batch_label": path.name, "labels": labels, "data": images,
                     "filenames": [f"{i}.png" for i in range(len(labels))]}, f, protocol=2)


def write_cifar(root, per_file=100, test=200, seed=0):
    """Write data_batch_1..5, test_batch and batches.meta under root/cifar-10-batches-py."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        write_batch(folder / f"data_batch_{i}", *synthetic_images(per_file, seed + i))
    write_batch(folder / "test_batch", *synthetic_images(test, seed + 100))
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["c%d" % i for i in range(10)], "num_cases_per_batch": per_file}, f)
    return Path(root)


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory):
    """Synthetic CIFAR-10: 5 x 100 training images, 200 test images."""
    return write_cifar(tmp_path_factory.mktemp("cifar"))


def small_data_overrides(root, store):
    return [f"data.root={root}", "data.train_images=500", "data.test_images=200", "data.val_size=100",
            f"mlflow.tracking_uri=sqlite:///{store}/mlflow.db", "trainer.device=cpu", "trainer.log_every=0"]


def compose_cfg(overrides=()):
    with initialize_config_dir(config_dir=CONF_DIR):
        return compose("config", overrides=list(overrides))


@pytest.fixture
def mlflow_store(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    return store


@pytest.fixture
def train_env(cifar_root):
    """Environment for train.py subprocesses: repo on the path, data root set."""
    env = dict(os.environ, CIFAR10_ROOT=str(cifar_root), PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env
