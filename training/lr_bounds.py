"""Reading cyclic-LR bounds off an LR range test: the rule, and a finished test's result.

`suggest` turns a scanned curve into (base_lr, max_lr); `load_suggestion` reads them back from a
finished test (its lr_range.json or .csv, its output folder, or its MLflow run as runs:/<id>) for
`scheduler.bounds_from`. The scan itself is training/lr_range.py.
"""
import csv
import functools
import json
import math
import os

import numpy as np

from errors import OptimConfigError, TrackingError

CSV_NAME, JSON_NAME, PNG_NAME = "lr_range.csv", "lr_range.json", "lr_range.png"


def zero_lag(values, beta):
    """Centred Gaussian smoothing, sigma = 1/(4(1-beta)) steps (5 at beta 0.95): no drift to higher LRs,
    and, unlike a backward EMA, almost no leak of the final blow-up into the minimum just before it."""
    values = np.asarray(values, dtype=float)
    sigma = max(1.0, 0.25 / (1 - beta)) if beta > 0 else 1e-9
    # At most as wide as the curve: np.convolve's "same" returns the longer of the two, so the 29-point kernel of
    # beta 0.95 made a 10-step scan's curve 29 points long and the suggestion failed (lr_range.steps 10 to 28).
    reach = min(int(3 * sigma), (len(values) - 1) // 2)
    offsets = np.arange(-reach, reach + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    total = np.convolve(values, kernel, mode="same")
    weight = np.convolve(np.ones_like(values), kernel, mode="same")  # renormalise where the kernel is cut
    return total / weight


def suggest(lrs, losses, settings):
    """(min_lr, max_lr, facts, smoothed loss) from the curve; facts['rule'] spells out the rule."""
    lrs = np.asarray(lrs, dtype=float)
    if len(lrs) < 5:
        raise OptimConfigError(f"the LR range test stopped after {len(lrs)} steps, too few to read a suggestion: "
                               f"lower lr_range.min_lr or raise lr_range.divergence")
    smooth = zero_lag(losses, settings["smoothing"])
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
    from training.tracking import run_metrics
    run_id = source[len("runs:/"):].strip("/").split("/")[0]
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    try:
        metrics = run_metrics(uri, run_id)
    except TrackingError as err:
        raise OptimConfigError(f"scheduler.bounds_from={source}: {err}; set mlflow.tracking_uri to the store "
                               f"the range test logged to, or pass its lr_range.json") from None
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
