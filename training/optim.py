"""Optimizers and per-step LR schedules from the optimizer/ and scheduler/ config groups."""
import math

import torch

from errors import OptimConfigError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("constant", "cosine", "onecycle", "cyclic", "step")


def param_groups(model, weight_decay, decay_norm_and_bias):
    """Weight decay on conv/linear weights only, unless decay_norm_and_bias."""
    if decay_norm_and_bias or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def base_lr(cfg):
    lr = float(cfg.optimizer.lr)
    if cfg.optimizer.get("scale_lr_with_batch", False):
        lr *= cfg.trainer.batch_size / 256
    return lr


def fused_kernels(cfg, device_type):
    """trainer.fused_optimizer: auto = torch's fused Adam/AdamW/SGD on cpu and cuda (one kernel over all
    parameters; on the CPU here 3.6x faster than the default per-tensor loop for model=final)."""
    setting = cfg.trainer.get("fused_optimizer", "auto")
    if setting == "auto":
        return device_type in ("cpu", "cuda")
    if not isinstance(setting, bool):
        raise OptimConfigError(f"trainer.fused_optimizer={setting!r} is unknown: use auto, true or false")
    return setting


def build_optimizer(cfg, model, device_type, fused=None):
    """fused: None = as trainer.fused_optimizer says."""
    name = str(cfg.optimizer.name)
    if name not in OPTIMIZERS:
        raise OptimConfigError(f"optimizer.name='{name}' is unknown: use one of {', '.join(OPTIMIZERS)}")
    lr = base_lr(cfg)
    if not lr > 0:
        raise OptimConfigError(f"optimizer.lr={lr} must be > 0")
    groups = param_groups(model, float(cfg.optimizer.get("weight_decay", 0.0)),
                          bool(cfg.optimizer.get("decay_norm_and_bias", False)))
    fused = fused_kernels(cfg, device_type) if fused is None else fused
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(cfg.optimizer.momentum),
                               nesterov=bool(cfg.optimizer.nesterov), fused=fused or None)
    betas = tuple(cfg.optimizer.get("betas", (0.9, 0.999)))
    opt_class = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return opt_class(groups, lr=lr, betas=betas, fused=fused or None)


def build_scheduler(cfg, optimizer, steps_per_epoch, epochs):
    """Every schedule here is stepped once per batch."""
    sched = cfg.scheduler
    name = str(sched.name)
    total = max(1, steps_per_epoch * epochs)
    if name not in SCHEDULERS:
        raise OptimConfigError(f"scheduler.name='{name}' is unknown: use one of {', '.join(SCHEDULERS)}")
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if name == "cosine":
        # Short runs (quick checks, sweep trials) would spend most of their steps warming up: cap at 20%.
        warmup = min(int(float(sched.warmup_epochs) * steps_per_epoch), int(0.2 * total))
        floor = float(sched.min_lr_ratio)

        def cosine(step):
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    if name == "onecycle":
        peak = float(sched.max_lr) if sched.get("max_lr") is not None else optimizer.defaults["lr"]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peak, total_steps=total, pct_start=float(sched.pct_start),
            anneal_strategy=str(sched.anneal_strategy), div_factor=float(sched.div_factor),
            final_div_factor=float(sched.final_div_factor), cycle_momentum=False)
    if name == "cyclic":
        low, high = cyclic_bounds(sched, cfg.get("mlflow", {}).get("tracking_uri"))
        return torch.optim.lr_scheduler.CyclicLR(
            optimizer, base_lr=low, max_lr=high, mode=str(sched.mode), cycle_momentum=False,
            step_size_up=max(1, int(float(sched.step_size_up_epochs) * steps_per_epoch)))
    step_size = max(1, int(sched.step_epochs) * steps_per_epoch)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=float(sched.gamma))


def cyclic_bounds(sched, tracking_uri=None):
    """(base_lr, max_lr): from the config, or from a finished LR range test (`bounds_from`)."""
    source = sched.get("bounds_from")
    if source:
        from training.lr_bounds import load_suggestion
        return load_suggestion(source, tracking_uri)
    low, high = float(sched.base_lr), float(sched.max_lr)
    if not 0 < low < high:
        raise OptimConfigError(f"scheduler cyclic needs 0 < base_lr < max_lr, got {low} and {high}")
    return low, high
