"""Data pipeline images/s: ours (uint8 tensor on the device, batched augmentation, DeviceLoader)
against the conventional one (a torchvision-style dataset of PIL images, torchvision.transforms,
torch.utils.data.DataLoader with worker processes), with the same augmentation policy. The dataset's
image size and AutoAugment policy (data.image_size, data.autoaugment_policy) are passed in.
"""
import torch
from omegaconf import OmegaConf
from PIL import Image

from benchmarks.common import interleaved, paired_ratio, sync
from data import Augmentation, DeviceLoader, channel_stats

POLICIES = {  # as conf/augmentation/*.yaml
    "simple": {"name": "simple", "rotation_degrees": 10, "crop_padding": 2, "flip": True, "cutout": 0},
    "autoaugment": {"name": "autoaugment", "rotation_degrees": 0, "crop_padding": 0, "flip": False, "cutout": 0},
}


class PILDataset(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10/CIFAR100 do per item: HWC uint8 array -> PIL image -> transform."""

    def __init__(self, images, labels, transform):
        self.data = images.permute(0, 2, 3, 1).numpy()
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def conventional_transform(policy, mean, std, autoaugment_policy, image_size):
    # Imported here: the other sections (python -m benchmarks --only graphs) skip its ~1.4 s.
    from torchvision import transforms as T
    normalize = [T.ToTensor(), T.Normalize(mean.tolist(), std.tolist())]
    if policy == "simple":
        return T.Compose([T.RandomRotation(10), T.RandomCrop(image_size, padding=2), T.RandomHorizontalFlip(),
                          *normalize])
    return T.Compose([T.AutoAugment(T.AutoAugmentPolicy(autoaugment_policy)), *normalize])


def epoch_runner(loader, device=None):
    def run():
        seen = 0
        for x, _ in loader:
            seen += len(x)
        if device is not None:
            sync(device)
        return seen
    return run


def bench(images, labels, device, autoaugment_policy, batch_size=256, conventional_images=2048, ours_images=16384,
          workers=2, rounds=3):
    """One row per policy: images/s of both pipelines, measured in alternating rounds, and their ratio.
    `autoaugment_policy`: torchvision's AutoAugmentPolicy value (data.autoaugment_policy)."""
    image_size = images.shape[-1]
    mean, std = channel_stats(images)
    on_device = images[:ours_images].to(device), labels[:ours_images].to(device)
    rows = []
    for policy, cfg in POLICIES.items():
        augment = Augmentation(OmegaConf.create(cfg), policy=autoaugment_policy, image_size=image_size)
        ours = DeviceLoader(*on_device, batch_size, mean, std, augment=augment, shuffle=True, drop_last=True)
        dataset = PILDataset(images[:conventional_images], labels[:conventional_images],
                             conventional_transform(policy, mean, std, autoaugment_policy, image_size))
        # Persistent workers, warmed up by one epoch: their start-up cost is left out in their favour.
        conventional = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                                   num_workers=workers, persistent_workers=workers > 0)
        contenders = {"ours": epoch_runner(ours, device), "conventional": epoch_runner(conventional)}
        for run in contenders.values():
            run()  # warm-up
        result = interleaved(contenders, rounds)
        rows.append({"policy": policy, "batch_size": batch_size, "workers": workers,
                     "ours_images_per_sec": round(result["ours"]["images_per_sec"], 1),
                     "conventional_images_per_sec": round(result["conventional"]["images_per_sec"], 1),
                     "ratio": round(paired_ratio(result, "ours", "conventional"), 2),
                     "rounds": result})
        del conventional  # stops its workers
    return rows
