"""Train one ResNet on CIFAR-10, or run a sweep of them with `-m`.

    python train.py                                  # the paper's final model, AdamW
    python train.py model=tiny trainer.epochs=1      # a quick run on the CPU
    python train.py model=final dry_run=true         # parameter table and budget check only
    python train.py model=final task=lr_range_test   # LR range test: plot, CSV, suggested cyclic bounds
    python train.py -m hydra/sweeper=optuna          # Optuna search (hydra/sweeper=constrained_optuna, sweeper/)

The parameter budget and every other config check run before data is loaded or an MLflow
run is opened. The job returns the final validation accuracy, which sweeps maximise.
"""
import math
import os
import sys
import tempfile
import time

import hydra
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from data import Augmentation, DeviceLoader, channel_stats, load_cifar10, split_train_val
from errors import BudgetError, DivergedError, UserError
from models import build_model
from sweeper.job import Failed, Pruned, TrialPruned, current_trial
from training import checkpoint
from training.gate import check_config
from training.lr_range import run_range_test
from training.optim import build_optimizer, build_scheduler
from training.tracking import check_reachable, masked_config, open_store, start_run

# Targets Hydra 1.4 may instantiate from config (the sweeper's samplers and constraints, the launchers).
EXECUTION_WHITELIST = [
    "training.gate.*",  # the sweeper's constraints and preflight (conf/hydra/sweeper/optuna.yaml)
    "hydra_plugins.hydra_optuna_sweeper.*",
    "hydra_plugins.hydra_joblib_launcher.*",
    "hydra_plugins.hydra_submitit_launcher.*",  # SLURM, when installed (README: across machines)
    "optuna.samplers.*",
]


USER_ERRORS = (UserError,)


def pick_device(cfg):
    if cfg.trainer.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.trainer.device)


def make_loaders(cfg, device, channels_last):
    """uint8 CIFAR-10 on the training device; train/val split by a fixed seed; test kept apart."""
    splits = load_cifar10(cfg.data.root, download_missing=cfg.data.download,
                          expected_train=cfg.data.train_images, expected_test=cfg.data.test_images)
    (train_x, train_y), (val_x, val_y) = split_train_val(*splits["train"], val_size=cfg.data.val_size,
                                                         seed=cfg.data.split_seed, subset=cfg.data.subset)
    mean, std = channel_stats(train_x)
    common = dict(mean=mean, std=std, channels_last=channels_last)
    train = DeviceLoader(train_x.to(device), train_y.to(device), cfg.trainer.batch_size, shuffle=True,
                         drop_last=True, augment=Augmentation(cfg.augmentation), seed=cfg.trainer.seed, **common)
    evaluation = dict(batch_size=cfg.trainer.eval_batch_size, **common)
    val = DeviceLoader(val_x.to(device), val_y.to(device), **evaluation) if len(val_x) else None
    test = DeviceLoader(splits["test"][0].to(device), splits["test"][1].to(device), **evaluation)
    return train, val, test


def tta_views(x, mode):
    """Test-time augmentation: the image, its mirror, and (flip_shift) one-pixel shifts of both."""
    views = [x]
    if mode in ("flip", "flip_shift"):
        views.append(x.flip(3))
    if mode == "flip_shift":
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        views += [padded[..., :-2, :-2], padded[..., 2:, 2:]]
    return views


@torch.inference_mode()
def evaluate(model, loader, autocast, tta="none"):
    """Mean loss and accuracy over a loader; accumulated on the device, one sync at the end."""
    model.eval()
    loss_sum = torch.zeros((), device=loader.images.device)
    correct = torch.zeros((), device=loader.images.device, dtype=torch.long)
    for x, y in loader:
        with autocast:
            views = tta_views(x, tta)
            logits = (sum(model(view).float().softmax(1) for view in views) / len(views)).log()
        loss_sum += F.nll_loss(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = len(loader.images)
    return loss_sum.item() / n, correct.item() / n


def format_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def train_one_epoch(model, forward, loader, optimizer, scheduler, criterion, autocast, scaler, ema=None,
                    grad_clip=None, log_every=0, epoch=1):
    """One pass over `loader`; returns (mean loss, accuracy, images seen).

    Loss and accuracy accumulate on the device: the only host syncs are the progress lines
    (every `log_every` steps) and the one at the end of the epoch.
    """
    model.train()
    device = next(model.parameters()).device
    epoch_start, steps = time.perf_counter(), len(loader)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for step, (x, y) in enumerate(loader, 1):
        with autocast:
            logits = forward(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if log_every and step % log_every == 0 and step < steps:
            running = loss_sum.item() / seen  # the one sync per display line
            if not math.isfinite(running):
                raise DivergedError(f"training loss became {running} at epoch {epoch}, step {step}")
            rate = seen / (time.perf_counter() - epoch_start)
            print(f"  epoch {epoch} step {step}/{steps} loss {running:.4f} {rate:,.0f} img/s", flush=True)
    train_loss, train_acc = loss_sum.item() / seen, correct.item() / seen
    if not math.isfinite(train_loss):
        raise DivergedError(f"training loss became {train_loss} in epoch {epoch}")
    return train_loss, train_acc, seen


def train(cfg: DictConfig):
    report = check_config(cfg)
    if cfg.dry_run:
        print(report.table())
        print(report.summary_line())
        return None
    if not report.feasible:
        raise BudgetError(report.over_budget_message())
    if cfg.task == "lr_range_test":
        out_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else tempfile.mkdtemp()
        return run_range_test(cfg, report, pick_device(cfg), make_loaders, out_dir)

    import mlflow
    check_reachable(cfg.mlflow.tracking_uri)  # seconds, not MLflow's minutes of retries, and before the data
    device = pick_device(cfg)
    torch.manual_seed(cfg.trainer.seed)
    channels_last = device.type == "cuda" if cfg.trainer.channels_last == "auto" else bool(cfg.trainer.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.trainer.precision]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.trainer.precision == "fp16")

    train_loader, val_loader, test_loader = make_loaders(cfg, device, channels_last)
    # A missing or damaged dataset stopped us above, before anything was written to the store.
    experiment_id = open_store(cfg.mlflow.tracking_uri, cfg.mlflow.experiment)
    ckpt_path = checkpoint.checkpoint_path(cfg)
    resumed = checkpoint.load(ckpt_path, cfg) if cfg.trainer.resume else None
    model = build_model(cfg, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model, device.type)
    scheduler = build_scheduler(cfg, optimizer, len(train_loader), cfg.trainer.epochs)
    ema = None
    if cfg.trainer.ema_decay:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.trainer.ema_decay), use_buffers=True)
    if resumed:
        checkpoint.restore(resumed, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema,
                           train_loader=train_loader)
    forward = torch.compile(model) if cfg.trainer.compile else model
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)

    out_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else tempfile.mkdtemp()
    trial = current_trial()  # None unless this job is a sweep trial
    run = start_run(cfg, report.total, experiment_id, run_id=resumed["mlflow_run_id"] if resumed else None,
                    trial=trial)
    if resumed:
        checkpoint.continue_run(resumed)
        print(f"resuming after epoch {resumed['epoch']} from {ckpt_path}", flush=True)
    print(f"{cfg.model.name}: {report.total:,} parameters | {len(train_loader.images):,} train / "
          f"{len(val_loader.images) if val_loader else 0:,} val images | {device} {cfg.trainer.precision} | "
          f"mlflow run {run.info.run_id}", flush=True)
    history = resumed["history"] if resumed else []
    started = time.perf_counter() - (resumed["elapsed"] if resumed else 0.0)
    epochs = cfg.trainer.epochs
    try:
        for epoch in range(len(history) + 1, epochs + 1):
            epoch_start = time.perf_counter()
            train_loss, train_acc, seen = train_one_epoch(
                model, forward, train_loader, optimizer, scheduler, criterion, autocast, scaler, ema,
                grad_clip=cfg.trainer.grad_clip, log_every=cfg.trainer.log_every, epoch=epoch)
            train_time = time.perf_counter() - epoch_start
            row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                   "lr": optimizer.param_groups[0]["lr"], "images_per_sec": seen / train_time,
                   "epoch_time": train_time}
            if val_loader is not None:
                row["val_loss"], row["val_acc"] = evaluate(ema or model, val_loader, autocast)
            row["epoch_time"] = time.perf_counter() - epoch_start
            history.append(row)
            checkpoint.save(ckpt_path, checkpoint.capture(
                cfg, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema,
                train_loader=train_loader, history=history, run_id=run.info.run_id,
                elapsed=time.perf_counter() - started))
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            elapsed = time.perf_counter() - started
            val_text = f" | val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%" if val_loader else ""
            print(f"epoch {epoch}/{epochs} | train loss {train_loss:.4f} acc {100 * train_acc:.2f}%{val_text} | "
                  f"lr {row['lr']:.2e} | {row['images_per_sec']:,.0f} img/s | {format_time(elapsed)} elapsed, "
                  f"{format_time(elapsed / epoch * (epochs - epoch))} left", flush=True)
            if trial is not None:
                trial.report(row.get("val_acc", train_acc), epoch)  # raises TrialPruned

        test_start = time.perf_counter()
        test_loss, test_acc = evaluate(ema or model, test_loader, autocast, tta=cfg.trainer.tta)
        final = {"test_loss": test_loss, "test_acc": test_acc, "test_time": time.perf_counter() - test_start,
                 "train_time": time.perf_counter() - started}
        if val_loader is not None:
            final["final_val_acc"] = history[-1]["val_acc"]
        mlflow.log_metrics(final)
        save_artifacts(cfg, ema.module if ema else model, history, report, out_dir)
        print(f"test loss {test_loss:.4f} acc {100 * test_acc:.2f}% | val acc "
              f"{100 * history[-1].get('val_acc', float('nan')):.2f}% | {format_time(final['train_time'])} total",
              flush=True)
    except BaseException as err:
        pruned = isinstance(err, TrialPruned)
        mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
        if trial is not None:
            mlflow.set_tag("trial_state", "PRUNED" if pruned else "FAIL")
        mlflow.end_run(status="KILLED" if pruned or isinstance(err, KeyboardInterrupt) else "FAILED")
        if pruned:
            checkpoint.remove(ckpt_path)  # a pruned trial is never continued
        raise
    finally:
        if trial is not None:
            trial.close()
    if trial is not None:
        mlflow.set_tag("trial_state", "COMPLETE")
    mlflow.end_run()
    if not cfg.trainer.keep_checkpoint:
        checkpoint.remove(ckpt_path)
    # Sweeps maximise validation accuracy; with no validation split, the test accuracy stands in.
    value = history[-1]["val_acc"] if val_loader is not None else test_acc
    return [value, report.total] if trial is not None and len(trial.directions) == 2 else value


def save_artifacts(cfg, model, history, report, out_dir):
    import mlflow

    from training.plots import training_curves

    os.makedirs(out_dir, exist_ok=True)
    config_path = os.path.join(out_dir, "resolved_config.yaml")
    OmegaConf.save(masked_config(cfg), config_path)  # a password in a URL is masked
    table_path = os.path.join(out_dir, "param_table.txt")
    with open(table_path, "w") as f:
        f.write(report.table() + "\n" + report.summary_line() + "\n")
    paths = [config_path, table_path]
    # Multirun jobs (Optuna trials, grids) skip the PNG by default: drawing it was half a tiny trial's
    # overhead, and the MLflow UI charts the same per-epoch metrics (an Optuna sweep's parent run
    # gets the sweep's own plots).
    if cfg.mlflow.log_curves is True or (cfg.mlflow.log_curves == "auto" and not in_multirun()):
        paths.append(training_curves(history, os.path.join(out_dir, "training_curves.png"), title=str(cfg.model.name)))
    for path in paths:
        mlflow.log_artifact(path)
    if cfg.mlflow.log_model:
        weights = os.path.join(out_dir, "model_state_dict.pt")
        torch.save(model.state_dict(), weights)
        mlflow.log_artifact(weights, "model")


def in_multirun():
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf"), config_name="config",
            execution_whitelist=EXECUTION_WHITELIST)
def main(cfg: DictConfig):
    try:
        return train(cfg)
    except TrialPruned as pruned:
        return Pruned(str(pruned))  # a normal end for a sweep trial, not a job error
    except DivergedError as err:
        if current_trial() is None:
            raise
        return Failed(f"diverged: {err}")  # a result of the trial: recorded FAIL, the sweep goes on
    except USER_ERRORS as err:
        if in_multirun():
            raise  # the sweeper records the trial as failed and goes on
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)



if __name__ == "__main__":
    # Run this file's importable copy rather than __main__, so that parallel launchers (joblib)
    # pickle the task function by reference instead of by value.
    import train
    train.main()
