"""The model: published counts, block rules, the block registry, FLOPs, the two BN options.

The oracle for every count is the built model itself: its parameters (p.numel() on the meta device),
its FLOPs (torch's FlopCounterMode) and its feature-map shapes (a meta-tensor forward pass, block by block).
"""
import itertools
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from errors import BudgetError, ConfigError
from models import BLOCKS, ModelConfigError, ResidualBlock, ResNet, build_model, param_report, register_block
from models import blocks as block_registry
from models import ops
from models.specs import model_spec
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
BLOCK_NAMES = ["basic", "bottleneck"]
KERNELS = [1, 2, 3, 5]


@pytest.mark.parametrize("stem, block, kernel", list(itertools.product(STEMS, BLOCK_NAMES, KERNELS)))
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
    ("model.layers.layer1.block=wide", "^model.layers.layer1.block=wide: use one of basic, bottleneck"),
    ("model.layers.layer1.blocks=0", "^model.layers.layer1.blocks=0: must be an integer >= 1"),
    ("model.layers.layer2.channels=-8", "^model.layers.layer2.channels=-8: must be an integer >= 1"),
    ("model.layers.layer1.dropout=1.0", r"^model.layers.layer1.dropout=1.0: must be a number in \[0, 1\)"),
    ("model.layers.layer3.channels=130", "not divisible by blocks.bottleneck_reduction=4"),
    ("model.layers.layer1.kernel_size=4", r"^model.layers.layer1.kernel_size=4: must be an integer >= 1, odd \(1, 3"),
    ("blocks.k2_design=mirror", "^blocks.k2_design=mirror: use one of pad, avgpool"),
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


# --- the oracle: the built model ----------------------------------------------------------------------
def numel(module):
    return sum(p.numel() for p in module.parameters())


def built_rows(model):
    """param_report's rows, read off the built model's own parameters."""
    return ([("stem", numel(model.stem))]
            + [(f"{name} ({len(layer)} blocks)", numel(layer)) for name, layer in model.layers.items()]
            + [("head", numel(model.head))])


def built_flops(model, image_size=32):
    """Forward FLOPs per image of each row (stem, layers, head), as FlopCounterMode counts the built model."""
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    counts = {name: sum(ops_.values()) for name, ops_ in counter.get_flop_counts().items()}
    names = ["stem", *(f"layers.{name}" for name in model.layers), "head"]
    return [counts.get(f"ResNet.{name}", 0) for name in names]


@torch.no_grad()
def first_misfit(model, image_size=32):
    """Run the built model block by block: the first (layer, block) whose body and shortcut cannot be
    added (different shapes, or a conv left with no pixels), else None. Meta tensors for big models;
    small ones run faster for real on the CPU than on the meta device."""
    model.eval()  # BatchNorm in training mode refuses a batch of one 1x1 map
    x = model.stem(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    for name, layer in model.layers.items():
        for index, block in enumerate(layer):
            try:
                body, shortcut = block.body(x), block.shortcut(x)
            except RuntimeError:  # "output size is too small"
                return name, index
            if body.shape != shortcut.shape:
                return name, index
            x = block(x)
    assert model.head(x).shape == (1, model.spec.num_classes)
    return None


PRESETS = ["final", "tiny", "resnet18", "resnet18_k2_pad", "resnet18_k2_avgpool",
           *(f"table1_row{row}" for row in range(1, 9))]


@pytest.mark.parametrize("model", PRESETS)
def test_count_equals_built_model(model):
    cfg = compose_cfg([f"model={model}"])
    report, built = param_report(cfg), build_model(cfg, device="meta")
    assert report.rows == built_rows(built) and report.total == numel(built)
    assert first_misfit(built) is None


@pytest.mark.parametrize("overrides, forward_flops", [
    (["model=final"], 354_278_784),                    # 1.063 training GFLOP per image
    (["model=final", "stem=conv3x3"], 1_466_836_992),  # 4.401: the 3x3 stem keeps 32x32 maps, ~4x the FLOPs
    (["model=resnet18_k2_avgpool"], None),
    (["model=tiny", "stem=imagenet"], None),
])
def test_flops_equal_flop_counter_on_built_model(overrides, forward_flops):
    cfg = compose_cfg(overrides)
    report = param_report(cfg)
    assert report.flops == built_flops(build_model(cfg, device="meta"))  # exact: conv and linear, as counted
    if forward_flops is not None:
        assert report.forward_flops == forward_flops
        assert report.train_gflops == pytest.approx(3 * forward_flops / 1e9)


def random_overrides(rng):
    overrides = [f"stem={rng.choice(['conv3x3', 'conv5x5', 'imagenet'])}",
                 f"blocks={rng.choice(['default', 'k2_avgpool', 'bottleneck_r2'])}",
                 f"model.width_mult={rng.choice([0.5, 1.0, 1.5])}", f"++data.image_size={rng.choice([16, 32, 40])}"]
    for layer in ("layer1", "layer2", "layer3"):
        overrides += [f"model.layers.{layer}.block={rng.choice(['basic', 'bottleneck'])}",
                      f"model.layers.{layer}.blocks={rng.randint(1, 3)}",
                      f"model.layers.{layer}.kernel_size={rng.choice([1, 2, 3, 5])}"]
    return overrides


def test_count_flops_and_shape_check_agree_with_built_model_on_random_configs():
    rng = random.Random(0)
    outcomes = {"counted": 0, "misfit": 0, "refused by the block": 0}
    for _ in range(20):
        cfg = compose_cfg(["model=tiny", *random_overrides(rng)])
        size = cfg.data.image_size
        try:
            report = param_report(cfg)
        except ModelConfigError as err:
            try:
                model = ResNet(model_spec(cfg))  # the modules alone, without the count's check
            except ModelConfigError as same:  # a block class refused its spec: both paths say the same
                assert str(same) == str(err)
                outcomes["refused by the block"] += 1
                continue
            layer, index = first_misfit(model, size)
            assert f"model.layers.{layer} block {index} cannot take" in str(err)
            with pytest.raises(ModelConfigError, match="cannot take"):
                build_model(cfg, device="meta")
            outcomes["misfit"] += 1
            continue
        model = build_model(cfg)
        assert first_misfit(model, size) is None
        assert report.rows == built_rows(model) and report.flops == built_flops(model, size)
        outcomes["counted"] += 1
    assert all(outcomes.values()), outcomes  # every path was exercised


def test_image_size_comes_from_the_data_config():
    at_32, at_64 = (param_report(compose_cfg(["model=final", f"++data.image_size={size}"])) for size in (32, 64))
    assert at_64.total == at_32.total == 4_997_194
    assert 3.9 < at_64.forward_flops / at_32.forward_flops < 4.3  # ~4x the pixels (31x31 vs 15x15 after the stem)
    with pytest.raises(ConfigError, match=r"^data.image_size=0: must be an integer >= 1"):
        param_report(compose_cfg(["model=final", "++data.image_size=0"]))


# --- the block registry -------------------------------------------------------------------------------
def test_a_new_block_type_is_one_class_and_one_config_option(monkeypatch):
    monkeypatch.setattr(block_registry, "BLOCKS", dict(BLOCKS))  # registered for this test only

    @register_block("preact")
    class PreActBlock(ResidualBlock):
        """BN -> ReLU -> conv -> BN -> ReLU -> Dropout -> conv (pre-activation), + shortcut."""

        @classmethod
        def body_ops(cls, spec):
            return (ops.BatchNorm(spec.c_in), ops.ReLU(), ops.Conv(spec.c_in, spec.c_out, 3, spec.stride, 1),
                    ops.BatchNorm(spec.c_out), ops.ReLU(), ops.Dropout(spec.dropout),
                    ops.Conv(spec.c_out, spec.c_out, 3, 1, 1))

    cfg = compose_cfg(["model=tiny", "model.layers.layer2.block=preact"])
    report, model = param_report(cfg), build_model(cfg, device="meta")
    assert isinstance(model.layers["layer2"][0], PreActBlock)
    assert report.rows == built_rows(model) and report.flops == built_flops(model)
    c_in, c = 32, 64  # layer1 -> layer2: 2 x 32 (BN) + 32 x 64 x 9 + 2 x 64 + 64 x 64 x 9 + 32 x 64 (shortcut)
    assert report.rows[2] == ("layer2 (1 blocks)", 2 * c_in + c_in * c * 9 + 2 * c + c * c * 9 + c_in * c)
    assert build_model(cfg).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ModelConfigError, match="use one of basic, bottleneck, preact"):
        param_report(compose_cfg(["model=tiny", "model.layers.layer2.block=wide"]))
    with pytest.raises(ValueError, match="already registered"):
        register_block("basic")(PreActBlock)


def test_registry_is_what_the_config_offers():
    assert {"basic", "bottleneck"} <= set(BLOCKS)
    assert all(issubclass(cls, ResidualBlock) and cls.name == name for name, cls in BLOCKS.items())


# --- the FLOPs budget ---------------------------------------------------------------------------------
def test_flops_budget_is_honoured_and_named():
    report = param_report(compose_cfg(["model=final", "budget.max_gflops=1.0"]))
    assert report.params_feasible and not report.flops_feasible and not report.feasible
    message = report.over_budget_message()
    assert message.startswith("model needs 1.063 training GFLOP per image, over the FLOPs budget "
                              "(budget.max_gflops=1) by 0.063 (largest: layer2 (5 blocks) 0.541")
    assert "parameters" not in message and "raise budget.max_gflops" in message
    assert report.summary_line() == "train_gflops=1.063 max_gflops=1 params=4997194 budget=5000000 feasible=false"
    assert param_report(compose_cfg(["model=final", "budget.max_gflops=1.1"])).feasible
    both = param_report(compose_cfg(["model=resnet18", "budget.max_gflops=1"])).over_budget_message()
    assert both.startswith("model has 11,172,170 parameters") and "(budget.max_gflops=1) by" in both


def test_no_flops_budget_by_default_and_bad_values_are_named():
    report = param_report(compose_cfg(["model=final", "stem=conv3x3"]))
    assert report.max_gflops is None and report.feasible and report.train_gflops > 4.4
    assert report.summary_line() == "params=4994122 budget=5000000 feasible=true"
    with pytest.raises(ConfigError, match=r"^budget.max_gflops=-1: must be a number > 0, or null"):
        param_report(compose_cfg(["model=final", "budget.max_gflops=-1"]))


def test_gate_reports_flops_over_budget():
    from training.gate import check_budget, gflops_over_budget
    assert gflops_over_budget(compose_cfg(["model=final"])) is None
    over = compose_cfg(["model=final", "stem=conv3x3", "budget.max_gflops=2"])
    amount, measured = gflops_over_budget(over)  # the sweeper's constraint: (amount over, measured value)
    assert amount == pytest.approx(3 * 1_466_836_992 / 1e9 - 2) and measured == pytest.approx(4.4005, abs=1e-4)
    with pytest.raises(BudgetError, match=r"over the FLOPs budget \(budget.max_gflops=2\) by 2.401"):
        check_budget(over)


def test_table_has_a_flops_column_and_keeps_the_summary_line_last():
    report = param_report(compose_cfg(["model=final"]))
    lines = report.table().splitlines()
    assert lines[0].split() == ["module", "params", "share", "GFLOP", "share"]
    assert lines[3].split() == ["layer2", "(5", "blocks)", "1,411,584", "28.2%", "0.541", "50.9%"]
    assert [line for line in lines if line.startswith("total")][0].split() == ["total", "4,997,194", "1.063"]


# --- model options: zero_init_residual, bn_momentum ---------------------------------------------------
def batchnorms(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_zero_init_residual_starts_every_block_as_its_shortcut():
    model = build_model(compose_cfg(["model=tiny", "model.zero_init_residual=true", "model.layers.layer3.blocks=2"]))
    blocks = [block for layer in model.layers.values() for block in layer]
    for block in blocks:
        last, *others = reversed(batchnorms(block.body))
        assert torch.count_nonzero(last.weight) == 0 and all(torch.all(bn.weight == 1) for bn in others)
    identity = model.layers["layer3"][1].eval()  # a block with an identity shortcut
    x = torch.randn(2, 128, 8, 8)
    assert torch.equal(identity(x), torch.relu(x))
    default = build_model(compose_cfg(["model=tiny"]))
    assert all(torch.all(bn.weight == 1) for bn in batchnorms(default))
    assert param_report(compose_cfg(["model=tiny", "model.zero_init_residual=true"])).total == 135_370


def test_bn_momentum_reaches_every_batchnorm():
    model = build_model(compose_cfg(["model=final", "model.bn_momentum=0.01"]), device="meta")
    assert len(batchnorms(model)) == 1 + 2 * 8 + 3 * 31 and {bn.momentum for bn in batchnorms(model)} == {0.01}
    assert {bn.momentum for bn in batchnorms(build_model(compose_cfg(["model=tiny"]), device="meta"))} == {0.1}


@pytest.mark.parametrize("override, message", [
    ("model.bn_momentum=0", r"^model.bn_momentum=0: must be a number in \(0, 1\]"),
    ("model.bn_momentum=1.5", r"^model.bn_momentum=1.5: must be a number in \(0, 1\]"),
    ("model.zero_init_residual=maybe", r"^model.zero_init_residual=maybe: use one of true, false"),
    ("model.depth_mult=abc", r"^model.depth_mult=abc: must be a number > 0"),
    ("model.width_mult=0", r"^model.width_mult=0: must be a number > 0"),
    ("model.num_classes=0", r"^model.num_classes=0: must be an integer >= 1"),
])
def test_bad_model_options_are_one_line(override, message):
    with pytest.raises(ModelConfigError, match=message):
        param_report(compose_cfg(["model=tiny", override]))
