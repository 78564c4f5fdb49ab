"""The layers a model is made of, as frozen specs that know their own cost.

Each op states its parameter count, its forward FLOPs per image at a given input size and its output
size, and builds its torch module. Blocks, the stem and the head are tuples of these ops, so the
parameter count, the FLOPs, the shape check and the model all come from one description.

Feature maps are square: a size is the side in pixels. FLOPs are multiply-adds x 2 of the
convolutions and the linear layer (its bias add not counted), exactly what
torch.utils.flop_counter.FlopCounterMode counts (tests/test_models.py compares the two). BatchNorm,
ReLU, pooling, dropout and the residual add are not counted: one or two operations per activation,
against 2 x c_in x k x k (128 to 4,608 for model=final) per conv output.
"""
from dataclasses import dataclass

from torch import nn


def window_out(size, kernel, stride, padding):
    """Spatial size after a sliding window (conv or pooling), by the usual floor formula."""
    return (size + 2 * padding - kernel) // stride + 1


class Op:
    """Defaults for an op without weights that keeps the size and is not counted as FLOPs."""
    __slots__ = ()

    def params(self):
        return 0

    def flops(self, size):
        return 0

    def out_size(self, size):
        return size

    def module(self):
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Conv(Op):
    """k x k convolution without bias (every conv here is followed by BatchNorm or is a shortcut)."""
    c_in: int
    c_out: int
    kernel: int
    stride: int = 1
    padding: int = 0

    def params(self):
        return self.c_in * self.c_out * self.kernel * self.kernel

    def out_size(self, size):
        return window_out(size, self.kernel, self.stride, self.padding)

    def flops(self, size):
        out = self.out_size(size)
        return 2 * self.params() * out * out if out > 0 else 0

    def module(self):
        return nn.Conv2d(self.c_in, self.c_out, self.kernel, self.stride, self.padding, bias=False)


@dataclass(frozen=True, slots=True)
class BatchNorm(Op):
    channels: int
    momentum: float = 0.1

    def params(self):
        return 2 * self.channels  # weight and bias; the running statistics are buffers

    def module(self):
        return nn.BatchNorm2d(self.channels, momentum=self.momentum)


@dataclass(frozen=True, slots=True)
class ReLU(Op):
    def module(self):
        return nn.ReLU(inplace=True)


@dataclass(frozen=True, slots=True)
class Dropout(Op):
    p: float

    def module(self):
        return nn.Dropout(self.p)


@dataclass(frozen=True, slots=True)
class Pool(Op):
    """Max or average pooling over a k x k window."""
    kind: str  # "max" | "avg"
    kernel: int
    stride: int
    padding: int = 0

    def out_size(self, size):
        return window_out(size, self.kernel, self.stride, self.padding)

    def module(self):
        pool = nn.MaxPool2d if self.kind == "max" else nn.AvgPool2d
        return pool(self.kernel, stride=self.stride, padding=self.padding)


@dataclass(frozen=True, slots=True)
class GlobalAvgPool(Op):
    """Average over the whole feature map: (N, C, H, W) -> (N, C, 1, 1)."""

    def out_size(self, size):
        return 1

    def module(self):
        return nn.AdaptiveAvgPool2d(1)


@dataclass(frozen=True, slots=True)
class Flatten(Op):
    def module(self):
        return nn.Flatten()


@dataclass(frozen=True, slots=True)
class Linear(Op):
    c_in: int
    c_out: int

    def params(self):
        return self.c_in * self.c_out + self.c_out

    def flops(self, size):
        return 2 * self.c_in * self.c_out

    def module(self):
        return nn.Linear(self.c_in, self.c_out)


@dataclass(frozen=True, slots=True)
class Cost:
    params: int
    flops: int  # forward, per image
    size: int  # side of the output feature map


def trace(ops, size) -> Cost:
    """Parameters, forward FLOPs and output size of `ops` applied in order to a size x size input."""
    params = flops = 0
    for op in ops:
        params += op.params()
        flops += op.flops(size)
        size = op.out_size(size)
    return Cost(params, flops, size)


def build(ops):
    """The torch modules of `ops`, in order."""
    return [op.module() for op in ops]
