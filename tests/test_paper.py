"""Table 1 presets and the recipes: they build, run forward, count what the paper says, and compose."""
import functools

import pytest
import torch
from conftest import compose_cfg

from models import build_model, param_report

ROWS = range(1, 9)


@functools.cache
def config(*overrides):
    return compose_cfg(overrides)


@pytest.mark.parametrize("row", ROWS)
def test_table1_preset_builds_and_runs_forward(row):
    cfg = config(f"model=table1_row{row}")
    model = build_model(cfg, device="cpu").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    assert cfg.model.name == f"table1_row{row}"


def test_table1_counts_match_the_paper():
    totals = {row: param_report(config(f"model=table1_row{row}")).total for row in ROWS}
    assert totals[3] == 4_997_194  # the paper's final model, to the parameter
    assert totals[1] == totals[6] == 5_069_130  # "they both had 5.069 million parameters"
    for row in (2, 3, 4, 5, 7, 8):
        assert totals[row] <= 5_000_000, f"row {row} must fit the budget"


def test_table1_layouts_follow_the_paper():
    row4 = config("model=table1_row4")
    assert len(row4.model.layers) == 6 and row4.model.dropout == 0.5
    for row in (7, 8):
        cfg = config(f"model=table1_row{row}")
        assert cfg.model.layers.layer4.channels == 1024
        assert {layer.block for layer in cfg.model.layers.values()} == {"bottleneck"}
    assert config("model=table1_row8").model.dropout is None
    assert config("model=table1_row6").blocks.k2_design == "avgpool"
    assert config("model=table1_row1").blocks.k2_design == "pad"
    for row in (1, 6):
        cfg = config(f"model=table1_row{row}")
        assert cfg.stem.name == "conv3x3"
        assert {layer.kernel_size for layer in cfg.model.layers.values()} == {2}


@pytest.mark.parametrize("row", [1, 6])
def test_over_budget_rows_say_the_paper_reported_them_so(row):
    report = param_report(config(f"model=table1_row{row}"))
    assert not report.feasible
    message = report.over_budget_message()
    assert "over the budget" in message and f"Table 1 row {row}" in message
    assert "budget.max_params=5069130" in message
    assert param_report(config(f"model=table1_row{row}", "budget.max_params=5069130")).feasible


def test_budget_note_absent_for_ordinary_models():
    report = param_report(config("model=resnet18"))
    assert not report.feasible and "paper" not in report.over_budget_message()


def test_recipe_paper_is_the_papers_training():
    cfg = config("recipe=paper")
    assert param_report(cfg).total == 4_997_194
    assert (cfg.optimizer.name, cfg.scheduler.name, cfg.trainer.batch_size) == ("adamw", "cyclic", 256)
    assert cfg.model.dropout == 0.1 and cfg.augmentation.name == "simple" and cfg.augmentation.crop_padding == 2
    assert cfg.stem.name == "conv5x5"


def test_recipe_fast_stays_under_budget_and_has_the_ingredients():
    cfg = config("recipe=fast")
    assert param_report(cfg).feasible
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.nesterov and cfg.optimizer.scale_lr_with_batch
    assert not cfg.optimizer.decay_norm_and_bias
    assert cfg.trainer.epochs <= 30 and cfg.trainer.label_smoothing > 0 and cfg.trainer.ema_decay
    assert cfg.trainer.tta == "flip_shift" and cfg.augmentation.cutout > 0


def test_command_line_wins_over_the_recipe():
    cfg = config("recipe=fast", "trainer.epochs=2", "optimizer.lr=0.02", "stem=conv5x5")
    assert cfg.trainer.epochs == 2 and cfg.optimizer.lr == 0.02 and cfg.stem.name == "conv5x5"
    assert cfg.trainer.label_smoothing == 0.1 and cfg.augmentation.cutout == 8  # the rest of the recipe stays


def test_recipe_keeps_a_rows_own_architecture():
    cfg = config("model=table1_row6", "recipe=paper")
    assert cfg.model.name == "table1_row6" and cfg.blocks.k2_design == "avgpool" and cfg.stem.name == "conv3x3"
    assert config("model=table1_row4", "recipe=paper").model.dropout == 0.5


def test_no_recipe_by_default():
    cfg = config()
    assert cfg.trainer.epochs == 30 and cfg.optimizer.name == "adamw" and cfg.task == "train"
