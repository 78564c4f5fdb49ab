"""Batched augmentation on uint8 image tensors [N, 3, H, W], on whatever device they live on.

No per-image Python: every op draws its random numbers for the whole batch at once, and each
image carries its own parameters (angle, shift, flip, AutoAugment op and magnitude) as tensors.
The semantics are torchvision's (RandomRotation, RandomCrop with padding, RandomHorizontalFlip,
AutoAugment with the policy the dataset names, data.autoaugment_policy; nearest interpolation, zero
fill); tests/test_augment.py compares against torchvision op by op.
"""
import math

import torch
import torch.nn.functional as F

from errors import ConfigError


def warp(x, theta=None, shift=None, flip=None):
    """Resample each image with its own flip, integer shift and inverse affine map, in one gather.

    Output pixel (i, j) of image k is found by: mirroring j where flip[k]; moving by shift[k] =
    (dy, dx) into a zero border (RandomCrop with padding p is a shift in [-p, p]); then mapping
    through theta[k] [2, 3], torchvision's inverse affine matrix on pixel centres measured from the
    image centre, to the nearest source pixel (round half to even, as grid_sample does). Zero
    wherever a step leaves the image.
    """
    n, c, h, w = x.shape
    device = x.device
    # Coordinates stay separable, rows [n, h, 1] and cols [n, 1, w], until the affine map mixes
    # them: full-size [n, h, w] work is kept to a few passes (this is the hot loop).
    rows = torch.arange(h, device=device, dtype=torch.float32).view(1, h, 1).expand(n, h, 1)
    cols = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, w).expand(n, 1, w)
    if flip is not None:
        cols = torch.where(flip.view(n, 1, 1), w - 1 - cols, cols)
    if shift is not None:
        rows, cols = rows + shift[:, 0].view(n, 1, 1), cols + shift[:, 1].view(n, 1, 1)
    if theta is not None:
        # torchvision's float operations in its order, so that exact ties (a shear of 0.2 makes many)
        # round alike: the matrix rescaled to the normalised grid (theta / (size / 2)), the grid
        # summed as its batched matmul does, x = (u a + v b) + c, then grid_sample's CPU
        # unnormalisation (x + 1) * (size / 2) - 0.5 and round half to even. Summed as
        # (u a + c) + v b instead, shears of 0.2 (SVHN policy) picked the neighbour of 0.1% of pixels.
        # The extra elementwise passes cost the simple policy ~7% of its augmentation time (6.1 vs 5.7 ms per
        # 1,024 images, median of 60 paired rounds on the 2-core CPU), AutoAugment ~3%.
        t = (theta.float() / theta.new_tensor([0.5 * w, 0.5 * h], dtype=torch.float32).view(1, 2, 1))
        t = t.view(n, 2, 3, 1, 1)
        u, v = cols - (w - 1) / 2, rows - (h - 1) / 2
        # The crop's zero border, which the rotation would move: an output pixel cropped away gets a
        # source column far outside, which clamps onto the zero border below. Adding 0 elsewhere
        # leaves every float bit-equal to torchvision's.
        col_term, row_term = t[:, 0, 0] * u, t[:, 0, 1] * v
        if shift is not None:
            col_term = col_term + ((cols < 0) | (cols >= w)) * 1e6
            row_term = row_term + ((rows < 0) | (rows >= h)) * 1e6
        cols = (col_term + row_term).add_(t[:, 0, 2]).add_(1).mul_(w / 2).sub_(0.5).round_()
        rows = (t[:, 1, 0] * u + t[:, 1, 1] * v).add_(t[:, 1, 2]).add_(1).mul_(h / 2).sub_(0.5).round_()
    # Read from a copy with a one-pixel zero border; every outside coordinate clamps onto it.
    padded = F.pad(x, (1, 1, 1, 1)).view(n, c, (h + 2) * (w + 2))
    index = torch.add(cols.clamp(-1, w), rows.clamp(-1, h), alpha=w + 2).add_(w + 3).long()
    index = index.expand(n, h, w).reshape(n, 1, h * w)
    return padded.gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def rotation_matrix(degrees):
    """Inverse matrices [N, 2, 3] for counter-clockwise rotations about the centre (torchvision's F.rotate)."""
    angle = torch.deg2rad(degrees.float())
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)


def rotate(x, degrees):
    """Rotate image i counter-clockwise by degrees[i] about its centre (nearest, zero fill)."""
    return warp(x, theta=rotation_matrix(degrees))


def random_rotation(x, degrees, generator=None):
    """Rotate each image by a uniform angle in [-degrees, degrees] (nearest, zero fill)."""
    return random_geometry(x, degrees, 0, False, generator)


def random_crop(x, padding, generator=None):
    """Zero-pad by `padding` and take a random HxW window per image (torchvision RandomCrop's)."""
    return random_geometry(x, 0, padding, False, generator)


def random_flip(x, generator=None):
    """Mirror each image left-right with probability 1/2."""
    return random_geometry(x, 0, 0, True, generator)


def random_geometry(x, degrees, padding, flip, generator=None):
    """RandomRotation(degrees), then RandomCrop(padding), then RandomHorizontalFlip, as one gather.

    flip: True (each image mirrored with probability 1/2), False, or a bool tensor [N] saying which
    images to mirror (the alternating flip: data/loader.py decides it per image and epoch)."""
    given = torch.is_tensor(flip)
    if degrees <= 0 and padding <= 0 and not (given or flip):
        return x
    n, device = x.shape[0], x.device
    theta = shift = mirror = None
    if degrees > 0:
        theta = rotation_matrix((torch.rand(n, device=device, generator=generator) * 2 - 1) * degrees)
    if padding > 0:
        shift = torch.randint(-padding, padding + 1, (n, 2), device=device, generator=generator)
    if given:
        mirror = flip.to(device=device, dtype=torch.bool)
    elif flip:
        mirror = torch.rand(n, device=device, generator=generator) < 0.5
    return warp(x, theta, shift, mirror)


def cutout(x, size, generator=None):
    """Zero a size x size square at a random centre of each image (DeVries & Taylor 2017)."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), device=x.device, generator=generator)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    dy, dx = ys - cy + size // 2, xs - cx + size // 2  # in [0, size) inside the square
    inside = (dy >= 0) & (dy < size) & (dx >= 0) & (dx < size)
    return x.masked_fill(inside.unsqueeze(1), 0)


# AutoAugment's photometric ops with one magnitude per image (m: float [N]), matching the
# formulas of torchvision's tensor functional ops (uint8 in, uint8 out).
def _per_image(m):
    return m.view(-1, 1, 1, 1)


def _blend(x, other, factor):
    # Both weights rounded from float64, as torchvision's Python-float ratio is; keeps results bit-equal.
    factor = factor.double()
    return (factor.float() * x + (1.0 - factor).float() * other).clamp_(0, 255).to(torch.uint8)


def _gray(x):
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(torch.uint8).unsqueeze(1)


def _smoothed(x):
    """torchvision's sharpness 'degenerate' image: the kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 inside,
    border pixels kept. Summed in integers and rounded as (2 sum + 13) // 26: a sum of 13 pixel
    values over 13 is never half-way between two integers, so this is the exact rounding, and equal to
    torchvision's float convolution (whose error is far below the 1/26 margin). The grouped 3x3
    float convolution it replaces took 2-3x longer here (median of 30, 100 images)."""
    v = x.to(torch.int16)
    rows = v[..., :-2, :] + v[..., 1:-1, :] + v[..., 2:, :]
    total = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:] + 4 * v[..., 1:-1, 1:-1]
    out = x.clone()
    out[..., 1:-1, 1:-1] = torch.div(2 * total + 13, 26, rounding_mode="floor")
    return out


def _autocontrast(x, m):
    low = x.amin(dim=(2, 3), keepdim=True).float()
    high = x.amax(dim=(2, 3), keepdim=True).float()
    flat = high == low
    scale = torch.where(flat, 1.0, 255.0 / (high - low))
    low = torch.where(flat, 0.0, low)
    return ((x - low) * scale).clamp_(0, 255).to(torch.uint8)


def _equalize(x, m):
    """Histogram equalisation per image and channel: one bincount and one table lookup for all of them."""
    n, c, h, w = x.shape
    rows = x.reshape(n * c, h * w)
    # Channel i of the batch counts into bins [256 i, 256 i + 256) and reads its own table there.
    index = (rows.long() + torch.arange(n * c, device=x.device).view(-1, 1) * 256).flatten()
    hist = torch.bincount(index, minlength=n * c * 256).view(n * c, 256)
    # torchvision: step = (pixel count outside the highest occupied bin) // 255; step 0 leaves the channel.
    top = hist.gather(1, rows.amax(1, keepdim=True).long())
    step = torch.div(h * w - top, 255, rounding_mode="floor")
    safe = step.clamp(min=1)
    lut = torch.div(hist.cumsum(1) + torch.div(safe, 2, rounding_mode="floor"), safe, rounding_mode="floor")
    lut = F.pad(lut, (1, 0))[:, :-1].clamp_(0, 255)
    lut = torch.where(step == 0, torch.arange(256, device=x.device), lut).to(torch.uint8)
    return lut.flatten().index_select(0, index).view(n, c, h, w)


PHOTOMETRIC_OPS = {
    "Brightness": lambda x, m: _blend(x, 0.0, 1.0 + _per_image(m)),
    "Color": lambda x, m: _blend(x, _gray(x), 1.0 + _per_image(m)),
    "Contrast": lambda x, m: _blend(x, _gray(x).float().mean((1, 2, 3), keepdim=True), 1.0 + _per_image(m)),
    "Sharpness": lambda x, m: _blend(x, _smoothed(x), 1.0 + _per_image(m)),
    "Posterize": lambda x, m: x & (256 - 2 ** (8 - _per_image(m).long())).to(torch.uint8),
    "Solarize": lambda x, m: torch.where(x >= _per_image(m), 255 - x, x),
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
    "Invert": lambda x, m: 255 - x,
}
GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def inverse_matrix(op_name, magnitude, image_size):
    """The matrix F.affine / F.rotate hand grid_sample for a geometric op of torchvision's AutoAugment: output
    pixel (x, y, 1), in coordinates centred on the image, to the input pixel it reads. Rotate turns by
    `magnitude` degrees, ShearX/Y shear by atan(magnitude) about the top-left corner, TranslateX/Y shift by
    int(magnitude) pixels (tests/test_augment.py: every op equals torchvision's, pixel for pixel)."""
    h, w = image_size
    if op_name == "Rotate":
        turn = math.radians(magnitude)  # F.rotate's angle is counter-clockwise: the inverse turns back
        matrix = [math.cos(turn), -math.sin(turn), 0.0, math.sin(turn), math.cos(turn), 0.0]
    elif op_name == "ShearX":  # x' = x + m y about the corner (-w/2, -h/2): inverse x = x' - m y' - m h / 2
        matrix = [1.0, magnitude, magnitude * h * 0.5, 0.0, 1.0, 0.0]
    elif op_name == "ShearY":
        matrix = [1.0, 0.0, 0.0, magnitude, 1.0, magnitude * w * 0.5]
    else:
        shift = float(int(magnitude))
        matrix = [1.0, 0.0, -shift if op_name == "TranslateX" else 0.0,
                  0.0, 1.0, -shift if op_name == "TranslateY" else 0.0]
    return torch.tensor(matrix, dtype=torch.float32).view(2, 3)


# The values of torchvision's AutoAugmentPolicy (tests/test_augment.py checks that they still are). Written out
# so that checking data.autoaugment_policy does not import torchvision: its import costs every training process
# ~1.4 s of the ~3.6 s that `train.py model=final dry_run=true` takes (2-core CPU, side by side).
AUTOAUGMENT_POLICIES = ("cifar10", "imagenet", "svhn")


def autoaugment_policy(name) -> str:
    """data.autoaugment_policy, checked: the value of one of torchvision's AutoAugmentPolicy members."""
    if name not in AUTOAUGMENT_POLICIES:
        raise ConfigError(f"data.autoaugment_policy={name}: use one of {', '.join(AUTOAUGMENT_POLICIES)} "
                          f"(torchvision's AutoAugmentPolicy)")
    return name


MAGNITUDE_BINS = 10  # the bins of torchvision's AutoAugment; a policy step names one by its index


def augmentation_space(image_size):
    """op -> (magnitude of each bin, whether a draw may negate it): the numbers torchvision's AutoAugment uses
    (tests/test_augment.py compares them), written out so that no private method of it is called."""
    h, w = image_size
    bins = torch.arange(MAGNITUDE_BINS)
    ramp = lambda top: torch.linspace(0.0, top, MAGNITUDE_BINS)  # noqa: E731
    space = {"ShearX": (ramp(0.3), True), "ShearY": (ramp(0.3), True),
             "TranslateX": (ramp(150.0 / 331.0 * w), True), "TranslateY": (ramp(150.0 / 331.0 * h), True),
             "Rotate": (ramp(30.0), True),
             "Posterize": (8 - (bins / ((MAGNITUDE_BINS - 1) / 4)).round().int(), False),
             "Solarize": (torch.linspace(255.0, 0.0, MAGNITUDE_BINS), False)}
    space.update({op: (ramp(0.9), True) for op in ("Brightness", "Color", "Contrast", "Sharpness")})
    space.update({op: (torch.tensor(0.0), False) for op in ("AutoContrast", "Equalize", "Invert")})
    return space


class BatchedAutoAugment:
    """torchvision's AutoAugment (CIFAR10 policy by default) with a sub-policy drawn per image.

    Each policy step of each image becomes one entry of a lookup table (op, magnitude with its
    sign, affine matrix), so a batch costs one resample for all geometric ops of a step and one
    call per photometric op, whatever the batch size.
    """

    def __init__(self, policy="cifar10", image_size=(32, 32)):
        from torchvision.transforms import AutoAugment, AutoAugmentPolicy

        self.policies = AutoAugment(AutoAugmentPolicy(policy)).policies
        space = augmentation_space(image_size)
        self.op_names = sorted({op for subpolicy in self.policies for op, _, _ in subpolicy})
        unknown = set(self.op_names) - set(PHOTOMETRIC_OPS) - set(GEOMETRIC_OPS)
        if unknown:
            raise ValueError(f"AutoAugment ops {sorted(unknown)} have no batched version")
        n = len(self.policies)
        # Table index: (sub-policy, step, sign); torchvision negates a signed magnitude when its sign bit is 0.
        self.op = torch.zeros(n, 2, 2, dtype=torch.long)
        self.magnitude = torch.zeros(n, 2, 2, dtype=torch.float64)
        self.theta = torch.eye(2, 3).repeat(n, 2, 2, 1, 1)
        self.probability = torch.zeros(n, 2)
        for p, subpolicy in enumerate(self.policies):
            for step, (op_name, probability, magnitude_bin) in enumerate(subpolicy):
                magnitudes, signed = space[op_name]
                value = float(magnitudes[magnitude_bin]) if magnitude_bin is not None else 0.0
                self.probability[p, step] = probability
                for sign, signed_value in enumerate((-value if signed else value, value)):
                    self.op[p, step, sign] = self.op_names.index(op_name)
                    self.magnitude[p, step, sign] = signed_value
                    if op_name in GEOMETRIC_OPS:
                        self.theta[p, step, sign] = inverse_matrix(op_name, signed_value, image_size)
        self.geometric = torch.tensor([name in GEOMETRIC_OPS for name in self.op_names])
        self.image_size = tuple(image_size)

    def _tables(self, device):
        if self.op.device != device:
            for name in ("op", "magnitude", "theta", "probability", "geometric"):
                setattr(self, name, getattr(self, name).to(device))

    def draw(self, n, device, generator=None):
        """Each image's random draws: sub-policy [n], and per step: op index or -1 [n, 2], table sign [n, 2]."""
        choice = torch.randint(0, len(self.policies), (n,), device=device, generator=generator)
        coins = torch.rand(n, 2, device=device, generator=generator)
        signs = torch.randint(0, 2, (n, 2), device=device, generator=generator)
        steps = torch.arange(2, device=device)
        applied = coins <= self.probability[choice]
        op = torch.where(applied, self.op[choice.view(n, 1), steps, signs], -1)
        return choice, op, signs

    def __call__(self, x, generator=None):
        self._tables(x.device)
        n = x.shape[0]
        choice, ops, signs = self.draw(n, x.device, generator)
        # Per step, sort the batch by op so that each op works on one contiguous slice (no masked
        # gathers and scatters per op), and undo the sorting at the end. All geometric ops of a
        # step share one warp, so they sort together, first; images left alone sort last.
        position = torch.arange(n, device=x.device)  # out[i] is input image position[i]
        out = x
        for step in range(2):
            op = ops[position, step]
            key = torch.where(op < 0, len(self.op_names), torch.where(self.geometric[op.clamp(min=0)], -1, op))
            key, order = key.sort(stable=True)
            # index_select, not out[order]: advanced indexing was 20x slower on the CPU
            out, position = out.index_select(0, order), position[order]
            sign = signs[position, step]
            # bounds[k + 1]: where key k starts (k = -1 geometric, 0.. photometric op index)
            bounds = torch.searchsorted(key, torch.arange(-1, len(self.op_names) + 2, device=x.device)).tolist()
            for index in range(-1, len(self.op_names)):
                part = slice(bounds[index + 1], bounds[index + 2])
                if part.start == part.stop:
                    continue
                if index < 0:
                    out[part] = warp(out[part], theta=self.theta[choice[position[part]], step, sign[part]])
                else:
                    magnitude = self.magnitude[choice[position[part]], step, sign[part]]
                    out[part] = PHOTOMETRIC_OPS[self.op_names[index]](out[part], magnitude)
        return out.index_select(0, position.argsort())


AUGMENTATIONS = ("none", "simple", "autoaugment")
FLIPS = (True, False, "alternate")


class Augmentation:
    """The configured augmentation as one callable over uint8 batches [N, 3, image_size, image_size].

    `policy` (data.autoaugment_policy) and `image_size` come from the dataset: AutoAugment's sub-policies
    and its translation magnitudes (a fraction of the image width) depend on them.
    """

    def __init__(self, cfg, policy="cifar10", image_size=32):
        self.name = str(cfg.name)
        if self.name not in AUGMENTATIONS:
            raise ValueError(f"augmentation.name='{self.name}' is unknown: use {', '.join(AUGMENTATIONS)}")
        self.crop_padding = int(cfg.get("crop_padding", 0))
        flip = cfg.get("flip", False)
        if not any(flip is option or (isinstance(option, str) and flip == option) for option in FLIPS):
            raise ValueError(f"augmentation.flip={flip!r} is unknown: use true, false or alternate")
        # alternate: each image mirrored in every other epoch (airbench's scheme); the loader says which, per
        # image and epoch, through __call__'s `flip`. Every epoch still sees half of the images mirrored,
        # but no image is shown the same way two epochs running.
        self.flip = "alternate" if flip == "alternate" else bool(flip)
        self.rotation = float(cfg.get("rotation_degrees", 0))
        self.cutout = int(cfg.get("cutout", 0))
        self.policy = autoaugment_policy(policy)
        self.autoaugment = (BatchedAutoAugment(self.policy, (image_size, image_size)) if self.name == "autoaugment"
                            else None)

    def __call__(self, x, generator=None, flip=None):
        """flip: which images to mirror (bool [N]), required with augmentation.flip=alternate."""
        if self.flip == "alternate" and flip is None:
            raise ValueError("augmentation.flip=alternate needs the images' flips (data.DeviceLoader gives them)")
        if self.autoaugment is not None:
            x = self.autoaugment(x, generator)
        x = random_geometry(x, self.rotation, self.crop_padding, flip if self.flip == "alternate" else self.flip,
                            generator)
        if self.cutout:
            x = cutout(x, self.cutout, generator)
        return x
