"""Batches straight from a uint8 tensor that already lives on the training device."""
import torch


class DeviceLoader:
    """Yields normalised float batches; shuffling and augmentation happen batched on the device.

    Iterating twice gives two epochs with fresh shuffles and augmentations.
    """

    def __init__(self, images, labels, batch_size, mean, std, augment=None, shuffle=False,
                 drop_last=False, seed=0, channels_last=False):
        if batch_size <= 0:
            raise ValueError(f"batch size must be a positive integer, got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.augment, self.shuffle = batch_size, augment, shuffle
        # Dropping a short last batch keeps BatchNorm away from 1-image batches, but never empties an epoch.
        self.drop_last = drop_last and len(images) >= batch_size
        self.mean = (mean * 255).view(1, -1, 1, 1).to(images.device)
        self.std = (std * 255).view(1, -1, 1, 1).to(images.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.generator = torch.Generator(device=images.device).manual_seed(seed)

    def __len__(self):
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def normalize(self, x_uint8):
        x = (x_uint8.float() - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)

    def __iter__(self):
        n = len(self.images)
        order = (torch.randperm(n, device=self.images.device, generator=self.generator) if self.shuffle
                 else torch.arange(n, device=self.images.device))
        for step in range(len(self)):
            index = order[step * self.batch_size:(step + 1) * self.batch_size]
            x = self.images[index]
            if self.augment is not None:
                x = self.augment(x, self.generator)
            yield self.normalize(x), self.labels[index]
