"""The learning-rate range test (Smith 2018), and the cyclic-LR bounds it suggests.

    python train.py model=final task=lr_range_test            # scan, plot, suggest, log to MLflow
    python train.py model=final scheduler=cyclic scheduler.bounds_from=outputs/.../lr_range.json

The untrained model takes `lr_range.steps` optimizer steps while the LR grows exponentially from
lr_range.min_lr to lr_range.max_lr; the scan stops early once the (causal, EMA) smoothed loss passes
`divergence` times its best value. The suggestion is read off a centred (zero-lag) smoothed loss curve:
max LR = where the loss falls fastest against log LR (rule `steepest`) or a tenth of the LR at the
lowest loss (rule `min_div10`); min LR = max LR / min_lr_divisor.
"""
import csv
import json
import math
import os

import numpy as np
import torch

from errors import OptimConfigError
from training.files import write_text_atomically
from training.lr_bounds import CSV_NAME, JSON_NAME, PNG_NAME, suggest, zero_lag

RULES = ("steepest", "min_div10")


def check_settings(settings):
    """The lr_range config group as plain numbers, or a one-line error."""
    low, high = float(settings.min_lr), float(settings.max_lr)
    steps, beta = settings.steps, float(settings.smoothing)
    if not 0 < low < high:
        raise OptimConfigError(f"lr_range needs 0 < min_lr < max_lr, got {low} and {high}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 10:
        raise OptimConfigError(f"lr_range.steps={steps!r} must be an integer >= 10 (a few hundred is typical)")
    if not 0 <= beta < 1:
        raise OptimConfigError(f"lr_range.smoothing={beta} must be in [0, 1) (0.95 is typical)")
    if not float(settings.divergence) > 1:
        raise OptimConfigError(f"lr_range.divergence={settings.divergence} must be > 1 (4 is typical)")
    if str(settings.rule) not in RULES:
        raise OptimConfigError(f"lr_range.rule='{settings.rule}' is unknown: use {' or '.join(RULES)}")
    if not float(settings.min_lr_divisor) > 1:
        raise OptimConfigError(f"lr_range.min_lr_divisor={settings.min_lr_divisor} must be > 1 (Smith: 3-4)")
    return dict(min_lr=low, max_lr=high, steps=steps, smoothing=beta, divergence=float(settings.divergence),
                rule=str(settings.rule), min_lr_divisor=float(settings.min_lr_divisor))


def lr_at(step, steps, min_lr, max_lr):
    return min_lr * (max_lr / min_lr) ** (step / (steps - 1))


def ema(values, beta, reverse=False):
    """Bias-corrected exponential moving average; reverse=True runs it from the end."""
    values = np.asarray(values, dtype=float)[::-1] if reverse else np.asarray(values, dtype=float)
    out, avg = np.empty_like(values), 0.0
    for i, value in enumerate(values):
        avg = beta * avg + (1 - beta) * value
        out[i] = avg / (1 - beta ** (i + 1))
    return out[::-1] if reverse else out


def scan(model, optimizer, batches, criterion, settings, autocast, scaler):
    """Train with an exponentially growing LR; returns rows {step, lr, loss, acc, ema_loss} and why it ended."""
    model.train()
    steps, beta = settings["steps"], settings["smoothing"]
    rows, avg, best = [], 0.0, math.inf
    for step in range(steps):
        lr = lr_at(step, steps, settings["min_lr"], settings["max_lr"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = next(batches)
        with autocast:
            logits = model(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        value = loss.item()  # one sync per step: the stop rule needs it
        if not math.isfinite(value):
            return rows, f"loss became {value} at lr {lr:.3g}"
        avg = beta * avg + (1 - beta) * value
        smoothed = avg / (1 - beta ** (step + 1))
        acc = (logits.argmax(1) == y).float().mean().item()
        rows.append({"step": step, "lr": lr, "loss": value, "acc": acc, "ema_loss": smoothed})
        best = min(best, smoothed)
        if step >= 10 and smoothed > settings["divergence"] * best:
            return rows, f"smoothed loss {smoothed:.3g} > {settings['divergence']:g} x best {best:.3g} at lr {lr:.3g}"
    return rows, "completed"


def plot(rows, smooth, low, high, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = [row["lr"] for row in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    ax_loss.plot(lrs, [row["loss"] for row in rows], color="0.75", lw=0.8, label="loss (per batch)")
    ax_loss.plot(lrs, smooth, color="C0", lw=2, label="loss (smoothed)")
    ax_acc.plot(lrs, [100 * row["acc"] for row in rows], color="0.75", lw=0.8, label="accuracy (per batch)")
    ax_acc.plot(lrs, [100 * row["smoothed_acc"] for row in rows], color="C1", lw=2, label="accuracy (smoothed)")
    before_min = smooth[: int(np.argmin(smooth)) + 1]
    ax_loss.set_ylim(smooth.min() * 0.9, before_min.max() * 1.3)  # the explosion is cut off, the descent shows
    for ax in (ax_loss, ax_acc):
        ax.axvline(low, color="C2", ls="--", label=f"suggested min LR {low:.2e}")
        ax.axvline(high, color="C3", ls="--", label=f"suggested max LR {high:.2e}")
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    ax_loss.set(ylabel="training loss", title=title)
    ax_acc.set(xlabel="learning rate (log scale)", ylabel="training batch accuracy (%)")
    fig.tight_layout()
    from training.plots import save_figure
    save_figure(fig, path)
    return path


def batches_forever(loader):
    while True:
        yield from loader


def run_range_test(cfg, report, out_dir):
    """Scan, suggest, write CSV/JSON/PNG into out_dir, log everything to MLflow; returns the suggestion.

    The same setup as training (training/engine.py, training/runtime.py), the same tracked run
    (training/run_context.py): only the optimizer steps differ.
    """
    from data import make_loaders
    from models import build_model
    from training.optim import build_optimizer
    from training.run_context import RunContext
    from training.runtime import Runtime
    from training.tracking import Tracker

    settings = check_settings(cfg.lr_range)
    tracker = Tracker(cfg)
    tracker.check_reachable()
    runtime = Runtime.from_config(cfg.trainer).setup(cfg.trainer.seed)
    autocast, scaler = runtime.autocast(), runtime.grad_scaler()
    train_loader, _, _ = make_loaders(cfg, runtime.device, runtime.channels_last)
    tracker.open()  # after the data: nothing stored if it is missing
    model = runtime.prepare(build_model(cfg, device=runtime.device))
    optimizer = build_optimizer(cfg, model, runtime.device.type)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)

    with RunContext(tracker, report) as run:
        tags = {"task": "lr_range_test"}
        if not cfg.mlflow.get("run_name"):
            tags["mlflow.runName"] = f"lr_range-{cfg.model.name}-{cfg.optimizer.name}"
        tracker.set_tags(tags)
        print(f"LR range test: {cfg.model.name} ({report.total:,} parameters), {cfg.optimizer.name}, batch "
              f"{cfg.trainer.batch_size}, {settings['steps']} steps from {settings['min_lr']:.1e} to "
              f"{settings['max_lr']:.1e} on {runtime.device} | mlflow run {run.run_id}", flush=True)
        rows, ended = scan(model, optimizer, batches_forever(train_loader), criterion, settings, autocast, scaler)
        low, high, facts, smooth = suggest([r["lr"] for r in rows], [r["loss"] for r in rows], settings)
        acc_smooth = zero_lag([r["acc"] for r in rows], settings["smoothing"])
        for row, s, a in zip(rows, smooth, acc_smooth):
            row["smoothed_loss"], row["smoothed_acc"] = float(s), float(a)
        os.makedirs(out_dir, exist_ok=True)
        paths = {name: os.path.join(out_dir, name) for name in (CSV_NAME, JSON_NAME, PNG_NAME)}
        with open(paths[CSV_NAME], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        result = {"min_lr": low, "max_lr": high, **facts, "ended": ended, "steps_run": len(rows),
                  "scanned": [rows[0]["lr"], rows[-1]["lr"]], "model": str(cfg.model.name),
                  "optimizer": str(cfg.optimizer.name), "batch_size": int(cfg.trainer.batch_size),
                  "mlflow_run_id": run.run_id}
        write_text_atomically(paths[JSON_NAME], json.dumps(result, indent=2))
        plot(rows, smooth, low, high, paths[PNG_NAME],
             f"LR range test: {cfg.model.name}, {cfg.optimizer.name}, batch {cfg.trainer.batch_size}")
        tracker.log_curve(rows, ("lr", "loss", "smoothed_loss", "acc", "smoothed_acc"), prefix="lr_range")
        tracker.log_metrics({"suggested_min_lr": low, "suggested_max_lr": high,
                             "lr_at_min_loss": facts["lr_at_min_loss"], "steepest_lr": facts["steepest_lr"],
                             "min_smoothed_loss": facts["min_smoothed_loss"]})
        tracker.set_tags({"lr_range.rule": facts["rule"], "lr_range.ended": ended})
        tracker.log_artifacts(paths.values(), "lr_range")
    print(f"scanned {rows[0]['lr']:.2e} .. {rows[-1]['lr']:.2e} in {len(rows)} steps ({ended})\n"
          f"lowest smoothed loss {facts['min_smoothed_loss']:.4f} at lr {facts['lr_at_min_loss']:.2e}; "
          f"steepest descent at lr {facts['steepest_lr']:.2e}\n"
          f"suggested cyclic LR: base_lr={low:.3g} max_lr={high:.3g} ({facts['rule']})\n"
          f"wrote {paths[PNG_NAME]}, {paths[CSV_NAME]}, {paths[JSON_NAME]}\n"
          f"next: python train.py model={cfg.model.name} optimizer={cfg.optimizer.name} scheduler=cyclic "
          f"scheduler.bounds_from={paths[JSON_NAME]}   (or scheduler.bounds_from=runs:/{run.run_id})",
          flush=True)
    return {**result, "paths": paths}
