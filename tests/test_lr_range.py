"""LR range test: the scan, the suggestion rule, the files it writes, and cyclic bounds read back from them."""
import csv
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import compose_cfg, small_data_overrides

from training import app
from training.lr_bounds import load_suggestion, suggest
from training.lr_range import check_settings, scan
from training.optim import OptimConfigError, build_optimizer, build_scheduler

SETTINGS = dict(min_lr=1e-5, max_lr=10.0, steps=200, smoothing=0.9, divergence=4.0, rule="steepest",
                min_lr_divisor=4.0)


def config(*overrides):
    return compose_cfg(overrides)


def test_suggestion_reads_the_steepest_descent_of_a_known_curve():
    lrs = np.logspace(-5, 1, 200)
    x = np.log10(lrs)
    losses = 2.3 - 1.5 / (1 + np.exp(-3 * (x + 2))) + np.where(x > 0, 5 * x ** 2, 0)  # falls fastest at 1e-2
    low, high, facts, smooth = suggest(lrs, losses, SETTINGS)
    assert 0.5e-2 < high < 2e-2
    assert low == pytest.approx(high / 4)
    assert "fastest" in facts["rule"] and "/ 4" in facts["rule"]
    assert 0.1 < facts["lr_at_min_loss"] < 1.5
    low, high, facts, _ = suggest(lrs, losses, {**SETTINGS, "rule": "min_div10"})
    assert high == pytest.approx(facts["lr_at_min_loss"] / 10)


@pytest.mark.parametrize("steps", [5, 10, 30])  # lr_range.steps from its least (10); a scan may stop after 5
def test_a_short_scan_is_smoothed_point_for_point_and_gives_a_suggestion(steps):
    """The smoothing kernel (29 points at smoothing 0.95) is cut to the curve's length: 5 and 10 steps failed."""
    lrs = np.logspace(-5, 1, steps)
    losses = 2.3 - np.log10(lrs) / 10
    low, high, _, smooth = suggest(lrs, losses, {**SETTINGS, "smoothing": 0.95})
    assert len(smooth) == steps and np.isfinite(smooth).all()
    assert 0 < low < high <= lrs[-1]


def test_scan_stops_early_when_the_loss_explodes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.randn(64, 3, 2, 2), torch.randint(0, 3, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    batches = iter(lambda: (x, y), None)
    rows, ended = scan(model, optimizer, batches, torch.nn.CrossEntropyLoss(),
                       {**SETTINGS, "min_lr": 1e-3, "max_lr": 1e4, "steps": 300},
                       torch.autocast("cpu", enabled=False), torch.amp.GradScaler("cpu", enabled=False))
    assert len(rows) < 300 and ended != "completed"
    assert rows[0]["lr"] == pytest.approx(1e-3) and all(a["lr"] < b["lr"] for a, b in zip(rows, rows[1:]))


def test_bad_settings_fail_with_one_line():
    cfg = config("task=lr_range_test", "lr_range.min_lr=1", "lr_range.max_lr=0.1")
    with pytest.raises(OptimConfigError, match="min_lr < max_lr"):
        check_settings(cfg.lr_range)
    with pytest.raises(OptimConfigError, match="rule"):
        check_settings(config("lr_range.rule=fastest").lr_range)


def test_range_test_end_to_end_then_cyclic_bounds(cifar_root, mlflow_store, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_store}/mlflow.db")
    cfg = config("model=tiny", "task=lr_range_test", *small_data_overrides(cifar_root, mlflow_store),
                 "trainer.batch_size=16", "lr_range.steps=40", "lr_range.min_lr=1e-4", "lr_range.max_lr=10",
                 "lr_range.smoothing=0.8")
    result = app.run(cfg)
    printed = capsys.readouterr().out
    assert "suggested cyclic LR" in printed and "scheduler.bounds_from=" in printed

    paths = result["paths"]
    with open(paths["lr_range.csv"]) as f:
        rows = list(csv.DictReader(f))
    assert 10 <= len(rows) <= 40 and {"lr", "loss", "smoothed_loss", "acc", "smoothed_acc"} <= set(rows[0])
    scanned = (float(rows[0]["lr"]), float(rows[-1]["lr"]))
    assert scanned[0] == pytest.approx(1e-4)
    assert scanned[0] <= result["min_lr"] < result["max_lr"] <= scanned[1]
    assert Path(paths["lr_range.png"]).read_bytes()[:4] == b"\x89PNG"
    assert json.loads(Path(paths["lr_range.json"]).read_text())["max_lr"] == result["max_lr"]

    expected = pytest.approx((result["min_lr"], result["max_lr"]))
    assert load_suggestion(paths["lr_range.json"]) == expected
    assert load_suggestion(paths["lr_range.csv"]) == expected  # reads the suggestion written beside the curve
    assert load_suggestion(str(Path(paths["lr_range.json"]).parent)) == expected
    assert load_suggestion(f"runs:/{result['mlflow_run_id']}") == expected

    # The run is looked up in the job's mlflow.tracking_uri, wherever MLflow itself points now
    cyclic = config("model=tiny", "scheduler=cyclic", f"scheduler.bounds_from=runs:/{result['mlflow_run_id']}",
                    f"mlflow.tracking_uri=sqlite:///{mlflow_store}/mlflow.db")
    model = torch.nn.Linear(2, 2)
    load_suggestion.cache_clear()  # (it is cached: the config check and the training both ask)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{mlflow_store}/elsewhere.db")
    try:
        scheduler = build_scheduler(cyclic, build_optimizer(cyclic, model, "cpu"), steps_per_epoch=10, epochs=2)
    finally:
        mlflow.set_tracking_uri(before)
    assert isinstance(scheduler, torch.optim.lr_scheduler.CyclicLR)
    assert scheduler.base_lrs[0] == pytest.approx(result["min_lr"])
    assert scheduler.max_lrs[0] == pytest.approx(result["max_lr"])


def test_bounds_from_bad_sources_fail_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(OptimConfigError, match="no such file"):
        load_suggestion(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text('{"min_lr": 0.1, "max_lr": 0.01}')
    with pytest.raises(OptimConfigError, match="0 < base_lr < max_lr"):
        load_suggestion(str(tmp_path / "bad.json"))
    with pytest.raises(OptimConfigError, match="no MLflow run"):
        load_suggestion("runs:/0123456789abcdef")


def test_bounds_from_a_bare_curve_csv(tmp_path):
    lrs = np.logspace(-4, 0, 80)
    losses = 2.3 - 1.5 / (1 + np.exp(-3 * (np.log10(lrs) + 2)))
    path = tmp_path / "curve.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "lr", "loss"])
        writer.writerows((i, lr, loss) for i, (lr, loss) in enumerate(zip(lrs, losses)))
    low, high = load_suggestion(str(path))
    assert lrs[0] <= low < high <= lrs[-1]
