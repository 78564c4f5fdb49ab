import itertools

import pytest
import torch

from models import ModelConfigError, build_model, param_report
from tests.conftest import compose_cfg


@pytest.mark.parametrize("overrides, expected", [
    (["model=final"], 4_997_194),                      # the paper's published count
    (["model=resnet18_k2_pad"], 5_069_130),            # "5.069 million"
    (["model=resnet18_k2_avgpool"], 5_069_130),
    (["model=resnet18"], 11_172_170),
    (["model=final", "stem=conv3x3"], 4_994_122),
])
def test_parameter_counts(overrides, expected):
    report = param_report(compose_cfg(overrides))
    assert report.total == expected
    assert report.feasible == (expected <= 5_000_000)
    assert report.summary_line() == f"params={expected} budget=5000000 feasible={str(expected <= 5_000_000).lower()}"


def test_meta_count_matches_real_model():
    cfg = compose_cfg(["model=final"])
    real = build_model(cfg, device="cpu")
    assert sum(p.numel() for p in real.parameters()) == param_report(cfg).total
    assert all(p.device.type == "meta" for p in build_model(cfg, device="meta").parameters())


def test_paper_block_structure():
    model = build_model(compose_cfg(["model=final"]), device="meta")
    assert [len(layer) for layer in model.layers.values()] == [3, 5, 26, 5]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(conv.bias is None for conv in convs)
    first_bottleneck = model.layers["layer3"][0]
    assert first_bottleneck.body[0].out_channels == 256 // 4        # middle width = output / reduction
    assert first_bottleneck.shortcut.proj.stride == (2, 2)           # stride 2 opens every later layer
    assert model.layers["layer1"][0].shortcut.proj is None           # identity when shapes match
    assert model.layers["layer3"][1].body[3].stride == (1, 1)
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 39 and set(dropouts) == {0.1}


STEMS = ["conv5x5", "conv3x3", "imagenet"]
BLOCKS = ["basic", "bottleneck"]
KERNELS = [1, 2, 3, 5]


@pytest.mark.parametrize("stem, block, kernel", list(itertools.product(STEMS, BLOCKS, KERNELS)))
def test_every_combination_runs_forward(stem, block, kernel):
    overrides = [f"stem={stem}", "model=tiny", f"model.layers.layer1.block={block}",
                 f"model.layers.layer1.kernel_size={kernel}", f"model.layers.layer2.kernel_size={kernel}",
                 "model.dropout=0.1"]
    if kernel == 2 and block == "bottleneck":
        overrides.append("blocks=k2_avgpool")  # one spatial conv: only the avgpool design restores its size
    cfg = compose_cfg(overrides)
    if kernel == 2 and stem == "conv5x5":  # 15x15 maps: odd sizes break the k2 shortcut
        with pytest.raises(ModelConfigError, match="stem=conv3x3"):
            param_report(cfg)
        return
    param_report(cfg)
    model = build_model(cfg).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("design", ["default", "k2_avgpool"])
def test_kernel2_designs_forward(design):
    cfg = compose_cfg(["model=resnet18_k2_pad", f"blocks={design}", "budget.max_params=6000000"])
    assert param_report(cfg).total == 5_069_130
    model = build_model(cfg).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    pools = [m for m in model.modules() if isinstance(m, torch.nn.AvgPool2d)]
    assert len(pools) == (16 if design == "k2_avgpool" else 0)


@pytest.mark.parametrize("override, message", [
    ("model.layers.layer1.block=wide", "block='wide' is unknown"),
    ("model.layers.layer1.blocks=0", "at least 1 block"),
    ("model.layers.layer2.channels=-8", "positive integer"),
    ("model.layers.layer1.dropout=1.0", r"dropout must be in \[0, 1\)"),
    ("model.layers.layer3.channels=130", "not divisible by blocks.bottleneck_reduction=4"),
    ("model.layers.layer1.kernel_size=4", "odd kernel"),
    ("blocks.k2_design=mirror", "k2_design='mirror' is unknown"),
    ("model.layers.layer3.kernel_size=2", "use blocks=k2_avgpool"),
])
def test_bad_model_configs_are_named(override, message):
    with pytest.raises(ModelConfigError, match=message):
        param_report(compose_cfg(["model=tiny", override]))


def test_layers_are_plain_overrides_and_any_number():
    cfg = compose_cfg(["model=final", "model.layers.layer3.blocks=12",
                       "+model.layers.layer5={block: basic, blocks: 1, channels: 64, dropout: 0.0, kernel_size: 3}"])
    model = build_model(cfg, device="meta")
    assert list(model.layers) == ["layer1", "layer2", "layer3", "layer4", "layer5"]
    assert len(model.layers["layer3"]) == 12


def test_width_multiplier_scales_channels():
    narrow = param_report(compose_cfg(["model=final", "model.width_mult=0.5"])).total
    assert narrow < 4_997_194 / 3


def test_over_budget_message_names_count_budget_and_largest_layers():
    report = param_report(compose_cfg(["model=resnet18"]))
    message = report.over_budget_message()
    assert "11,172,170" in message and "5,000,000" in message and "layer4" in message
