"""Per-trial overhead of a sweep: wall time of `train.py -m` over tiny trials minus the training
time each job reports (its MLflow metric train_time: epochs, validation and test evaluation).

Two sweeps, of 1 and of N trials, separate the one-time cost of a sweep process (imports, Hydra
start-up, reading the dataset) from the cost each further trial adds (Hydra job setup, config
check, model build, MLflow run and logging, artifacts).
"""
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_dataset(root, train_per_file, test):
    """CIFAR-10 batch files of random images: full-size reads cost what the real ones do."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", train_per_file) for i in range(1, 6)] + [("test_batch", test)]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist()}, f, protocol=4)
    return Path(root)


def sweep(workdir, root, trials, train_images, test_images, subset, val_size, extra=()):
    store = Path(workdir) / f"store{trials}"
    store.mkdir(parents=True, exist_ok=True)
    overrides = ["model=tiny", "trainer.epochs=1", f"data.subset={subset}", f"data.val_size={val_size}",
                 f"data.root={root}", f"data.train_images={train_images}", f"data.test_images={test_images}",
                 "trainer.batch_size=64", "trainer.log_every=0", "trainer.device=cpu",
                 f"trainer.seed={','.join(str(s) for s in range(trials))}",
                 f"mlflow.tracking_uri=sqlite:///{store}/mlflow.db", f"hydra.sweep.dir={store}/multirun", *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "-m", *overrides], cwd=workdir, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"sweep failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return wall, training_times(store / "mlflow.db")


def training_times(db):
    import mlflow
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [run.data.metrics["train_time"] for run in runs]


def bench(workdir, trials=5, train_per_file=10_000, test=1_000, subset=256, val_size=256, baseline=True):
    """baseline=False skips the 1-trial sweep (and so the split into one-time and per-trial costs)."""
    root = write_dataset(Path(workdir) / "cifar", train_per_file, test)
    args = (5 * train_per_file, test, subset, val_size)
    many_wall, many_train = sweep(workdir, root, trials, *args)
    if len(many_train) != trials:
        raise RuntimeError(f"expected {trials} MLflow runs, found {len(many_train)}")
    many_outside = many_wall - sum(many_train)
    row = {"trials": trials, "train_images": 5 * train_per_file, "subset": subset,
           "sweep_wall_s": round(many_wall, 2), "training_s": round(sum(many_train), 2),
           "outside_training_s": round(many_outside, 2),
           "overhead_per_trial_incl_process_s": round(many_outside / trials, 3)}
    if baseline:
        one_wall, one_train = sweep(workdir, root, 1, *args)
        per_trial = (many_outside - (one_wall - sum(one_train))) / (trials - 1)
        row.update(per_trial_overhead_s=round(per_trial, 3),
                   one_time_process_s=round(many_outside - trials * per_trial, 2))
    return row
