"""Batched augmentation on uint8 image tensors [N, 3, H, W], on whatever device they live on.

No per-image Python: every op draws its random numbers for the whole batch at once.
"""
import math

import torch
import torch.nn.functional as F
from torchvision.transforms import AutoAugmentPolicy, InterpolationMode
from torchvision.transforms import autoaugment as tv_autoaugment


def random_crop(x, padding, generator=None):
    """Zero-pad by `padding` and take a random HxW window per image (torchvision RandomCrop's)."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=x.device, generator=generator)
    rows = dy + torch.arange(h, device=x.device).view(1, h, 1)
    cols = dx + torch.arange(w, device=x.device).view(1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(x, generator=None):
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def random_rotation(x, degrees, generator=None):
    """Rotate each image by a uniform angle in [-degrees, degrees] (bilinear, zero fill)."""
    if degrees <= 0:
        return x
    n = x.shape[0]
    angle = (torch.rand(n, device=x.device, generator=generator) * 2 - 1) * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    rotated = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return rotated.round_().clamp_(0, 255).to(x.dtype)


def cutout(x, size, generator=None):
    """Zero a size x size square at a random centre of each image (DeVries & Taylor 2017)."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), device=x.device, generator=generator)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((ys - cy).abs() <= size // 2) & ((xs - cx).abs() <= size // 2)
    return x.masked_fill(inside.unsqueeze(1), 0)


class BatchedAutoAugment:
    """torchvision's AutoAugment (CIFAR10 policy) with a sub-policy drawn per image.

    Images that drew the same sub-policy, the same coin flips and the same sign go through
    torchvision's op together, so a batch costs at most 25 x 2 x 2 op calls instead of N.
    """

    def __init__(self, policy=AutoAugmentPolicy.CIFAR10, image_size=(32, 32)):
        reference = tv_autoaugment.AutoAugment(policy)
        self.policies = reference.policies
        self.space = reference._augmentation_space(10, image_size)

    def __call__(self, x, generator=None):
        n = x.shape[0]
        out = x.clone()
        choice = torch.randint(0, len(self.policies), (n,), device=x.device, generator=generator)
        coins = torch.rand(n, 2, device=x.device, generator=generator)
        signs = torch.rand(n, 2, device=x.device, generator=generator) < 0.5
        for index, subpolicy in enumerate(self.policies):
            members = (choice == index).nonzero().flatten()
            if members.numel() == 0:
                continue
            for step, (op_name, probability, magnitude_bin) in enumerate(subpolicy):
                chosen = members[coins[members, step] < probability]
                if chosen.numel() == 0:
                    continue
                magnitudes, signed = self.space[op_name]
                magnitude = float(magnitudes[magnitude_bin]) if magnitudes.ndim > 0 else 0.0
                groups = [(chosen[signs[chosen, step]], -magnitude), (chosen[~signs[chosen, step]], magnitude)] \
                    if signed else [(chosen, magnitude)]
                for group, value in groups:
                    if group.numel():
                        out[group] = tv_autoaugment._apply_op(out[group], op_name, value,
                                                              interpolation=InterpolationMode.NEAREST, fill=None)
        return out


class Augmentation:
    """The configured augmentation policy as one callable over uint8 batches."""

    def __init__(self, cfg):
        self.name = str(cfg.name)
        if self.name not in ("none", "simple", "autoaugment"):
            raise ValueError(f"augmentation.name='{self.name}' is unknown: use none, simple or autoaugment")
        self.crop_padding = int(cfg.get("crop_padding", 0))
        self.flip = bool(cfg.get("flip", False))
        self.rotation = float(cfg.get("rotation_degrees", 0))
        self.cutout = int(cfg.get("cutout", 0))
        self.autoaugment = BatchedAutoAugment() if self.name == "autoaugment" else None

    def __call__(self, x, generator=None):
        if self.autoaugment is not None:
            x = self.autoaugment(x, generator)
        if self.rotation:
            x = random_rotation(x, self.rotation, generator)
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, generator)
        if self.flip:
            x = random_flip(x, generator)
        if self.cutout:
            x = cutout(x, self.cutout, generator)
        return x
