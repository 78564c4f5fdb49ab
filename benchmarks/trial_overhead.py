"""Per-trial overhead of a sweep: everything a trial costs besides its own training.

One `train.py -m hydra/sweeper=optuna` sweep of tiny trials, run as a user would (subprocess,
sqlite stores, the basic launcher). Trials run one after another, so the time from one trial's
MLflow run start to the next one's is that trial's whole cost in the sweep: its training (the
epoch_time metrics: epochs plus validation; test_time: the test evaluation) and everything else,
which is the overhead: per-epoch checkpoint and metric logging, artifacts, ending the run, telling
Optuna, the sweeper's next proposal and budget check, Hydra's job setup, the next job's config
check, data split and MLflow run start. The median over consecutive pairs is the figure.

The one-time costs of a sweep process (imports, Hydra start-up, creating the stores, reading the
dataset, the closing summary and plots) are reported apart: process start to the first trial's
run, and the last trial's end to the process's exit.

`devices=["0"]` measures the sweeper's device pool instead of the basic launcher: one slot, so
trials still run one after another, each in the slot's long-lived worker process.
"""
import os
import pickle
import statistics
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


def sweep(workdir, root, trials, train_images, test_images, subset, val_size, devices=None):
    store = Path(workdir) / "store"
    store.mkdir(parents=True, exist_ok=True)
    overrides = ["hydra/sweeper=optuna", "hydra/sweeper/pruner=none", f"hydra.sweeper.n_trials={trials}",
                 "hydra.sweeper.sampler.seed=0", "model=tiny", "trainer.epochs=1", f"data.subset={subset}",
                 f"data.val_size={val_size}", f"data.root={root}", f"data.train_images={train_images}",
                 f"data.test_images={test_images}", "trainer.batch_size=64", "trainer.log_every=0",
                 "trainer.device=cpu", f"mlflow.tracking_uri=sqlite:///{store}/mlflow.db",
                 f"hydra.sweep.dir={store}/multirun"]
    if devices:
        overrides.append(f"hydra.sweeper.devices=[{','.join(devices)}]")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.time()
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "-m", *overrides], cwd=workdir, env=env,
                          capture_output=True, text=True)
    end = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"sweep failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return start, end, trial_runs(store / "mlflow.db")


def trial_runs(db):
    """(start s, end s, training s) of each trial's MLflow run, in start order; the parent run left out."""
    import mlflow
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    rows = []
    for run in runs:
        if "test_time" not in run.data.metrics:
            continue
        epochs = client.get_metric_history(run.info.run_id, "epoch_time")
        training = sum(m.value for m in epochs) + run.data.metrics["test_time"]
        rows.append((run.info.start_time / 1000, run.info.end_time / 1000, training))
    return sorted(rows)


def bench(workdir, trials=8, train_per_file=10_000, test=1_000, subset=256, val_size=256, devices=None):
    root = write_dataset(Path(workdir) / "cifar", train_per_file, test)
    start, end, runs = sweep(workdir, root, trials, 5 * train_per_file, test, subset, val_size, devices)
    if len(runs) != trials:
        raise RuntimeError(f"expected {trials} trial runs in MLflow, found {len(runs)}")
    overheads = [later[0] - run[0] - run[2] for run, later in zip(runs, runs[1:])]
    return {"trials": trials, "train_images": 5 * train_per_file, "subset": subset,
            "sweep_wall_s": round(end - start, 2), "training_s": round(sum(r[2] for r in runs), 2),
            "per_trial_overhead_s": round(statistics.median(overheads), 3),
            "per_trial_overhead_max_s": round(max(overheads), 3),
            "startup_s": round(runs[0][0] - start, 2), "shutdown_s": round(end - runs[-1][1], 2),
            "overheads_s": [round(o, 3) for o in overheads]}
