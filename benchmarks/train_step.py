"""Train step images/s: the project's loop (training.engine.Learner: scheduler, metrics on the device,
progress lines) against a minimal hand-written PyTorch loop, same model, batch and data. The
project loop also runs with the per-tensor optimizer loop a plain loop gets by default (isolating
the loop's own overhead) and, on the CPU, on one thread instead of torch's default.

On a GPU, also the project loop with each speed switch (bf16 autocast, channels_last, fused
optimizer, torch.compile) against its fp32 baseline, all in the same run.
"""
import contextlib
import copy
import io

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from benchmarks.common import interleaved, paired_quartiles, paired_ratio, sync
from data import DeviceLoader, channel_stats
from models import build_model
from training.engine import Learner
from training.runtime import Runtime

GPU_VARIANTS = {  # name: (precision, channels_last, fused optimizer, compile)
    "fp32": ("fp32", False, False, False),
    "bf16": ("bf16", False, False, False),
    "channels_last": ("fp32", True, False, False),
    "fused_optimizer": ("fp32", False, True, False),
    "bf16+channels_last+fused": ("bf16", True, True, False),
    "all+compile": ("bf16", True, True, True),
}


def make_loader(images, labels, device, batch_size, steps, channels_last=False):
    n = batch_size * steps
    x, y = images[:n].to(device), labels[:n].to(device)
    mean, std = channel_stats(images[:n])
    return DeviceLoader(x, y, batch_size, mean, std, shuffle=True, drop_last=True, channels_last=channels_last)


class ProjectLoop:
    """Everything train.py does per step: the engine's Learner (training/engine.py) on a Runtime."""

    def __init__(self, cfg, model, loader, device, precision="fp32", fused=None, compile=False, threads=None):
        self.loader, self.device, self.threads = loader, device, threads
        # A progress line at least once per measured window (train.py's default is every 50 steps).
        log_every = max(1, min(int(cfg.trainer.log_every or 50), len(loader) // 2))
        cfg = copy.deepcopy(cfg)
        for key, value in {"trainer.epochs": 10_000, "trainer.log_every": log_every, "trainer.compile": compile,
                           "trainer.precision": precision,
                           "trainer.fused_optimizer": "auto" if fused is None else fused}.items():
            OmegaConf.update(cfg, key, value)
        runtime = Runtime(torch.device(device), precision, channels_last=False)  # the loader sets the memory format
        self.learner = Learner(cfg, runtime, len(loader), model=model)
        self.epoch = 0

    def __call__(self):
        self.epoch += 1
        default_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads or default_threads)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.learner.train_epoch(self.loader, self.epoch)
            sync(self.device)
        finally:
            torch.set_num_threads(default_threads)
        return len(self.loader) * self.loader.batch_size  # drop_last: whole batches only


class PlainLoop:
    """The minimal loop people write: forward, cross-entropy, backward, step."""

    def __init__(self, model, loader, device, lr=1e-3):
        self.model, self.loader, self.device = model, loader, device
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def __call__(self):
        self.model.train()
        seen = 0
        for x, y in self.loader:
            loss = F.cross_entropy(self.model(x), y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            seen += len(y)
        sync(self.device)
        return seen


def bench_loop(cfg, images, labels, device, batch_size, steps, rounds):
    """Project loop vs plain loop, fp32, interleaved rounds; one row. The project loop also runs with
    the per-tensor optimizer a plain loop gets by default (the loop's own overhead, isolated) and,
    on a CPU with several threads, on one thread (what the thread count buys)."""
    device = torch.device(device)
    model = build_model(cfg, device=device)

    def loader():
        return make_loader(images, labels, device, batch_size, steps)
    loops = {"project": ProjectLoop(cfg, model, loader(), device),
             "project_unfused": ProjectLoop(cfg, copy.deepcopy(model), loader(), device, fused=False),
             "plain": PlainLoop(copy.deepcopy(model), loader(), device)}
    if device.type == "cpu" and torch.get_num_threads() > 1:
        loops["project_1_thread"] = ProjectLoop(cfg, copy.deepcopy(model), loader(), device, threads=1)
    for loop in loops.values():
        loop()  # warm-up
    result = interleaved(loops, rounds)
    row = {"model": str(cfg.model.name), "device": str(device), "batch_size": batch_size, "steps": steps,
           "rounds_timed": rounds, "threads": torch.get_num_threads(),
           **{f"{name}_images_per_sec": round(result[name]["images_per_sec"], 1) for name in loops},
           "ratio": round(paired_ratio(result, "project", "plain"), 3),
           "ratio_quartiles": paired_quartiles(result, "project", "plain") if rounds > 1 else "",
           "ratio_unfused": round(paired_ratio(result, "project_unfused", "plain"), 3)}
    if "project_1_thread" in loops:
        row["one_thread_vs_default"] = round(paired_ratio(result, "project_1_thread", "project"), 3)
    return {**row, "rounds": result}


def bench_gpu_switches(cfg, images, labels, batch_size, steps, rounds, variants=GPU_VARIANTS):
    """The project loop on CUDA with each switch; speedups relative to fp32 measured in the same rounds."""
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True  # as train.py does on cuda
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    loops = {}
    for name, (precision, channels_last, fused, compile) in variants.items():
        model = build_model(cfg, device=device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        loader = make_loader(images, labels, device, batch_size, steps, channels_last)
        loops[name] = ProjectLoop(cfg, model, loader, device, precision, fused=fused, compile=compile)
        loops[name]()  # warm-up (and compilation)
        loops[name]()
    result = interleaved(loops, rounds)
    return [{"variant": name, "model": str(cfg.model.name), "batch_size": batch_size,
             "images_per_sec": round(result[name]["images_per_sec"], 1),
             "speedup_vs_fp32": round(paired_ratio(result, name, "fp32"), 2) if "fp32" in result else None,
             "rounds": result[name]["rounds"]} for name in loops]
