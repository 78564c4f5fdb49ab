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

    Batches are prepared a chunk of about `chunk_images` at a time (a whole number of batches):
    on the CPU a chunk of ~1,000 CIFAR images still fits in cache and amortises each augmentation
    op's fixed cost over more images (AutoAugment ran 2x faster than batch by batch of 256).
    Iterating twice gives two epochs with fresh shuffles and augmentations.
    """

    def __init__(self, images, labels, batch_size, mean, std, augment=None, shuffle=False,
                 drop_last=False, seed=0, channels_last=False, chunk_images=1024):
        if batch_size <= 0:
            raise ValueError(f"batch size must be a positive integer, got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.augment, self.shuffle = batch_size, augment, shuffle
        self.batches_per_chunk = max(1, chunk_images // batch_size)
        # Dropping a short last batch keeps BatchNorm away from 1-image batches, but never empties an epoch.
        self.drop_last = drop_last and len(images) >= batch_size
        self.mean, self.std = mean, std  # [0, 1] units, per channel
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
        n, steps, size = len(self.images), len(self), self.batch_size
        order = (torch.randperm(n, device=self.images.device, generator=self.generator) if self.shuffle
                 else torch.arange(n, device=self.images.device))
        for first in range(0, steps, self.batches_per_chunk):
            last = min(first + self.batches_per_chunk, steps)
            with one_cpu_thread(self.images.device):
                index = order[first * size:last * size]
                # index_select, not images[index]: advanced indexing was 20x slower on the CPU
                x = self.images.index_select(0, index)
                if self.augment is not None:
                    x = self.augment(x, self.generator)
                x, y = self.normalize(x), self.labels.index_select(0, index)
            for start in range(0, len(index), size):
                yield x[start:start + size], y[start:start + size]
