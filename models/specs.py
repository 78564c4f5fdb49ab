"""The frozen specs between the Hydra config and the modules, converted from a checked config.

Every key's type and range, and the rules across keys that need only the config (model.num_layers against
model.layers), are training/schema.py's: `model_spec` takes the config through `training.schema.checked`
first (a config the gate already checked passes untouched), so a bad value is the same one line here as at
the entry, and this module only converts. What depends on the chain of blocks a spec describes (feature-map
sizes, a block type's own limits) is checked by the block classes as a spec is counted or built
(models/resnet.py: layout). The modules and the counts only ever see specs.
"""
from dataclasses import dataclass

from training.schema import MODEL_GROUPS, checked

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


def _or(value, default):
    """A checked config has every schema key, None where the YAML does not give it: the spec's default then."""
    return default if value is None else value


def scaled_channels(channels, width_mult, multiple=8):
    """Width multiplier, rounded to a multiple of 8 so bottleneck reductions stay exact."""
    if width_mult == 1.0:
        return channels
    return max(multiple, int(round(channels * width_mult / multiple)) * multiple)


def stem_spec(stem_cfg) -> StemSpec:
    return StemSpec(str(stem_cfg.name), stem_cfg.channels, stem_cfg.kernel_size, stem_cfg.stride,
                    stem_cfg.padding, bool(stem_cfg.maxpool))


def layer_specs(model_cfg) -> tuple:
    width_mult, depth_mult = float(_or(model_cfg.get("width_mult"), 1.0)), float(_or(model_cfg.get("depth_mult"), 1.0))
    return tuple(LayerSpec(str(name), str(layer.block), max(1, round(layer.blocks * depth_mult)),
                           scaled_channels(layer.channels, width_mult), float(_or(layer.get("dropout"), 0.0)),
                           _or(layer.get("kernel_size"), 3))
                 for name, layer in used_layers(model_cfg))


def used_layers(model_cfg):
    """(name, layer config) of the layers the model uses: the first model.num_layers of them (a search over the
    depth of the network, as model=family does), or all of them when the key is absent or null."""
    items = list(model_cfg.layers.items())
    num_layers = model_cfg.get("num_layers")
    return items if num_layers is None else items[:num_layers]


def model_spec(cfg) -> ModelSpec:
    """The whole model's spec from a composed config (checked first, see the module's docstring); the image
    size from data.image_size (default 32)."""
    cfg = checked(cfg, MODEL_GROUPS)
    data = cfg.get("data") or {}
    return ModelSpec(stem_spec(cfg.stem), layer_specs(cfg.model), cfg.model.num_classes,
                     _or(data.get("image_size"), 32), k2_design=str(_or(cfg.blocks.get("k2_design"), "pad")),
                     reduction=_or(cfg.blocks.get("bottleneck_reduction"), 4),
                     bn_momentum=float(_or(cfg.model.get("bn_momentum"), 0.1)),
                     zero_init_residual=bool(cfg.model.get("zero_init_residual")))
