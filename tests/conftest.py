"""Shared fixtures: synthetic CIFAR-10 and CIFAR-100 in their real file formats, composed configs, a tmp
MLflow store."""
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = str(REPO / "conf")
SHARED_CIFAR = REPO.parent / "shared" / "cifar10"


def synthetic_images(n, seed, num_classes=10):
    """Learnable fake CIFAR: each class has its own colour and a bright square at its own place
    (with 100 classes: ten places times ten shades)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    images = rng.integers(0, 60, (n, 3, 32, 32), dtype=np.uint8)
    for i, label in enumerate(labels):
        if num_classes <= 10:
            images[i, label % 3] += 100
        else:
            for channel in range(3):  # label // 10 in base 3, one digit per channel
                images[i, channel] += np.uint8(45 * (label // 10 // 3 ** channel % 3))
        row, col = divmod(int(label % 10), 5)
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


def write_cifar100_file(path, images, fine_labels, **extra):
    """One file in the official cifar-100-python format (as its Python-2 pickles load with latin1)."""
    entry = {"filenames": [f"{i}.png" for i in range(len(fine_labels))], "batch_label": f"{path.name} batch 1 of 1",
             "fine_labels": fine_labels, "coarse_labels": [label // 5 for label in fine_labels], "data": images}
    entry.update(extra)
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_cifar100(root, train=500, test=200, seed=0):
    """Write train, test and meta under root/cifar-100-python: 100 fine classes (synthetic coarse labels)."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    write_cifar100_file(folder / "train", *synthetic_images(train, seed + 1, num_classes=100))
    write_cifar100_file(folder / "test", *synthetic_images(test, seed + 100, num_classes=100))
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"fine{i}" for i in range(100)],
                     "coarse_label_names": [f"coarse{i}" for i in range(20)]}, f, protocol=2)
    return Path(root)


def pytest_configure(config):
    """Under pytest-xdist, each worker takes its share of the cores for the training it runs in-process (the
    subprocesses it starts take one thread: tests/faultkit.py's train_env). With torch's default, two workers on
    2 cores ran four threads: tests/test_graphs.py, test_evaluate.py, test_progress.py and test_models.py took
    60 and 61 s, against 43 and 43 s with one thread each (alternating runs). OMP_NUM_THREADS, when set, decides;
    `-n 0` runs on all cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        import torch
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


@pytest.fixture(scope="session", autouse=True)
def scratch_working_folder(tmp_path_factory):
    """The tests run in a folder of their own, not in the checkout: what they write relative to the working
    folder (MLflow's ./mlruns artifacts of a sqlite store, Hydra's outputs/) goes there."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        yield


@pytest.fixture(scope="session")
def cifar100_root(tmp_path_factory):
    """Synthetic CIFAR-100: 500 training images, 200 test images."""
    return write_cifar100(tmp_path_factory.mktemp("cifar100"))


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory):
    """Synthetic CIFAR-10: 5 x 100 training images, 200 test images."""
    return write_cifar(tmp_path_factory.mktemp("cifar"))


def small_data_overrides(root, store):
    """The synthetic data's sizes and an MLflow sqlite store in `store` (copied, ready: see fresh_sqlite_store)."""
    from tests.faultkit import fresh_sqlite_store
    return [f"data.root={root}", "data.train_images=500", "data.test_images=200", "data.val_size=100",
            f"mlflow.tracking_uri={fresh_sqlite_store(store)}", "trainer.device=cpu", "trainer.log_every=0"]


def compose_cfg(overrides=()):
    with initialize_config_dir(config_dir=CONF_DIR):
        return compose("config", overrides=list(overrides))


@pytest.fixture
def local_http(tmp_path):
    """Serve tmp_path over HTTP on 127.0.0.1, so the download path runs without a network."""
    import functools
    import http.server
    import threading
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def mlflow_store(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    return store


@pytest.fixture
def train_env(cifar_root):
    """Environment for train.py subprocesses: repo on the path, data root set, one thread (as tests/faultkit.py's:
    a 2-trial sweep of model=tiny took 26 s with one thread, 41 s with torch's default two on a loaded 2-core
    machine; this process keeps the thread count it was given)."""
    env = dict(os.environ, CIFAR10_ROOT=str(cifar_root), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


# The shared trained run: what tests/test_train.py and tests/test_evaluate.py read. TTA and EMA on, so that the
# weights file's own accuracy (fp16, flip + shift) is measured too.
TINY_RUN = ["model=tiny", "trainer.epochs=3", "trainer.batch_size=50", "optimizer.lr=0.003", "trainer.tta=flip_shift",
            "trainer.ema_decay=0.9"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cifar_root):
    """ONE trained run of model=tiny (3 epochs on the synthetic CIFAR-10, in this process), for the tests that only
    read its results: its MLflow run (model logged, system metrics sampled every second), its weights file
    (trainer.save_weights) and its metrics.jsonl records. Tests must not change what it wrote."""
    import mlflow

    from training import app
    from training.tracking import read_records
    folder = tmp_path_factory.mktemp("tiny-run")
    store = folder / "store"
    weights = folder / "weights" / "tiny.pt"
    overrides = [*TINY_RUN, f"trainer.save_weights={weights}", *small_data_overrides(cifar_root, store)]
    cfg = compose_cfg(overrides)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # MLflow's default, 10 s, outlasts this run
        patch.chdir(folder)  # where its checkpoint folder goes
        val_acc = app.run(cfg)
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id])
    records = read_records(client.download_artifacts(run.info.run_id, "metrics.jsonl", str(folder)))
    return SimpleNamespace(cfg=cfg, overrides=overrides, val_acc=val_acc, run=run, store=store, weights=weights,
                           records=records)


@pytest.fixture(scope="session")
def micro_cifar(tmp_path_factory):
    """Synthetic CIFAR-10 of tests/faultkit.py's size (5 x 24 training, 40 test images), for the micro model."""
    from tests.faultkit import write_cifar as write_small
    return write_small(tmp_path_factory.mktemp("micro-cifar"))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (sqlite backend, served artifacts) on a free loopback port; its URL."""
    import time

    from tests.faultkit import free_port, rest, start_mlflow_server, stop_process_group, wait_for_port
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    process = start_mlflow_server(folder, port)
    try:
        wait_for_port(port, timeout=180, process=process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while rest(url, "experiments/search", {"max_results": 1}) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        yield url
    finally:
        stop_process_group(process)
        print(f"mlflow server log: {folder / 'server.log'}")


@pytest.fixture(scope="session")
def served_sweep(mlflow_server, micro_cifar, tmp_path_factory):
    """ONE finished sweep, for the tests that only read its results: `train.py -m` of the micro model, a 2-trial grid
    over optimizer.lr (tests/faultkit.py's sweep_args, 2 epochs), study `served` in <folder>/optuna.db, logged to
    the mlflow_server (experiment `sweeps`). tests/test_mlflow_server.py reads its runs through MLflow's REST API
    and UI, tests/test_optuna_dashboard.py its study in Optuna Dashboard."""
    import subprocess
    import sys

    from tests.faultkit import REPO as repo, rest, sweep_args, train_env as one_thread_env
    folder = tmp_path_factory.mktemp("served-sweep")
    args = sweep_args(micro_cifar, mlflow_server, f"sqlite:///{folder}/optuna.db", "served", 2, folder / "multirun",
                      extra=["mlflow.experiment=sweeps"])
    result = subprocess.run([sys.executable, str(repo / "train.py"), *args], cwd=folder, env=one_thread_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = rest(mlflow_server, "experiments/get-by-name?experiment_name=sweeps")["experiment"]["experiment_id"]
    return SimpleNamespace(folder=folder, study="served", optuna_db=folder / "optuna.db", experiment_id=experiment,
                           result=result)


@pytest.fixture(scope="session")
def postgres():
    """ONE throwaway PostgreSQL cluster for the session (tests/faultkit.py's Postgres); each test makes a role and
    databases of its own in it. Skipped with the reason when PostgreSQL is not installed."""
    from tests.faultkit import Postgres, free_port, postgres_bin
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)")
    server = Postgres(free_port()).start()
    try:
        yield server
    finally:
        server.stop()
