"""Turn the Hydra config into a ResNet, and count it before anything expensive happens."""
from dataclasses import dataclass

import torch

from models.resnet import LayerSpec, ModelConfigError, ResNet, StemSpec

BLOCK_TYPES = ("basic", "bottleneck")
K2_DESIGNS = ("pad", "avgpool")


def _int(value, what):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelConfigError(f"{what} must be an integer, got {value!r}")
    return value


def scaled_channels(channels, width_mult, multiple=8):
    """Width multiplier, rounded to a multiple of 8 so bottleneck reductions stay exact."""
    if width_mult == 1.0:
        return channels
    return max(multiple, int(round(channels * width_mult / multiple)) * multiple)


def stem_spec(stem_cfg) -> StemSpec:
    spec = StemSpec(
        name=str(stem_cfg.name),
        channels=_int(stem_cfg.channels, "stem.channels"),
        kernel_size=_int(stem_cfg.kernel_size, "stem.kernel_size"),
        stride=_int(stem_cfg.stride, "stem.stride"),
        padding=_int(stem_cfg.padding, "stem.padding"),
        maxpool=bool(stem_cfg.maxpool),
    )
    if spec.channels <= 0 or spec.kernel_size <= 0 or spec.stride <= 0 or spec.padding < 0:
        raise ModelConfigError(f"stem '{spec.name}': channels, kernel_size and stride must be > 0 "
                               f"and padding >= 0, got {spec}")
    return spec


def layer_specs(model_cfg, blocks_cfg) -> list[LayerSpec]:
    layers_cfg = model_cfg.get("layers")
    if not layers_cfg:
        raise ModelConfigError("model.layers is empty: give at least one residual layer, e.g. model=final")
    width_mult = float(model_cfg.get("width_mult", 1.0))
    depth_mult = float(model_cfg.get("depth_mult", 1.0))
    if width_mult <= 0 or depth_mult <= 0:
        raise ModelConfigError(f"model.width_mult and model.depth_mult must be > 0, got {width_mult} and {depth_mult}")
    reduction = _int(blocks_cfg.bottleneck_reduction, "blocks.bottleneck_reduction")
    specs = []
    for name, layer in layers_cfg.items():
        where = f"model.layers.{name}"
        block = str(layer.block)
        if block not in BLOCK_TYPES:
            raise ModelConfigError(f"{where}.block='{block}' is unknown: use one of {', '.join(BLOCK_TYPES)}")
        blocks = _int(layer.blocks, f"{where}.blocks")
        channels = _int(layer.channels, f"{where}.channels")
        if blocks <= 0:
            raise ModelConfigError(f"{where}.blocks={blocks}: a layer needs at least 1 block "
                                   f"(remove the layer with ~{where} instead)")
        if channels <= 0:
            raise ModelConfigError(f"{where}.channels={channels}: channels must be a positive integer")
        channels = scaled_channels(channels, width_mult)
        blocks = max(1, round(blocks * depth_mult))
        dropout = float(layer.dropout if layer.dropout is not None else 0.0)
        if not 0.0 <= dropout < 1.0:
            raise ModelConfigError(f"{where}.dropout={dropout}: dropout must be in [0, 1)")
        kernel = _int(layer.get("kernel_size", 3), f"{where}.kernel_size")
        if kernel != 2 and (kernel < 1 or kernel % 2 == 0):
            raise ModelConfigError(f"{where}.kernel_size={kernel}: use an odd kernel (1, 3, 5, ...) or 2")
        if block == "bottleneck" and channels % reduction != 0:
            raise ModelConfigError(f"{where}: bottleneck channels {channels} are not divisible by "
                                   f"blocks.bottleneck_reduction={reduction}: pick a multiple of {reduction}")
        if block == "bottleneck" and kernel == 2 and str(blocks_cfg.k2_design) == "pad":
            raise ModelConfigError(f"{where}: a kernel-2 bottleneck has one spatial conv, so the 'pad' design "
                                   f"(conv1 p1, conv2 p0) cannot restore its size: use blocks=k2_avgpool")
        specs.append(LayerSpec(str(name), block, blocks, channels, dropout, kernel))
    return specs


def block_choices(blocks_cfg):
    """(k2_design, bottleneck_reduction) from the blocks group, checked."""
    k2_design = str(blocks_cfg.k2_design)
    if k2_design not in K2_DESIGNS:
        raise ModelConfigError(f"blocks.k2_design='{k2_design}' is unknown: use one of {', '.join(K2_DESIGNS)}")
    reduction = _int(blocks_cfg.bottleneck_reduction, "blocks.bottleneck_reduction")
    if reduction <= 0:
        raise ModelConfigError(f"blocks.bottleneck_reduction={reduction} must be a positive integer")
    return k2_design, reduction


def build_model(cfg, device=None) -> ResNet:
    """Build the model the config describes; device='meta' allocates no weights."""
    k2_design, reduction = block_choices(cfg.blocks)
    stem, layers = stem_spec(cfg.stem), layer_specs(cfg.model, cfg.blocks)
    with torch.device(device or "cpu"):
        return ResNet(stem, layers, num_classes=_int(cfg.model.num_classes, "model.num_classes"),
                      bottleneck_reduction=reduction, k2_design=k2_design)


def _out_size(module, size):
    """Spatial size after a Conv2d / pooling module, by the usual floor formula."""
    k, s, p = (getattr(module, name) for name in ("kernel_size", "stride", "padding"))
    k, s, p = (v[0] if isinstance(v, tuple) else v for v in (k, s, p))
    return (size + 2 * p - k) // s + 1


def _walk(modules, size):
    for module in modules:
        if isinstance(module, (torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
            size = _out_size(module, size)
    return size


def check_shapes(model: ResNet, stem_name: str, image_size=32):
    """Follow the feature-map size through every block, so a broken shortcut is named before training.

    Pure arithmetic (a meta-tensor forward pass costs ~0.5 s for the final model).
    """
    size = _walk(model.stem.modules(), image_size)
    for layer_name, layer in model.layers.items():
        for index, block in enumerate(layer):
            body = _walk(block.body.modules(), size)
            shortcut = size if block.shortcut.proj is None else _out_size(block.shortcut.proj, size)
            if body != shortcut or body <= 0:
                kernel2 = any(getattr(m, "kernel_size", None) == (2, 2) for m in block.body.modules())
                raise ModelConfigError(_shape_message(layer_name, index, size, stem_name, body, shortcut, kernel2))
            size = body
    return size


@dataclass
class ParamReport:
    rows: list  # (name, params)
    total: int
    budget: int
    note: str = ""  # model.budget_note: why a preset is over budget on purpose, appended to the error

    @property
    def feasible(self) -> bool:
        return self.total <= self.budget

    def largest(self, k=3):
        return sorted(self.rows, key=lambda row: -row[1])[:k]

    def table(self) -> str:
        width = max(len(name) for name, _ in self.rows)
        lines = [f"{'module':<{width}}  {'params':>10}  {'share':>6}"]
        for name, count in self.rows:
            lines.append(f"{name:<{width}}  {count:>10,}  {100 * count / max(self.total, 1):5.1f}%")
        lines.append(f"{'total':<{width}}  {self.total:>10,}")
        return "\n".join(lines)

    def summary_line(self) -> str:
        return f"params={self.total} budget={self.budget} feasible={str(self.feasible).lower()}"

    def over_budget_message(self) -> str:
        biggest = ", ".join(f"{name} {count:,}" for name, count in self.largest())
        message = (f"model has {self.total:,} parameters, over the budget of {self.budget:,} by "
                   f"{self.total - self.budget:,} (largest: {biggest}). Shrink those layers "
                   f"(fewer blocks or channels) or raise budget.max_params.")
        return f"{message} {self.note}" if self.note else message


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# Counting by arithmetic on the specs, without building modules: constructing the ~250 modules of
# the final model costs ~60 ms even on the meta device (each runs its weight init). The rules
# mirror models/resnet.py; tests/test_bench_smoke.py checks them against built models.
def _conv(c_in, c_out, kernel):
    return c_in * c_out * kernel * kernel


def _spatial_windows(kernel, stride, k2_design, second):
    """(kernel, stride, padding) of every size-changing window in resnet.spatial_conv."""
    if kernel != 2:
        return [(kernel, stride, kernel // 2)]
    if k2_design == "pad":
        return [(2, stride, 0 if second else 1)]
    return [(2, stride, 1), (2, 1, 0)]  # k2 p1 conv, then AvgPool(2, stride 1)


def _block_plan(block, c_in, c_out, stride, kernel, k2_design, reduction):
    """(parameters, body windows, has a projection shortcut) of one residual block."""
    projection = c_in != c_out or stride != 1
    params = _conv(c_in, c_out, 1) if projection else 0
    if block == "basic":
        params += _conv(c_in, c_out, kernel) + 2 * c_out + _conv(c_out, c_out, kernel) + 2 * c_out
        windows = (_spatial_windows(kernel, stride, k2_design, False)
                   + _spatial_windows(kernel, 1, k2_design, True))
    else:
        mid = c_out // reduction
        params += _conv(c_in, mid, 1) + 2 * mid + _conv(mid, mid, kernel) + 2 * mid + _conv(mid, c_out, 1) + 2 * c_out
        windows = _spatial_windows(kernel, stride, k2_design, False)
    return params, windows, projection


def _window_out(size, windows):
    for k, s, p in windows:
        size = (size + 2 * p - k) // s + 1
    return size


def planned_report(stem: StemSpec, layers, num_classes, reduction, k2_design, budget, image_size=32):
    """param_report's table and shape check from the specs alone (microseconds, no tensors)."""
    size = _window_out(image_size, [(stem.kernel_size, stem.stride, stem.padding)]
                       + ([(3, 2, 1)] if stem.maxpool else []))
    rows = [("stem", _conv(3, stem.channels, stem.kernel_size) + 2 * stem.channels)]
    c_in = stem.channels
    for index, layer in enumerate(layers):
        total = 0
        for b in range(layer.blocks):
            stride = 2 if (index > 0 and b == 0) else 1
            params, windows, projection = _block_plan(layer.block, c_in, layer.channels, stride,
                                                      layer.kernel_size, k2_design, reduction)
            body = _window_out(size, windows)
            shortcut = (size - 1) // stride + 1 if projection else size
            if body != shortcut or body <= 0:
                raise ModelConfigError(_shape_message(layer.name, b, size, stem.name, body, shortcut,
                                                      kernel2=layer.kernel_size == 2))
            total, size, c_in = total + params, body, layer.channels
        rows.append((f"{layer.name} ({layer.blocks} blocks)", total))
    rows.append(("head", c_in * num_classes + num_classes))
    return ParamReport(rows, sum(count for _, count in rows), int(budget))


def _shape_message(layer_name, index, size, stem_name, body, shortcut, kernel2):
    hint = (" Kernel-2 blocks need even feature maps at each stride-2 block: use stem=conv3x3."
            if kernel2 else " Use fewer stride-2 layers or a stem that downsamples less (stem=conv3x3).")
    return (f"model.layers.{layer_name} block {index} cannot take the {size}x{size} feature map that "
            f"stem '{stem_name}' and the layers before it produce (body gives {body}x{body}, "
            f"shortcut {shortcut}x{shortcut}).{hint}")


def param_report(cfg) -> ParamReport:
    """Count parameters and check shapes from the config alone: no weights, well under a millisecond.

    The same validation as build_model runs first, so a bad config fails with the same message.
    """
    k2_design, reduction = block_choices(cfg.blocks)
    report = planned_report(stem_spec(cfg.stem), layer_specs(cfg.model, cfg.blocks),
                            _int(cfg.model.num_classes, "model.num_classes"), reduction, k2_design,
                            cfg.budget.max_params)
    report.note = budget_note(cfg)
    return report


def budget_note(cfg) -> str:
    """model.budget_note (optional): why a preset is over budget on purpose, one line."""
    return " ".join(str(cfg.model.get("budget_note") or "").split())


def module_report(cfg) -> ParamReport:
    """param_report by building the model on the meta device and counting its parameters (slow, exact)."""
    model = build_model(cfg, device="meta")
    check_shapes(model, str(cfg.stem.name))
    rows = [("stem", count_params(model.stem))]
    rows += [(f"{name} ({len(layer)} blocks)", count_params(layer)) for name, layer in model.layers.items()]
    rows.append(("head", count_params(model.head)))
    return ParamReport(rows, sum(count for _, count in rows), int(cfg.budget.max_params), budget_note(cfg))
