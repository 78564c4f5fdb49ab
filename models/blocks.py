"""Residual block types, registered by name: each is one class that states its layers once.

A block class lists its body (and, if not the usual one, its shortcut) as ops (models/ops.py) from a
frozen BlockSpec; from that one list it builds its modules and states its parameter count, forward
FLOPs and output size, and checks that the shortcut matches the body. Adding a block type:

    @register_block("wide")
    class WideBlock(ResidualBlock):
        @classmethod
        def body_ops(cls, spec):
            return (ops.Conv(spec.c_in, 2 * spec.c_out, 3, spec.stride, 1), ...)

in this module (or one that models/__init__.py imports, so it is registered before any config is read),
then `model.layers.<layer>.block=wide`. Rules shared by every block (they reproduce the paper's
counts): convs have no bias and are followed by BatchNorm; the shortcut is identity when shapes match,
else a plain strided 1x1 conv without BatchNorm; out = ReLU(body(x) + shortcut(x)).
"""
from dataclasses import dataclass

import torch
from torch import nn

from errors import ModelConfigError
from models import ops

BLOCKS: dict[str, type["ResidualBlock"]] = {}


def register_block(name):
    """Class decorator: make a ResidualBlock subclass available as `model.layers.<layer>.block=<name>`."""
    def register(cls):
        if name in BLOCKS:
            raise ValueError(f"block type '{name}' is already registered ({BLOCKS[name].__qualname__})")
        cls.name = name
        BLOCKS[name] = cls
        return cls
    return register


def block_class(name, where):
    """The registered class for a block name; `where` is the config key, for the error. A config's names are
    checked at entry (training/schema.py, the same line); this refuses a spec made by hand with one that is not."""
    try:
        return BLOCKS[name]
    except KeyError:
        raise ModelConfigError(f"{where}={name}: use one of {', '.join(BLOCKS)}") from None


@dataclass(frozen=True, slots=True)
class BlockSpec:
    """Everything one block needs: its own shape plus the `blocks` group's shared choices."""
    c_in: int
    c_out: int
    stride: int
    kernel_size: int
    dropout: float
    k2_design: str = "pad"  # kernel-2 convs: "pad" | "avgpool" (see spatial_conv)
    reduction: int = 4  # bottleneck middle width = c_out // reduction
    bn_momentum: float = 0.1


def spatial_conv(c_in, c_out, kernel_size, stride, k2_design, second, momentum):
    """A k x k conv + BN that keeps resolution (divided by stride).

    Kernel 2 cannot be padded symmetrically, so the paper has two designs:
    `pad`: first conv k2 p1 (+1 pixel), second conv k2 p0 (-1 pixel);
    `avgpool`: every k2 p1 conv is followed by AvgPool(2, stride 1) (-1 pixel).
    """
    bn = ops.BatchNorm(c_out, momentum)
    if kernel_size != 2:
        return ops.Conv(c_in, c_out, kernel_size, stride, kernel_size // 2), bn
    if k2_design == "pad":
        return ops.Conv(c_in, c_out, 2, stride, 0 if second else 1), bn
    return ops.Conv(c_in, c_out, 2, stride, 1), ops.Pool("avg", 2, 1), bn


class Shortcut(nn.Module):
    """Identity (proj None), one module (the 1x1 projection) or a Sequential of several."""

    def __init__(self, shortcut_ops):
        super().__init__()
        built = ops.build(shortcut_ops)
        self.proj = None if not built else built[0] if len(built) == 1 else nn.Sequential(*built)

    def forward(self, x):
        return x if self.proj is None else self.proj(x)


class ResidualBlock(nn.Module):
    """out = ReLU(body(x) + shortcut(x)). A subclass states body_ops; the rest follows from them."""
    name = None  # set by register_block

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.body = nn.Sequential(*ops.build(self.body_ops(spec)))
        self.shortcut = Shortcut(self.shortcut_ops(spec))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))

    # --- what a block type states ------------------------------------------------------------------
    @classmethod
    def body_ops(cls, spec: BlockSpec) -> tuple:
        raise NotImplementedError

    @classmethod
    def shortcut_ops(cls, spec: BlockSpec) -> tuple:
        if spec.c_in == spec.c_out and spec.stride == 1:
            return ()
        return (ops.Conv(spec.c_in, spec.c_out, 1, spec.stride),)

    @classmethod
    def check(cls, spec: BlockSpec, where):
        """Refuse a spec this block type cannot build, with a one-line ModelConfigError naming `where`
        (the layer's config key). Runs before anything is counted or built.

        Not a config rule (training/schema.py has those): it is one block type's own limit, on the spec's
        values after model.width_mult and model.depth_mult have scaled them, so only the class knows it."""

    @classmethod
    def shape_hint(cls, spec: BlockSpec):
        """What to change when the shortcut cannot match the body."""
        if spec.kernel_size == 2:
            return " Kernel-2 blocks need even feature maps at each stride-2 block: use stem=conv3x3."
        return " Use fewer stride-2 layers or a stem that downsamples less (stem=conv3x3)."

    def last_bn(self) -> nn.BatchNorm2d:
        """The residual branch's last BatchNorm (model.zero_init_residual zeroes its weight)."""
        return [m for m in self.body if isinstance(m, nn.BatchNorm2d)][-1]

    # --- derived from the ops --------------------------------------------------------------------
    @classmethod
    def cost(cls, spec: BlockSpec, size, where="the block", came_from="the layers before it") -> ops.Cost:
        """Parameters, forward FLOPs and output size on a size x size input, from the ops alone.

        A body and shortcut that give different sizes cannot be added: that is a ModelConfigError
        naming `where` (the layer and block index) and what to change."""
        body, shortcut = ops.trace(cls.body_ops(spec), size), ops.trace(cls.shortcut_ops(spec), size)
        if body.size != shortcut.size or body.size <= 0:
            raise ModelConfigError(
                f"{where} cannot take the {size}x{size} feature map that {came_from} produce (body gives "
                f"{body.size}x{body.size}, shortcut {shortcut.size}x{shortcut.size}).{cls.shape_hint(spec)}")
        return ops.Cost(body.params + shortcut.params, body.flops + shortcut.flops, body.size)


@register_block("basic")
class BasicBlock(ResidualBlock):
    """conv n (stride s) -> BN -> ReLU -> Dropout -> conv n -> BN, + shortcut, ReLU."""

    @classmethod
    def body_ops(cls, spec):
        first = spatial_conv(spec.c_in, spec.c_out, spec.kernel_size, spec.stride, spec.k2_design, False,
                             spec.bn_momentum)
        second = spatial_conv(spec.c_out, spec.c_out, spec.kernel_size, 1, spec.k2_design, True, spec.bn_momentum)
        return (*first, ops.ReLU(), ops.Dropout(spec.dropout), *second)


@register_block("bottleneck")
class BottleneckBlock(ResidualBlock):
    """1x1 -> C/k, n x n (stride s) -> C/k with Dropout, 1x1 -> C; + shortcut, ReLU.

    The middle width is the block's *output* width / k (blocks.bottleneck_reduction): no 4x expansion."""

    @classmethod
    def check(cls, spec, where):
        if spec.c_out % spec.reduction != 0:
            raise ModelConfigError(f"{where}: bottleneck channels {spec.c_out} are not divisible by "
                                   f"blocks.bottleneck_reduction={spec.reduction}: pick a multiple of {spec.reduction}")
        if spec.kernel_size == 2 and spec.k2_design == "pad":
            raise ModelConfigError(f"{where}: a kernel-2 bottleneck has one spatial conv, so the 'pad' design "
                                   f"(conv1 p1, conv2 p0) cannot restore its size: use blocks=k2_avgpool")

    @classmethod
    def body_ops(cls, spec):
        mid, momentum = spec.c_out // spec.reduction, spec.bn_momentum
        return (ops.Conv(spec.c_in, mid, 1), ops.BatchNorm(mid, momentum), ops.ReLU(),
                *spatial_conv(mid, mid, spec.kernel_size, spec.stride, spec.k2_design, False, momentum),
                ops.ReLU(), ops.Dropout(spec.dropout),
                ops.Conv(mid, spec.c_out, 1), ops.BatchNorm(spec.c_out, momentum))
