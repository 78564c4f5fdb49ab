"""The paper's flexible ResNet: a stem, an ordered list of residual layers, a linear head.

Rules that reproduce the paper's parameter counts (4,997,194 for the final model):
every conv has bias=False and is followed by BatchNorm; bottlenecks reduce the block's
*output* width by `reduction` (no 4x expansion); the shortcut is identity when shapes
match, else a plain strided 1x1 conv without BatchNorm.
"""
from dataclasses import dataclass

import torch
from torch import nn

from errors import ModelConfigError  # noqa: F401 - re-exported by models


@dataclass(frozen=True)
class StemSpec:
    name: str
    channels: int
    kernel_size: int
    stride: int
    padding: int
    maxpool: bool


@dataclass(frozen=True)
class LayerSpec:
    name: str
    block: str  # "basic" | "bottleneck"
    blocks: int
    channels: int
    dropout: float
    kernel_size: int


def conv_bn(c_in, c_out, kernel_size, stride=1, padding=0):
    return [nn.Conv2d(c_in, c_out, kernel_size, stride, padding, bias=False), nn.BatchNorm2d(c_out)]


def spatial_conv(c_in, c_out, kernel_size, stride, k2_design, second):
    """A k x k conv + BN that keeps resolution (divided by stride).

    Kernel 2 cannot be padded symmetrically, so the paper has two designs:
    `pad`: first conv k2 p1 (+1 pixel), second conv k2 p0 (-1 pixel);
    `avgpool`: every k2 p1 conv is followed by AvgPool(2, stride 1) (-1 pixel).
    """
    if kernel_size != 2:
        return conv_bn(c_in, c_out, kernel_size, stride, kernel_size // 2)
    if k2_design == "pad":
        return conv_bn(c_in, c_out, 2, stride, 0 if second else 1)
    conv, bn = conv_bn(c_in, c_out, 2, stride, 1)
    return [conv, nn.AvgPool2d(2, stride=1), bn]


class Shortcut(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.proj = None if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        return x if self.proj is None else self.proj(x)


class BasicBlock(nn.Module):
    """conv n (stride s) -> BN -> ReLU -> Dropout -> conv n -> BN, + shortcut, ReLU."""

    def __init__(self, c_in, c_out, stride, kernel_size, dropout, k2_design):
        super().__init__()
        self.body = nn.Sequential(
            *spatial_conv(c_in, c_out, kernel_size, stride, k2_design, second=False),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            *spatial_conv(c_out, c_out, kernel_size, 1, k2_design, second=True),
        )
        self.shortcut = Shortcut(c_in, c_out, stride)

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class BottleneckBlock(nn.Module):
    """1x1 -> C/k, n x n (stride s) -> C/k with Dropout, 1x1 -> C; + shortcut, ReLU."""

    def __init__(self, c_in, c_out, stride, kernel_size, dropout, k2_design, reduction):
        super().__init__()
        mid = c_out // reduction
        self.body = nn.Sequential(
            *conv_bn(c_in, mid, 1),
            nn.ReLU(inplace=True),
            *spatial_conv(mid, mid, kernel_size, stride, k2_design, second=False),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            *conv_bn(mid, c_out, 1),
        )
        self.shortcut = Shortcut(c_in, c_out, stride)

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def make_stem(spec: StemSpec, in_channels=3):
    layers = [*conv_bn(in_channels, spec.channels, spec.kernel_size, spec.stride, spec.padding), nn.ReLU(inplace=True)]
    if spec.maxpool:
        layers.append(nn.MaxPool2d(3, stride=2, padding=1))
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    def __init__(self, stem: StemSpec, layers: list[LayerSpec], num_classes=10,
                 bottleneck_reduction=4, k2_design="pad"):
        super().__init__()
        self.stem = make_stem(stem)
        self.layers = nn.ModuleDict()
        c_in = stem.channels
        for index, layer in enumerate(layers):
            blocks = []
            for b in range(layer.blocks):
                stride = 2 if (index > 0 and b == 0) else 1
                if layer.block == "basic":
                    block = BasicBlock(c_in, layer.channels, stride, layer.kernel_size, layer.dropout, k2_design)
                else:
                    block = BottleneckBlock(c_in, layer.channels, stride, layer.kernel_size, layer.dropout,
                                            k2_design, bottleneck_reduction)
                blocks.append(block)
                c_in = layer.channels
            self.layers[layer.name] = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers.values():
            x = layer(x)
        return self.head(x)
