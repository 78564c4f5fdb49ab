"""Short-schedule training options: each a plain override, the defaults unchanged."""
import math

import pytest
import torch

from data import Augmentation, DeviceLoader
from errors import ConfigError, UserError
from tests.conftest import compose_cfg
from training.gate import check_config
from training.optim import build_optimizer, build_scheduler


def lrs(cfg, steps_per_epoch, epochs):
    optimizer = build_optimizer(cfg, torch.nn.Linear(3, 2), "cpu", fused=False)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch, epochs)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_the_default_cosine_schedule_is_the_one_it_always_was():
    cfg = compose_cfg(["optimizer=sgd", "optimizer.lr=0.1", "scheduler.warmup_epochs=2"])
    steps, epochs = 10, 6
    total, warmup = steps * epochs, 12  # 2 epochs, under the 20% cap
    old = [0.1 * ((s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
           for s in range(total)]
    assert lrs(cfg, steps, epochs) == pytest.approx(old, abs=1e-12)


@pytest.mark.parametrize("decay", ["cosine", "linear", "none"])
def test_warmup_start_and_decay_shapes(decay):
    cfg = compose_cfg(["optimizer=sgd", "optimizer.lr=0.2", "scheduler.warmup_epochs=1", "scheduler.warmup_start=0.25",
                       f"scheduler.decay={decay}", "scheduler.min_lr_ratio=0.1"])
    values = lrs(cfg, steps_per_epoch=10, epochs=5)
    assert values[0] == pytest.approx(0.2 * (0.25 + 0.75 / 10))    # from a quarter of the peak ...
    assert values[9] == pytest.approx(0.2)                          # ... up to it in one epoch
    assert all(a <= b + 1e-12 for a, b in zip(values[:10], values[1:10]))
    after = values[10:]
    if decay == "none":
        assert after == pytest.approx([0.2] * len(after))
    else:
        assert all(a >= b - 1e-12 for a, b in zip(after, after[1:]))  # falls towards the floor
        assert after[-1] == pytest.approx(0.02 + 0.18 * (0.5 * (1 + math.cos(math.pi * 39 / 40)) if decay == "cosine"
                                                         else 1 / 40))
        middle = after[20]  # halfway: cosine and linear both at the middle of peak and floor
        assert middle == pytest.approx(0.11)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_per_1024_images_keeps_lr_and_decay_per_image_whatever_the_batch(optimizer):
    """The same number of images moves and decays the weights alike at batch 128 and at batch 1024."""
    results = {}
    for batch in (128, 1024):
        cfg = compose_cfg([f"optimizer={optimizer}", "optimizer.per_1024_images=true", "optimizer.lr=0.5",
                           "optimizer.weight_decay=0.05", f"trainer.batch_size={batch}", "scheduler=constant"]
                          + (["optimizer.momentum=0.0", "optimizer.nesterov=false"] if optimizer == "sgd" else []))
        model = torch.nn.Linear(4, 4, bias=False)
        torch.nn.init.constant_(model.weight, 1.0)
        opt = build_optimizer(cfg, model, "cpu", fused=False)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * batch / 1024)
        assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.05 / 0.5)
        for _ in range(8 * 1024 // batch):  # 8,192 images, no gradient signal: only the decay acts
            model.weight.grad = torch.zeros_like(model.weight)
            opt.step()
        results[batch] = model.weight[0, 0].item()
    # per 1,024 images the weight keeps (1 - 0.05 * B / 1024) ** (1024 / B): 0.9506 at B=128, 0.95 at B=1024
    assert results[1024] == pytest.approx(0.95 ** 8, rel=1e-6)
    assert results[128] == pytest.approx(results[1024], rel=0.01)


def test_per_1024_images_and_scale_lr_with_batch_exclude_each_other():
    with pytest.raises(UserError, match="both scale the lr with the batch"):
        check_config(compose_cfg(["model=tiny", "optimizer=sgd", "optimizer.per_1024_images=true",
                                  "optimizer.scale_lr_with_batch=true"]))


@pytest.mark.parametrize("override, message", [
    ("scheduler.decay=exp", "scheduler.decay=exp: use one of cosine, linear, none"),
    ("scheduler.warmup_start=1.5", "scheduler.warmup_start=1.5: must be a number in [0, 1]"),
    ("optimizer.per_1024_images=yes", "optimizer.per_1024_images=yes: use one of true, false"),
    ("augmentation.flip=sometimes", "augmentation.flip=sometimes: use one of true, false, alternate"),
])
def test_bad_short_schedule_values_are_one_line(override, message):
    with pytest.raises(ConfigError) as caught:
        check_config(compose_cfg(["model=tiny", override]))
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def flip_states(loader, epochs):
    """Per epoch, whether each image (identified by its label = its index) came out mirrored."""
    states = []
    originals = loader.images.float()
    for _ in range(epochs):
        mirrored = torch.zeros(len(originals), dtype=torch.bool)
        for x, y in loader:
            same = (x == originals[y]).flatten(1).all(1)
            flipped = (x == originals[y].flip(3)).flatten(1).all(1)
            assert bool((same ^ flipped).all())  # each image exactly itself or its mirror
            mirrored[y] = flipped
        states.append(mirrored)
    return torch.stack(states)


def alternating_loader(n=64, seed=3):
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    augment = Augmentation(compose_cfg(["augmentation.rotation_degrees=0", "augmentation.crop_padding=0",
                                            "augmentation.flip=alternate"]).augmentation)
    # mean 0 and std 1/255: the loader's normalisation leaves the pixel values as they are
    return DeviceLoader(images, torch.arange(n), 16, torch.zeros(3), torch.full((3,), 1 / 255), augment=augment,
                        shuffle=True, seed=seed)


def test_alternating_flip_mirrors_each_image_every_other_epoch():
    loader = alternating_loader()
    states = flip_states(loader, 4)
    assert 16 < int(states[0].sum()) < 48                     # a random half in the first epoch
    for epoch in range(1, 4):
        assert torch.equal(states[epoch], ~states[epoch - 1])  # then each image the other way round
    # The same seed gives the same first-epoch draw; a resumed loader (epoch set) goes on with the parity.
    resumed = alternating_loader()
    resumed.epoch = 3
    assert torch.equal(flip_states(resumed, 1)[0], states[3])
    assert not torch.equal(flip_states(alternating_loader(seed=4), 1)[0], states[0])


def test_random_flip_is_not_alternating():
    """flip=true keeps drawing a fresh coin per image and epoch (the default, unchanged)."""
    loader = alternating_loader()
    loader.augment = Augmentation(compose_cfg(["augmentation.rotation_degrees=0", "augmentation.crop_padding=0"]).augmentation)
    loader.flip_bits = None
    states = flip_states(loader, 4)
    assert any(not torch.equal(states[e], ~states[e - 1]) for e in range(1, 4))
