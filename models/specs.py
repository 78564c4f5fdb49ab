"""The frozen specs between the Hydra config and the modules, read and checked from the config.

Every value a model is made from is checked here (or by its block class's `check`), with one line
naming the key, the value and what is allowed; the modules and the counts only ever see specs.
"""
from dataclasses import dataclass

from errors import ModelConfigError
from models.blocks import block_class

K2_DESIGNS = ("pad", "avgpool")


@dataclass(frozen=True, slots=True)
class StemSpec:
    name: str
    channels: int
    kernel_size: int
    stride: int
    padding: int
    maxpool: bool


@dataclass(frozen=True, slots=True)
class LayerSpec:
    name: str
    block: str  # a registered block type (models/blocks.py: BLOCKS)
    blocks: int
    channels: int
    dropout: float
    kernel_size: int


@dataclass(frozen=True, slots=True)
class ModelSpec:
    stem: StemSpec
    layers: tuple  # of LayerSpec, in order
    num_classes: int = 10
    image_size: int = 32
    in_channels: int = 3
    k2_design: str = "pad"
    reduction: int = 4
    bn_momentum: float = 0.1
    zero_init_residual: bool = False


def _int(value, what):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelConfigError(f"{what} must be an integer, got {value!r}")
    return value


def _positive_number(value, key):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ModelConfigError(f"{key}={value!r}: use a number > 0")
    return float(value)


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


def layer_specs(model_cfg) -> tuple:
    layers_cfg = model_cfg.get("layers")
    if not layers_cfg:
        raise ModelConfigError("model.layers is empty: give at least one residual layer, e.g. model=final")
    width_mult = _positive_number(model_cfg.get("width_mult", 1.0), "model.width_mult")
    depth_mult = _positive_number(model_cfg.get("depth_mult", 1.0), "model.depth_mult")
    specs = []
    for name, layer in layers_cfg.items():
        where = f"model.layers.{name}"
        block = str(layer.block)
        block_class(block, f"{where}.block")
        blocks = _int(layer.blocks, f"{where}.blocks")
        channels = _int(layer.channels, f"{where}.channels")
        if blocks <= 0:
            raise ModelConfigError(f"{where}.blocks={blocks}: a layer needs at least 1 block "
                                   f"(remove the layer with ~{where} instead)")
        if channels <= 0:
            raise ModelConfigError(f"{where}.channels={channels}: channels must be a positive integer")
        dropout = float(layer.dropout if layer.dropout is not None else 0.0)
        if not 0.0 <= dropout < 1.0:
            raise ModelConfigError(f"{where}.dropout={dropout}: dropout must be in [0, 1)")
        kernel = _int(layer.get("kernel_size", 3), f"{where}.kernel_size")
        if kernel != 2 and (kernel < 1 or kernel % 2 == 0):
            raise ModelConfigError(f"{where}.kernel_size={kernel}: use an odd kernel (1, 3, 5, ...) or 2")
        specs.append(LayerSpec(str(name), block, max(1, round(blocks * depth_mult)),
                               scaled_channels(channels, width_mult), dropout, kernel))
    return tuple(specs)


def block_choices(blocks_cfg):
    """(k2_design, bottleneck_reduction) from the blocks group, checked."""
    k2_design = str(blocks_cfg.k2_design)
    if k2_design not in K2_DESIGNS:
        raise ModelConfigError(f"blocks.k2_design='{k2_design}' is unknown: use one of {', '.join(K2_DESIGNS)}")
    reduction = _int(blocks_cfg.bottleneck_reduction, "blocks.bottleneck_reduction")
    if reduction <= 0:
        raise ModelConfigError(f"blocks.bottleneck_reduction={reduction} must be a positive integer")
    return k2_design, reduction


def model_options(model_cfg):
    """(bn_momentum, zero_init_residual): plain model options, off (PyTorch's defaults) unless set."""
    momentum = model_cfg.get("bn_momentum", 0.1)
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
        raise ModelConfigError(f"model.bn_momentum={momentum!r}: use a number in (0, 1] (PyTorch's default: 0.1)")
    zero_init = model_cfg.get("zero_init_residual", False)
    if not isinstance(zero_init, bool):
        raise ModelConfigError(f"model.zero_init_residual={zero_init!r}: use true or false")
    return float(momentum), zero_init


def model_spec(cfg) -> ModelSpec:
    """The whole model's spec from a composed config; image size from data.image_size (default 32)."""
    k2_design, reduction = block_choices(cfg.blocks)
    num_classes = _int(cfg.model.num_classes, "model.num_classes")
    if num_classes <= 0:
        raise ModelConfigError(f"model.num_classes={num_classes}: use a positive integer (10 for CIFAR-10)")
    data = cfg.get("data") or {}
    image_size = data.get("image_size", 32)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ModelConfigError(f"data.image_size={image_size!r}: use a positive integer (32 for CIFAR)")
    momentum, zero_init = model_options(cfg.model)
    return ModelSpec(stem_spec(cfg.stem), layer_specs(cfg.model), num_classes, image_size,
                     k2_design=k2_design, reduction=reduction, bn_momentum=momentum, zero_init_residual=zero_init)
