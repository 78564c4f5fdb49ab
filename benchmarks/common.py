"""What the benchmarks share: the machine label, the dataset's images, timing by interleaved rounds."""
import os
import platform
import statistics
import time

import torch

from data.cifar import dataset_dir, read_batch


def machine():
    """Enough to tell two machines apart: absolute numbers are only comparable on the same one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def dataset_images(spec, root, n=None):
    """The training images of dataset `spec` (data/datasets.py) when `root` holds them, else random uint8
    images of the same shape and class count."""
    folder = dataset_dir(spec, root) if root else None
    if folder is not None and all((folder / name).is_file() for name in spec.train_files):
        images, labels = (torch.cat(parts) for parts in zip(*(read_batch(spec, folder / name)
                                                               for name in spec.train_files)))
        source = spec.name if len(images) == spec.train_images else f"{len(images)} images from {folder}"
    else:
        generator = torch.Generator().manual_seed(0)
        size = spec.image_size
        images = torch.randint(0, 256, (n or spec.train_images, 3, size, size), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, spec.num_classes, (len(images),), generator=generator)
        source = "random"
    if n is not None:
        images, labels = images[:n], labels[:n]
    return images, labels, source


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(contenders, rounds):
    """Time each contender once per round, alternating the order (ABBA...), so load drifts on a
    shared machine hit all of them alike. contenders: {name: fn() -> images}. Returns, per name,
    the median images/s over rounds and the per-round rates."""
    rates = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            images = contenders[name]()
            rates[name].append(images / (time.perf_counter() - start))
    return {name: {"images_per_sec": statistics.median(values), "rounds": [round(v, 1) for v in values]}
            for name, values in rates.items()}


def paired_ratios(result, ours, theirs):
    """ours/theirs per round (each round measured both back to back)."""
    return [a / b for a, b in zip(result[ours]["rounds"], result[theirs]["rounds"])]


def paired_ratio(result, ours, theirs):
    """The median of the per-round ratios: one noisy round moves it little."""
    return statistics.median(paired_ratios(result, ours, theirs))


def paired_quartiles(result, ours, theirs):
    """'q1-q3' of the per-round ratios: how far single rounds scattered."""
    q1, _, q3 = statistics.quantiles(paired_ratios(result, ours, theirs), n=4)
    return f"{q1:.3f}-{q3:.3f}"
