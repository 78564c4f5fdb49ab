"""What a job does, by `task=`: train (the default), the LR range test, or evaluate a weights file. Each
starts from a config the gate has passed (training/gate.py) and returns the job's result."""
import copy
import math
import os
import tempfile
import time
from dataclasses import replace

from omegaconf import OmegaConf, open_dict

from data import make_loaders
from errors import DivergedError
from models import build_model
from sweeper import signals
from sweeper.job import current_trial
from sweeper.records import CHECKPOINT, MLFLOW_RUN_ID
from training import checkpoint
from training.progress import Progress
from training.engine import Learner
from training.run_context import RunContext
from training.runtime import Runtime
from training.tracking import RECORDS_FILE, Tracker, masked_config
from training.weights import evaluate_exactly, load_into, read_weights, save_weights, stored_normalization


def output_dir():
    """The job's Hydra output folder (a temporary one when called outside Hydra, as tests do)."""
    from hydra.core.hydra_config import HydraConfig
    return HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else tempfile.mkdtemp()


def in_multirun():
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def wants(setting):
    """An auto | true | false setting: auto means single runs yes, sweep trials (multirun jobs) no."""
    return setting is True or (setting == "auto" and not in_multirun())


def format_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def train(cfg, report):
    """Train, validate every epoch, test once at the end; returns the final validation accuracy
    (the test accuracy when there is no validation split), which sweeps maximise."""
    out_dir = output_dir()
    tracker = Tracker(cfg, out_dir)
    tracker.check_reachable()  # seconds, not MLflow's minutes of retries, and before the data
    runtime = Runtime.from_config(cfg.trainer).setup(cfg.trainer.seed)
    train_loader, val_loader, test_loader = make_loaders(cfg, runtime.device, runtime.channels_last)
    tracker.open()  # a missing or damaged dataset stopped us above, before anything was written
    ckpt_path = checkpoint.checkpoint_path(cfg)
    trial = current_trial()  # None unless this job is a sweep trial (sweeper/job.py)
    # A sweep trial always looks for its own checkpoint: a requeued or replacing job goes on (trainer.resume is
    # the single run's switch, as a single run cannot tell its own checkpoint from another run's of the config).
    resumed = checkpoint.load(ckpt_path, cfg, tracker, trial) if cfg.trainer.resume or trial is not None else None
    learner = Learner(cfg, runtime, len(train_loader))
    if resumed:
        checkpoint.restore(resumed, train_loader=train_loader, **learner.parts())
    with signals.terminate_as_interrupt(), RunContext(
            tracker, report, trial=trial, resumed=resumed, checkpoint_path=ckpt_path,
            keep_checkpoint=cfg.trainer.keep_checkpoint, system_metrics=wants(cfg.mlflow.system_metrics)) as run:
        if trial is not None:  # where an interrupted trial goes on from (sweeper/resume.py)
            trial.record(**{CHECKPOINT: str(ckpt_path), MLFLOW_RUN_ID: run.run_id})
        if resumed:
            print(f"resuming after epoch {resumed['epoch']} from {ckpt_path}", flush=True)
            if trial is not None:
                trial.backfill({row["epoch"]: row.get("val_acc", row["train_acc"]) for row in resumed["history"]})
        elif cfg.mlflow.log_datasets:
            log_datasets(cfg, tracker, (train_loader, val_loader, test_loader))
        print(f"{cfg.model.name}: {report.total:,} parameters | {len(train_loader.images):,} train / "
              f"{len(val_loader.images) if val_loader else 0:,} val images | {runtime.device} {runtime.precision} | "
              f"mlflow run {run.run_id}", flush=True)
        history = resumed["history"] if resumed else []
        graphs_reported = False
        started = time.perf_counter() - (resumed["elapsed"] if resumed else 0.0)
        epochs = cfg.trainer.epochs
        progress = Progress(epochs, first_epoch=len(history) + 1, device=runtime.device.type,
                            enabled=bool(cfg.trainer.log_every))
        for epoch in range(len(history) + 1, epochs + 1):
            epoch_start = time.perf_counter()
            row = learner.train_epoch(train_loader, epoch, progress)
            if val_loader is not None:
                row["val_loss"], row["val_acc"] = learner.evaluate(val_loader, label="validation")
                # Weights gone non-finite in the epoch's last step leave its training loss finite; their accuracy
                # (every prediction one class) would be a trial's value. Before the checkpoint: the last one stays.
                if not math.isfinite(row["val_loss"]):
                    raise DivergedError(f"validation loss became {row['val_loss']} after epoch {epoch}")
            row["epoch_time"] = time.perf_counter() - epoch_start  # training and validation
            history.append(row)
            # The epoch is recorded whole or not at all: a SIGTERM between the checkpoint and the MLflow log lost
            # that epoch's metrics, as the rerun goes on after the checkpoint's epoch.
            with signals.held():
                checkpoint.save(ckpt_path, checkpoint.capture(
                    cfg, **learner.parts(), train_loader=train_loader, history=history, run_id=run.run_id,
                    elapsed=time.perf_counter() - started, trial=trial))
                tracker.log_epoch(row)
                graphs_reported = report_graphs(learner, tracker, graphs_reported)
                elapsed = time.perf_counter() - started
                val_text = f" | val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%" if val_loader else ""
                print(f"epoch {epoch}/{epochs} | train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%"
                      f"{val_text} | lr {row['lr']:.2e} | {row['images_per_sec']:,.0f} img/s | "
                      f"{format_time(elapsed)} elapsed, {format_time(elapsed / epoch * (epochs - epoch))} left",
                      flush=True)
                run.report(row.get("val_acc", row["train_acc"]), epoch)  # raises TrialPruned

        test_start = time.perf_counter()
        test_loss, test_acc = learner.evaluate(test_loader, tta=cfg.trainer.tta, label="test")
        if not math.isfinite(test_loss):
            raise DivergedError(f"test loss became {test_loss} after epoch {epochs}")
        final = {"test_loss": test_loss, "test_acc": test_acc, "test_time": time.perf_counter() - test_start,
                 "train_time": time.perf_counter() - started}
        if val_loader is not None:
            final["final_val_acc"] = history[-1]["val_acc"]
        if cfg.trainer.save_weights:
            final.update(store_weights(cfg, learner.evaluated, runtime, test_loader))
        tracker.log_final(final)
        save_artifacts(cfg, tracker, learner.evaluated, history, report, out_dir, train_loader)
        val_text = f"{100 * history[-1]['val_acc']:.2f}%" if val_loader is not None else "none (data.val_size=0)"
        print(f"test loss {test_loss:.4f} acc {100 * test_acc:.2f}% | val acc {val_text} | "
              f"{format_time(final['train_time'])} total", flush=True)
    value = history[-1]["val_acc"] if val_loader is not None else test_acc
    # A two-objective sweep (direction [maximize, minimize]) trades accuracy against size.
    return [value, report.total] if trial is not None and len(trial.directions) == 2 else value


def report_graphs(learner, tracker, reported):
    """Once trainer.cuda_graphs has decided (CUDA only, within the first epoch or so): print it, and log it as
    the tag cuda_graphs ("on: ..." / "off: <why>") and the measured step times as metrics."""
    report = learner.graph_report
    if reported or not report or report["cuda_graphs"] == "pending":
        return reported
    print(f"cuda graphs {report['cuda_graphs']}", flush=True)
    tracker.set_tags({"cuda_graphs": report["cuda_graphs"]})
    numbers = {k: float(v) for k, v in report.items() if k != "cuda_graphs"}
    if numbers:
        tracker.log_metrics(numbers)
    return True


def store_weights(cfg, model, runtime, test_loader):
    """trainer.save_weights: write the evaluated weights in fp16, then measure the file as task=evaluate would."""
    from hydra.utils import to_absolute_path
    path = to_absolute_path(str(cfg.trainer.save_weights))
    # The normalisation the model was trained with (every loader of a run shares the training split's), so
    # that task=evaluate normalises the same way whatever split overrides it is given.
    size = save_weights(model, path, normalize_mean=test_loader.mean.tolist(), normalize_std=test_loader.std.tolist(),
                        model=str(cfg.model.name), num_classes=int(cfg.data.num_classes), dataset=str(cfg.data.name))
    state, _ = read_weights(path, "trainer.save_weights")
    stored = runtime.prepare(load_into(build_model(cfg), state, path, "trainer.save_weights"))
    _, stored_acc = evaluate_exactly(stored, test_loader, cfg.trainer.tta)
    print(f"weights: {path} ({size / 1e6:.2f} MB, fp16) | test acc of the stored weights (fp32, TF32 off) "
          f"{100 * stored_acc:.2f}%", flush=True)
    return {"stored_test_acc": stored_acc, "weights_bytes": size}


def evaluate(cfg, report):
    """task=evaluate: the test accuracy of a weights file (evaluate.weights) for the model this config describes,
    with the config's trainer.tta, in fp32 with TF32 off on whatever device there is. The weights are read and
    fitted before any data; the last line printed is exactly `test_acc=0.XXXX`. It opens no MLflow run: it
    is a read-only re-check that must run anywhere, and it would otherwise add a run to the store whose
    numbers it checks. The input normalisation is the one stored in the weights file (the training split's
    statistics): data.val_size/data.subset then change nothing; an older file without it normalises from the
    config's training split, as before."""
    from hydra.utils import to_absolute_path
    path = to_absolute_path(str(cfg.evaluate.weights))
    state, meta = read_weights(path)
    model = load_into(build_model(cfg), state, path)
    mean, std = stored_normalization(meta, cfg.data, path)
    if mean is not None:
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.data.mean, cfg.data.std = mean, std
        source = "normalisation stored with the weights"
    else:
        source = ("normalisation data.mean/data.std" if cfg.data.mean is not None else
                  "normalisation from the training split (a weights file without it: the run's split settings apply)")
    runtime = replace(Runtime.from_config(cfg.trainer), precision="fp32").setup(cfg.trainer.seed)
    model = runtime.prepare(model)
    _, _, test_loader = make_loaders(cfg, runtime.device, runtime.channels_last)
    _, test_acc = evaluate_exactly(model, test_loader, cfg.trainer.tta)
    print(f"{cfg.model.name}: {report.total:,} parameters | weights {path} | {len(test_loader.images):,} test images, "
          f"tta {cfg.trainer.tta} | {source} | {runtime.device} fp32", flush=True)
    print(f"test_acc={test_acc:.4f}", flush=True)
    return test_acc


def log_datasets(cfg, tracker, loaders):
    """The exact training, validation and test images of this run as MLflow dataset inputs."""
    from data import check_available
    splits = [loader.split for loader in loaders if loader is not None]
    tracker.log_datasets(splits, str(cfg.data.name), source=check_available(cfg.data))


def save_artifacts(cfg, tracker, model, history, report, out_dir, train_loader):
    """Resolved config, parameter table, epoch records, curves (single runs) and the model, to MLflow."""
    os.makedirs(out_dir, exist_ok=True)
    config_path = os.path.join(out_dir, "resolved_config.yaml")
    OmegaConf.save(masked_config(cfg), config_path)  # a password in a URL is masked
    table_path = os.path.join(out_dir, "param_table.txt")
    with open(table_path, "w") as f:
        f.write(report.table() + "\n" + report.summary_line() + "\n")
    paths = [config_path, table_path, os.path.join(out_dir, RECORDS_FILE)]
    # Multirun jobs (Optuna trials, grids) skip the PNG by default: drawing it was half a tiny trial's
    # overhead, and the MLflow UI charts the same per-epoch metrics (an Optuna sweep's parent run
    # gets the sweep's own plots).
    if wants(cfg.mlflow.log_curves):
        from training.plots import training_curves
        paths.append(training_curves(history, os.path.join(out_dir, "training_curves.png"), title=str(cfg.model.name)))
    tracker.log_artifacts(paths)
    if cfg.mlflow.log_model:
        size = int(cfg.data.get("image_size", 32))
        # How to prepare images for it: the training split's per-channel statistics, in [0, 1] units.
        metadata = {"dataset": str(cfg.data.name), "normalize_mean": [round(float(v), 6) for v in train_loader.mean],
                    "normalize_std": [round(float(v), 6) for v in train_loader.std]}
        tracker.log_model(model, (3, size, size), serialization=str(cfg.mlflow.model_format), metadata=metadata)


def lr_range_test(cfg, report):
    from training.lr_range import run_range_test
    return run_range_test(cfg, report, output_dir())


TASKS = {"train": train, "lr_range_test": lr_range_test, "evaluate": evaluate}
