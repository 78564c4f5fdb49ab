"""Batches straight from a uint8 tensor that already lives on the training device."""
from contextlib import contextmanager

import torch


@contextmanager
def one_cpu_thread(device):
    """Run the batch preparation on one thread when it happens on the CPU.

    A batch's gathers and elementwise ops are small: a second thread gains little, and on a
    shared 2-core machine waiting for it cost 10-20x (benchmarks/, README "Performance").
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
        # (x - mean) / std as one multiply-add on the uint8 values: x * scale + offset.
        self.scale = (1 / (std * 255)).view(1, -1, 1, 1).to(images.device)
        self.offset = (-mean / std).view(1, -1, 1, 1).to(images.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.generator = torch.Generator(device=images.device).manual_seed(seed)

    def __len__(self):
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def normalize(self, x_uint8):
        x = torch.addcmul(self.offset, x_uint8.float(), self.scale)
        return x.contiguous(memory_format=self.memory_format)

    def __iter__(self):
        n = len(self.images)
        order = (torch.randperm(n, device=self.images.device, generator=self.generator) if self.shuffle
                 else torch.arange(n, device=self.images.device))
        for step in range(len(self)):
            with one_cpu_thread(self.images.device):
                index = order[step * self.batch_size:(step + 1) * self.batch_size]
                x = self.images[index]
                if self.augment is not None:
                    x = self.augment(x, self.generator)
                batch = self.normalize(x), self.labels[index]
            yield batch
