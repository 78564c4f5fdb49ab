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
import functools
import json
import math
import os

import numpy as np
import torch

from training.optim import OptimConfigError

RULES = ("steepest", "min_div10")
CSV_NAME, JSON_NAME, PNG_NAME = "lr_range.csv", "lr_range.json", "lr_range.png"


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


def zero_lag(values, beta):
    """Centred Gaussian smoothing, sigma = 1/(4(1-beta)) steps (5 at beta 0.95): no drift to higher LRs,
    and, unlike a backward EMA, almost no leak of the final blow-up into the minimum just before it."""
    values = np.asarray(values, dtype=float)
    sigma = max(1.0, 0.25 / (1 - beta)) if beta > 0 else 1e-9
    offsets = np.arange(-int(3 * sigma), int(3 * sigma) + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    total = np.convolve(values, kernel, mode="same")
    weight = np.convolve(np.ones_like(values), kernel, mode="same")  # renormalise where the kernel is cut
    return total / weight


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


def suggest(lrs, losses, settings):
    """(min_lr, max_lr, facts, smoothed loss) from the curve; facts['rule'] spells out the rule."""
    lrs = np.asarray(lrs, dtype=float)
    smooth = zero_lag(losses, settings["smoothing"])
    if len(lrs) < 5:
        raise OptimConfigError(f"the LR range test stopped after {len(lrs)} steps, too few to read a suggestion: "
                               f"lower lr_range.min_lr or raise lr_range.divergence")
    lowest = int(np.argmin(smooth))
    slope = np.gradient(smooth, np.log10(lrs))
    steepest = int(np.argmin(slope[:lowest + 1]))
    if settings["rule"] == "steepest" and lowest >= 3:
        max_lr = float(lrs[steepest])
        text = "max = LR where the smoothed loss falls fastest (per decade of LR) before its minimum"
    else:
        max_lr = max(float(lrs[lowest]) / 10, float(lrs[0]))
        text = "max = LR at the smoothed loss minimum / 10"
        if settings["rule"] == "steepest":
            text += " (the loss never fell, so steepest descent was undefined)"
    divisor = settings["min_lr_divisor"]
    facts = {"rule": f"{text}; min = max / {divisor:g}", "lr_at_min_loss": float(lrs[lowest]),
             "min_smoothed_loss": float(smooth[lowest]), "steepest_lr": float(lrs[steepest])}
    return max_lr / divisor, max_lr, facts, smooth


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
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def batches_forever(loader):
    while True:
        yield from loader


def run_range_test(cfg, report, device, make_loaders, out_dir):
    """Scan, suggest, write CSV/JSON/PNG into out_dir, log everything to MLflow; returns the suggestion."""
    import mlflow

    from models import build_model
    from training.optim import build_optimizer
    from training.tracking import check_reachable, open_store, start_run

    settings = check_settings(cfg.lr_range)
    check_reachable(cfg.mlflow.tracking_uri)
    torch.manual_seed(cfg.trainer.seed)
    channels_last = device.type == "cuda" if cfg.trainer.channels_last == "auto" else bool(cfg.trainer.channels_last)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.trainer.precision]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.trainer.precision == "fp16")
    train_loader, _, _ = make_loaders(cfg, device, channels_last)
    experiment_id = open_store(cfg.mlflow.tracking_uri, cfg.mlflow.experiment)  # after the data: nothing stored if it is missing
    model = build_model(cfg, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model, device.type)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)

    run = start_run(cfg, report.total, experiment_id)
    if not cfg.mlflow.get("run_name"):
        mlflow.set_tag("mlflow.runName", f"lr_range-{cfg.model.name}-{cfg.optimizer.name}")
    mlflow.set_tag("task", "lr_range_test")
    print(f"LR range test: {cfg.model.name} ({report.total:,} parameters), {cfg.optimizer.name}, batch "
          f"{cfg.trainer.batch_size}, {settings['steps']} steps from {settings['min_lr']:.1e} to "
          f"{settings['max_lr']:.1e} on {device} | mlflow run {run.info.run_id}", flush=True)
    try:
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
                  "mlflow_run_id": run.info.run_id}
        with open(paths[JSON_NAME], "w") as f:
            json.dump(result, f, indent=2)
        plot(rows, smooth, low, high, paths[PNG_NAME],
             f"LR range test: {cfg.model.name}, {cfg.optimizer.name}, batch {cfg.trainer.batch_size}")
        log_curve(run.info.run_id, rows)
        mlflow.log_metrics({"suggested_min_lr": low, "suggested_max_lr": high, "lr_at_min_loss": facts["lr_at_min_loss"],
                            "steepest_lr": facts["steepest_lr"], "min_smoothed_loss": facts["min_smoothed_loss"]})
        mlflow.set_tags({"lr_range.rule": facts["rule"], "lr_range.ended": ended})
        for path in paths.values():
            mlflow.log_artifact(path, "lr_range")
    except BaseException as err:
        mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
        mlflow.end_run(status="KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    mlflow.end_run()
    print(f"scanned {rows[0]['lr']:.2e} .. {rows[-1]['lr']:.2e} in {len(rows)} steps ({ended})\n"
          f"lowest smoothed loss {facts['min_smoothed_loss']:.4f} at lr {facts['lr_at_min_loss']:.2e}; "
          f"steepest descent at lr {facts['steepest_lr']:.2e}\n"
          f"suggested cyclic LR: base_lr={low:.3g} max_lr={high:.3g} ({facts['rule']})\n"
          f"wrote {paths[PNG_NAME]}, {paths[CSV_NAME]}, {paths[JSON_NAME]}\n"
          f"next: python train.py model={cfg.model.name} optimizer={cfg.optimizer.name} scheduler=cyclic "
          f"scheduler.bounds_from={paths[JSON_NAME]}   (or scheduler.bounds_from=runs:/{run.info.run_id})",
          flush=True)
    return {**result, "paths": paths}


def log_curve(run_id, rows):
    """The whole curve as step-indexed MLflow metrics, in batches (one call per 1000 values)."""
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    now = int(time.time() * 1000)
    metrics = [Metric(f"lr_range/{key}", float(row[key]), now, row["step"])
               for row in rows for key in ("lr", "loss", "smoothed_loss", "acc", "smoothed_acc")]
    client = MlflowClient()
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


@functools.lru_cache(maxsize=None)
def load_suggestion(source, tracking_uri=None):
    """(base_lr, max_lr) from a finished range test: its lr_range.json or .csv, its output folder,
    or its MLflow run as runs:/<run_id> (in tracking_uri: the job's mlflow.tracking_uri)."""
    source = str(source)
    if source.startswith("runs:/"):
        low, high = _from_run(source, tracking_uri)
    else:
        low, high = _from_file(source)
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
        raise OptimConfigError(f"scheduler.bounds_from={source} gives base_lr={low}, max_lr={high}: "
                               f"need 0 < base_lr < max_lr; rerun the range test or set the bounds by hand")
    print(f"cyclic LR bounds from {source}: base_lr={low:.3g} max_lr={high:.3g}", flush=True)
    return low, high


def _from_run(source, tracking_uri=None):
    import mlflow
    from mlflow.tracking import MlflowClient
    run_id = source[len("runs:/"):].strip("/").split("/")[0]
    uri = tracking_uri or mlflow.get_tracking_uri()
    try:
        metrics = MlflowClient(uri).get_run(run_id).data.metrics
    except Exception as err:
        raise OptimConfigError(f"scheduler.bounds_from={source}: no MLflow run '{run_id}' in {uri} "
                               f"({type(err).__name__}); set mlflow.tracking_uri to the store the range "
                               f"test logged to, or pass its lr_range.json") from None
    if "suggested_min_lr" not in metrics or "suggested_max_lr" not in metrics:
        raise OptimConfigError(f"scheduler.bounds_from={source}: run {run_id} has no suggested_min_lr/max_lr; "
                               f"is it a finished task=lr_range_test run?")
    return float(metrics["suggested_min_lr"]), float(metrics["suggested_max_lr"])


def _from_file(source):
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        path = os.path.join(path, JSON_NAME)
    if path.endswith(".csv") and os.path.isfile(os.path.join(os.path.dirname(path), JSON_NAME)):
        path = os.path.join(os.path.dirname(path), JSON_NAME)  # the suggestion written beside the curve
    if not os.path.isfile(path):
        raise OptimConfigError(f"scheduler.bounds_from={source}: no such file; pass the lr_range.json or "
                               f"lr_range.csv a range test wrote (python train.py task=lr_range_test), or runs:/<id>")
    try:
        if path.endswith(".json"):
            with open(path) as f:
                data = json.load(f)
            return float(data["min_lr"]), float(data["max_lr"])
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        defaults = dict(smoothing=0.95, rule="steepest", min_lr_divisor=4.0)
        low, high, _, _ = suggest([float(r["lr"]) for r in rows], [float(r["loss"]) for r in rows], defaults)
        print(f"{source}: no {JSON_NAME} beside it; suggestion recomputed from the curve with the default rule")
        return low, high
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise OptimConfigError(f"scheduler.bounds_from={source}: cannot read a range-test result from {path} "
                               f"({type(err).__name__}: {err})") from None
