"""The paper's flexible ResNet: a stem, an ordered list of residual layers, a linear head.

The model, its parameter count, its FLOPs and its shape check all come from the same specs: the stem
and the head are stated here once as ops (models/ops.py), the blocks by their classes
(models/blocks.py), and `layout` is the one place that says how blocks chain (channels flow on; stride
2 on the first block of every layer after the first). Rules that reproduce the paper's counts
(4,997,194 for the final model): every conv has bias=False and is followed by BatchNorm, stem included.
"""
from torch import nn

from models import ops
from models.blocks import BlockSpec, block_class
from models.specs import ModelSpec


def stem_ops(spec: ModelSpec):
    """conv k x k (stride s, padding p) -> BN -> ReLU [-> 3x3 max-pool stride 2]."""
    stem = spec.stem
    layers = (ops.Conv(spec.in_channels, stem.channels, stem.kernel_size, stem.stride, stem.padding),
              ops.BatchNorm(stem.channels, spec.bn_momentum), ops.ReLU())
    return layers + ((ops.Pool("max", 3, 2, 1),) if stem.maxpool else ())


def head_ops(spec: ModelSpec, c_in):
    """Global average pool -> flatten -> linear to the classes."""
    return ops.GlobalAvgPool(), ops.Flatten(), ops.Linear(c_in, spec.num_classes)


def layout(spec: ModelSpec):
    """Every residual layer with its blocks: ((layer spec, ((block class, BlockSpec), ...)), ...).

    Each block class checks its specs here, so no spec it cannot build reaches a count or a module."""
    result, c_in = [], spec.stem.channels
    for position, layer in enumerate(spec.layers):
        where = f"model.layers.{layer.name}"
        cls = block_class(layer.block, f"{where}.block")
        shared = (layer.kernel_size, layer.dropout, spec.k2_design, spec.reduction, spec.bn_momentum)
        first = BlockSpec(c_in, layer.channels, 2 if position > 0 else 1, *shared)
        rest = BlockSpec(layer.channels, layer.channels, 1, *shared)  # every later block of the layer is alike
        cls.check(first, where)
        if layer.blocks > 1:
            cls.check(rest, where)
        result.append((layer, ((cls, first),) + ((cls, rest),) * (layer.blocks - 1)))
        c_in = layer.channels
    return tuple(result)


class ResNet(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.stem = nn.Sequential(*ops.build(stem_ops(spec)))
        self.layers = nn.ModuleDict()
        c_in = spec.stem.channels
        for layer, blocks in layout(spec):
            self.layers[layer.name] = nn.Sequential(*(cls(block) for cls, block in blocks))
            c_in = layer.channels
        self.head = nn.Sequential(*ops.build(head_ops(spec, c_in)))
        if spec.zero_init_residual:  # each residual branch starts at zero: every block begins as its shortcut
            for layer in self.layers.values():
                for block in layer:
                    nn.init.zeros_(block.last_bn().weight)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers.values():
            x = layer(x)
        return self.head(x)
