"""Batched augmentation: shapes, dtypes and ranges kept; each op does what torchvision's does."""
import pytest
import torch
from omegaconf import OmegaConf
from torchvision.transforms import InterpolationMode
from torchvision.transforms import autoaugment as tv_autoaugment
from torchvision.transforms import functional as TF

from data.augment import (GEOMETRIC_OPS, PHOTOMETRIC_OPS, Augmentation, BatchedAutoAugment, cutout,
                          inverse_matrix, random_crop, random_flip, random_geometry, random_rotation, rotate,
                          rotation_matrix, warp)
from tests.conftest import REPO


@pytest.fixture(scope="module")
def images():
    """Smooth-ish random images (blocks of colour plus noise), so equalize and autocontrast have work to do."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 256, (64, 3, 8, 8), generator=g).float()
    x = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    return (x + torch.randint(-20, 21, x.shape, generator=g)).clamp(0, 255).to(torch.uint8)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# Ours against torchvision: two code paths, so "equal" allows a few pixels to differ. Nearest-pixel sampling
# rounds coordinates, and exact ties (a shear of 0.2 makes many) go to one neighbour or the other by the last bit
# of a float; torchvision forms its grid with a batched matmul whose summation (FMA or not, the BLAS kernel) is
# the CPU's choice. On the 2-core AMD EPYC every op and policy here is bit-equal. A 0.1% share of pixels moved
# to a neighbour is what a different summation order gave for shears of 0.2 (data/augment.py: warp); a real
# mistake changes far more: rotating by 9 degrees where torchvision rotates by 10 moves 26% of the values, by -10
# 94%, and one wrong row of 32 is 3%.
PIXEL_SHARE = 0.005


def assert_same_pixels(got, expected, what):
    assert got.shape == expected.shape and got.dtype == expected.dtype, what
    differ = (got != expected).float().mean().item()
    assert differ <= PIXEL_SHARE, f"{what}: {differ:.2%} of the values differ from torchvision's"


@pytest.mark.parametrize("name", ["none", "simple", "autoaugment"])
def test_policies_keep_shape_dtype_and_range(images, name):
    cfg = OmegaConf.load(REPO / "conf" / "augmentation" / f"{name}.yaml")
    before = images.clone()
    out = Augmentation(cfg)(images, gen())
    assert torch.equal(images, before)  # the input is not modified in place
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert out.min() >= 0 and out.max() <= 255
    if name == "none":
        assert torch.equal(out, images)


def test_crop_with_padding_zero_and_rotation_zero_are_identity(images):
    assert torch.equal(random_crop(images, 0, gen()), images)
    assert torch.equal(random_rotation(images, 0, gen()), images)
    assert torch.equal(rotate(images, torch.zeros(len(images))), images)


def test_crop_shifts_into_a_zero_border(images):
    out = random_crop(images, 2, gen())
    n, dy, dx = 0, 0, 0
    for i in range(len(images)):  # every output is a shifted input with zeros where the border shows
        found = [(a, b) for a in range(-2, 3) for b in range(-2, 3)
                 if torch.equal(out[i], warp(images[i:i + 1], shift=torch.tensor([[a, b]]))[0])]
        assert found, f"image {i} is not a shift in [-2, 2]"
        n += 1
        dy, dx = dy + abs(found[0][0]), dx + abs(found[0][1])
    assert dy > 0 and dx > 0  # not always the centre window
    shifted = warp(images, shift=torch.tensor([[1, -2]]).expand(len(images), 2))
    assert torch.equal(shifted[:, :, :-1, 2:], images[:, :, 1:, :-2])
    assert (shifted[:, :, -1] == 0).all() and (shifted[:, :, :, :2] == 0).all()


def test_flip_mirrors_about_half_and_twice_is_identity(images):
    out = random_flip(images, gen(3))
    mirrored = (out == images.flip(3)).flatten(1).all(1)
    same = (out == images).flatten(1).all(1)
    assert (mirrored | same).all()
    assert 0.25 < mirrored.float().mean() < 0.75
    always = torch.ones(len(images), dtype=torch.bool)
    assert torch.equal(warp(warp(images, flip=always), flip=always), images)


@pytest.mark.parametrize("angle", [90.0, -90.0, 180.0])
def test_rotation_by_right_angles_matches_rot90(images, angle):
    out = rotate(images, torch.full((len(images),), angle))
    assert torch.equal(out, torch.rot90(images, int(angle // 90), dims=(2, 3)))


@pytest.mark.parametrize("angle", [10.0, -7.3, 30.0])
def test_rotation_matches_torchvision(images, angle):
    expected = torch.stack([TF.rotate(img, angle, interpolation=InterpolationMode.NEAREST) for img in images])
    assert_same_pixels(rotate(images, torch.full((len(images),), angle)), expected, f"rotate({angle})")


def test_simple_policy_is_rotation_then_crop_then_flip(images):
    """The fused gather equals the three ops one after the other with the same draws."""
    n = len(images)
    angles = torch.linspace(-10, 10, n)
    shift = torch.randint(-2, 3, (n, 2), generator=gen(1))
    flip = torch.rand(n, generator=gen(2)) < 0.5
    fused = warp(images, rotation_matrix(angles), shift, flip)
    stepwise = warp(warp(rotate(images, angles), shift=shift), flip=flip)
    assert torch.equal(fused, stepwise)
    out = random_geometry(images, 10, 2, True, gen())
    assert (out == 0).float().mean() > (images == 0).float().mean()  # zero fill from rotation and crop


def test_cutout_zeroes_one_square(images):
    out = cutout(images + 1, 8, gen())  # +1: no zeros before
    zeros = (out == 0).all(1)
    counts = zeros.flatten(1).sum(1)
    assert (counts > 0).all() and (counts <= 8 * 8).all() and (counts == 8 * 8).any()  # an 8x8 square, clipped at edges
    assert torch.equal(cutout(images, 0, gen()), images)


def _torchvision_op(images, op, magnitude):
    return torch.stack([tv_autoaugment._apply_op(img, op, magnitude, interpolation=InterpolationMode.NEAREST,
                                                 fill=None) for img in images])


@pytest.mark.parametrize("op", sorted(PHOTOMETRIC_OPS) + list(GEOMETRIC_OPS))
def test_every_autoaugment_op_equals_torchvision(images, op):
    magnitudes, signed = tv_autoaugment.AutoAugment()._augmentation_space(10, (32, 32))[op]
    values = [float(magnitudes[b]) for b in (2, 7)] if magnitudes.ndim else [0.0]
    values += [-v for v in values] if signed else []
    for value in values:
        expected = _torchvision_op(images, op, value)
        if op in GEOMETRIC_OPS:
            got = warp(images, theta=inverse_matrix(op, value, (32, 32)).expand(len(images), 2, 3))
        else:
            got = PHOTOMETRIC_OPS[op](images, torch.full((len(images),), value, dtype=torch.float64))
        assert_same_pixels(got, expected, f"{op}({value})")



@pytest.mark.parametrize("size", [(32, 32), (24, 32), (64, 48)])
def test_the_magnitude_table_is_torchvisions(size):
    """data/augment.py writes out AutoAugment's magnitude bins rather than calling its private method: the same
    numbers, dtypes and signs, translations from the height and the width as torchvision takes them."""
    from data.augment import augmentation_space
    ours, theirs = augmentation_space(size), tv_autoaugment.AutoAugment()._augmentation_space(10, size)
    assert set(ours) == set(theirs)
    for op, (magnitudes, signed) in theirs.items():
        assert torch.equal(ours[op][0], magnitudes) and ours[op][0].dtype == magnitudes.dtype, op
        assert ours[op][1] is signed, op

def test_equalize_leaves_flat_and_nearly_flat_channels_as_torchvision_does(images):
    """step 0 (all pixels in one bin, or all but a few): the channel is left alone."""
    odd = images[:4].clone()
    odd[0] = 77                                  # every channel flat
    odd[1, 0] = 5                                # one flat channel
    odd[2, 1] = 200
    odd[2, 1, 0, :100 // 32] = 3                 # all but a handful of pixels in one bin
    odd[3, 2] = torch.arange(32, dtype=torch.uint8).view(1, 32) * 8  # evenly spread
    assert_same_pixels(PHOTOMETRIC_OPS["Equalize"](odd, torch.zeros(4)), TF.equalize(odd), "Equalize")


def test_autoaugment_changes_most_images_and_follows_the_policy(images):
    aa = BatchedAutoAugment()
    out = aa(images, gen())
    changed = (out != images).flatten(1).any(1).float().mean()
    # CIFAR10 policy: a sub-policy leaves an image unchanged only if both coins miss (or an op is a no-op)
    assert changed > 0.5
    assert not torch.equal(out, aa(images, gen(1)))
    assert torch.equal(out, aa(images, gen()))  # reproducible from the generator
    # the tables carry torchvision's policy: 25 sub-policies, probabilities and signed magnitudes
    assert len(aa.policies) == 25
    p, step = 0, 0
    op_name, probability, _ = aa.policies[p][step]
    assert aa.op_names[aa.op[p, step, 0]] == op_name and aa.probability[p, step] == pytest.approx(probability)


@pytest.mark.parametrize("policy", ["cifar10", "imagenet", "svhn"])  # data.autoaugment_policy
def test_batched_autoaugment_equals_torchvision_image_by_image(images, policy):
    """The sorted, batched path applies to each image exactly the ops its own draws pick."""
    aa = Augmentation(OmegaConf.create({"name": "autoaugment"}), policy=policy).autoaugment
    assert aa.policies == tv_autoaugment.AutoAugment(tv_autoaugment.AutoAugmentPolicy(policy)).policies
    out = aa(images, gen(5))
    choice, ops, signs = aa.draw(len(images), images.device, gen(5))
    assert (ops >= 0).any(1).float().mean() > 0.5  # most images get at least one op
    for i, image in enumerate(images):
        expected = image
        for step in range(2):
            if ops[i, step] >= 0:
                name = aa.op_names[ops[i, step]]
                magnitude = float(aa.magnitude[choice[i], step, signs[i, step]])
                expected = _torchvision_op(expected.unsqueeze(0), name, magnitude)[0]
        assert_same_pixels(out[i], expected, f"image {i}: sub-policy {aa.policies[choice[i]]}")


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match="augmentation.name='fancy' is unknown"):
        Augmentation(OmegaConf.create({"name": "fancy"}))


def test_autoaugment_follows_the_dataset_image_size(images):
    """Translations are a fraction of the image width (torchvision: 150/331 of it at full magnitude)."""
    small = images[:, :, :24, :24].contiguous()
    aa = Augmentation(OmegaConf.create({"name": "autoaugment"}), image_size=24).autoaugment
    assert aa.image_size == (24, 24)
    space = tv_autoaugment.AutoAugment()._augmentation_space(10, (24, 24))
    translate = aa.op_names.index("TranslateX")
    assert aa.magnitude[aa.op == translate].abs().max() <= float(space["TranslateX"][0].max())
    out = aa(small, gen())
    assert out.shape == small.shape and out.dtype == torch.uint8


def test_unknown_autoaugment_policy_is_named():
    from errors import ConfigError
    with pytest.raises(ConfigError, match="data.autoaugment_policy=cifar100: use one of cifar10, imagenet, svhn"):
        Augmentation(OmegaConf.create({"name": "none"}), policy="cifar100")


def test_the_policy_names_are_torchvisions():
    from data.augment import AUTOAUGMENT_POLICIES
    assert set(AUTOAUGMENT_POLICIES) == {policy.value for policy in tv_autoaugment.AutoAugmentPolicy}


def test_torchvision_is_imported_only_to_build_autoaugment():
    """Its import costs every training process ~1.4 s (data/augment.py): only AutoAugment needs it."""
    import subprocess
    import sys
    script = ("import sys; from omegaconf import OmegaConf; from data.augment import Augmentation\n"
              "for name in ('none', 'simple', 'autoaugment'):\n"
              "    Augmentation(OmegaConf.create({'name': name}), policy='svhn')\n"
              "    print(name, 'torchvision' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["none False", "simple False", "autoaugment True"]
