"""Train step images/s: the project's loop (training.engine.Learner: scheduler, metrics on the device,
progress lines) against a minimal hand-written PyTorch loop, same model, batch and data. The
project loop also runs with the per-tensor optimizer loop a plain loop gets by default (isolating
the loop's own overhead) and, on the CPU, on one thread instead of torch's default.

On a GPU, also the project loop with each speed switch (bf16 autocast, channels_last, fused
optimizer, torch.compile, CUDA graphs) against its fp32 baseline, all in the same run; and the CUDA-graph
comparison at batch 512 for model=final and recipe=fast's model (the two stems).
"""
import contextlib
import copy
import io
import time

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from benchmarks.common import interleaved, paired_quartiles, paired_ratio, sync
from data import DeviceLoader, channel_stats
from models import build_model
from training.engine import Learner
from training.progress import Progress
from training.runtime import Runtime

GPU_VARIANTS = {  # name: (precision, channels_last, fused optimizer, compile, CUDA graphs)
    "fp32": ("fp32", False, False, False, False),
    "bf16": ("bf16", False, False, False, False),
    "channels_last": ("fp32", True, False, False, False),
    "fused_optimizer": ("fp32", False, True, False, False),
    "bf16+channels_last+fused": ("bf16", True, True, False, False),
    "all+compile": ("bf16", True, True, True, False),
    "bf16+channels_last+fused+graphs": ("bf16", True, True, False, True),
}
# The CUDA-graph comparison (docs/gpu.md): the eager fp32 baseline, the same switches eagerly, and graphed.
GRAPH_VARIANTS = {name: GPU_VARIANTS[name] for name in ("fp32", "bf16+channels_last+fused",
                                                        "bf16+channels_last+fused+graphs")}


def make_loader(images, labels, device, batch_size, steps, channels_last=False):
    n = batch_size * steps
    x, y = images[:n].to(device), labels[:n].to(device)
    mean, std = channel_stats(images[:n])
    return DeviceLoader(x, y, batch_size, mean, std, shuffle=True, drop_last=True, channels_last=channels_last)


class ProjectLoop:
    """Everything train.py does per step: the engine's Learner (training/engine.py) on a Runtime."""

    def __init__(self, cfg, model, loader, device, precision="fp32", fused=None, compile=False, threads=None,
                 graphs=False):
        self.loader, self.device, self.threads = loader, device, threads
        cfg = copy.deepcopy(cfg)
        for key, value in {"trainer.epochs": 10_000, "trainer.compile": compile,
                           "trainer.precision": precision, "trainer.cuda_graphs": graphs,
                           "trainer.fused_optimizer": "auto" if fused is None else fused}.items():
            OmegaConf.update(cfg, key, value)
        runtime = Runtime(torch.device(device), precision, channels_last=False)  # the loader sets the memory format
        self.learner = Learner(cfg, runtime, len(loader), model=model)
        # train.py's progress display, as in a file (a line after the first step, then every 30 s); its output
        # is discarded below.
        self.progress = Progress(10_000, device=torch.device(device).type, tty=False, stream=io.StringIO())
        self.epoch = 0

    def __call__(self):
        self.epoch += 1
        default_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads or default_threads)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.learner.train_epoch(self.loader, self.epoch, self.progress)
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


def bench_gpu_switches(cfg, images, labels, batch_size, steps, rounds, variants=GPU_VARIANTS, device="cuda"):
    """The project loop on CUDA with each switch; speedups relative to fp32 measured in the same rounds.
    Each variant's two warm-up epochs are timed apart (`warmup_s`: compilation, the CUDA graph's warm-up and
    capture; `capture_s`: the capture alone) and left out of its images/s."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as train.py does on cuda
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    loops, warmups = {}, {}
    for name, (precision, channels_last, fused, compile, graphs) in variants.items():
        model = build_model(cfg, device=device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        loader = make_loader(images, labels, device, batch_size, steps, channels_last)
        loops[name] = ProjectLoop(cfg, model, loader, device, precision, fused=fused, compile=compile, graphs=graphs)
        started = time.perf_counter()
        loops[name]()  # warm-up (and compilation, and the graph's capture)
        loops[name]()
        warmups[name] = time.perf_counter() - started
    result = interleaved(loops, rounds)
    rows = []
    for name, loop in loops.items():
        report = loop.learner.graph_report
        rows.append({"variant": name, "model": str(cfg.model.name), "stem": str(cfg.stem.name), "batch_size": batch_size,
                     "images_per_sec": round(result[name]["images_per_sec"], 1),
                     "speedup_vs_fp32": round(paired_ratio(result, name, "fp32"), 2) if "fp32" in result else None,
                     "warmup_s": round(warmups[name], 2),
                     "capture_s": round(report["cuda_graph_capture_s"], 2) if "cuda_graph_capture_s" in report else "",
                     "cuda_graphs": report.get("cuda_graphs", ""), "rounds": result[name]["rounds"]})
    return rows
