"""Optimizers and per-step LR schedules from the optimizer/ and scheduler/ config groups."""
import math

import torch

from errors import OptimConfigError
from training.schema import show_value

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("constant", "cosine", "onecycle", "cyclic", "step")

# The keys each optimizer and schedule reads besides `name`: (needed, optional). A key that the named one does not
# read would be ignored without a word (`+optimizer.momentum=0.9` with AdamW), and one it needs would fail deep in
# the build (`optimizer.name=sgd` on AdamW's keys): `check_keys` refuses both in one line, before anything is built.
_SCALING = ("weight_decay", "decay_norm_and_bias", "scale_lr_with_batch", "per_1024_images")
OPTIMIZER_KEYS = {"sgd": (("lr", "momentum", "nesterov"), _SCALING),
                  "adam": (("lr",), ("betas", *_SCALING)),
                  "adamw": (("lr",), ("betas", *_SCALING))}
SCHEDULER_KEYS = {"constant": ((), ()),
                  "cosine": (("warmup_epochs", "min_lr_ratio"), ("warmup_start", "decay")),
                  "onecycle": (("pct_start", "anneal_strategy", "div_factor", "final_div_factor"), ("max_lr",)),
                  "cyclic": (("step_size_up_epochs", "mode"), ("base_lr", "max_lr", "bounds_from")),
                  "step": (("step_epochs", "gamma"), ())}


def check_keys(node, group, table):
    """The `group` node (optimizer, scheduler) sets what its `name` reads and nothing else (null: not set)."""
    name = str(node.name)
    needed, optional = table[name]
    missing = [f"{group}.{key}" for key in needed if node.get(key) is None]
    if missing:
        raise OptimConfigError(f"{group}.name={name}: needs {', '.join(missing)}, which this config does not set: "
                               f"choose it with {group}={name} (its preset sets them), or add them with "
                               f"+{group}.KEY=VALUE")
    for key in node:
        if key == "name" or key in needed or key in optional or node.get(key) is None:
            continue
        readers = [other for other, (a, b) in table.items() if key in a or key in b]
        owner = f" (it is for {' or '.join(f'{group}={r}' for r in readers)})" if readers else ""
        raise OptimConfigError(f"{group}.{key}={show_value(node.get(key))}: {name} does not use it{owner}; "
                               f"{group}={name} takes {', '.join(needed + optional)}")


def param_groups(model, weight_decay, decay_norm_and_bias):
    """Weight decay on conv/linear weights only, unless decay_norm_and_bias."""
    if decay_norm_and_bias or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def per_1024_images(cfg):
    """optimizer.per_1024_images: lr and weight_decay are stated per 1,024 training images (see base_lr and
    weight_decay), so trainer.batch_size can change alone."""
    setting = cfg.optimizer.get("per_1024_images", False)
    if setting and cfg.optimizer.get("scale_lr_with_batch", False):
        raise OptimConfigError("optimizer.per_1024_images=true and optimizer.scale_lr_with_batch=true both scale "
                               "the lr with the batch: set one of them to false")
    return bool(setting)


def base_lr(cfg):
    """The optimizer's (peak) lr for the configured batch, per mean-reduced loss.

    scale_lr_with_batch: optimizer.lr is for a batch of 256 and scales linearly with the batch.
    per_1024_images: optimizer.lr is for a batch of 1,024 and scales linearly with the batch, so every
    1,024 images move the weights by the same amount whatever the batch size (to first order)."""
    lr = float(cfg.optimizer.lr)
    if cfg.optimizer.get("scale_lr_with_batch", False):
        lr *= cfg.trainer.batch_size / 256
    elif per_1024_images(cfg):
        lr *= cfg.trainer.batch_size / 1024
    return lr


def weight_decay(cfg):
    """The optimizer's weight_decay argument.

    With optimizer.per_1024_images, optimizer.weight_decay is the fraction of each decayed weight that is
    taken away per 1,024 training images at the peak lr, independent of the lr (as airbench states it):
    torch's SGD and AdamW shrink a weight by lr_t * weight_decay_arg per step, so the argument is
    weight_decay / optimizer.lr, and a step of B images at lr_t shrinks by weight_decay * B / 1024 * lr_t / lr
    (the schedule scales the decay as it scales the lr). SGD's momentum then carries the decay like the
    gradient, ~1 / (1 - momentum) times over; AdamW's decay is not touched by its moments.
    Otherwise it is passed through as torch's weight_decay."""
    value = float(cfg.optimizer.get("weight_decay", 0.0))
    if per_1024_images(cfg) and value:
        return value / float(cfg.optimizer.lr)
    return value


def fused_kernels(cfg, device_type):
    """trainer.fused_optimizer: auto = torch's fused Adam/AdamW/SGD on cpu and cuda (one kernel over all
    parameters; on the CPU here 3.6x faster than the default per-tensor loop for model=final)."""
    setting = cfg.trainer.get("fused_optimizer", "auto")
    if setting == "auto":
        return device_type in ("cpu", "cuda")
    if not isinstance(setting, bool):
        raise OptimConfigError(f"trainer.fused_optimizer={setting!r} is unknown: use auto, true or false")
    return setting


def optimizer_plan(cfg):
    """(torch.optim class name, its arguments but the parameters and the kernel switches): every rule of the
    optimizer group that spans keys (an unknown name, Nesterov without momentum, two lr scalings) is met here,
    so the gate checks a config without building an optimizer (torch's first optimizer imports torch._dynamo:
    1.2 s of a 3.6 s dry run here)."""
    name = str(cfg.optimizer.name)
    if name not in OPTIMIZERS:
        raise OptimConfigError(f"optimizer.name='{name}' is unknown: use one of {', '.join(OPTIMIZERS)}")
    check_keys(cfg.optimizer, "optimizer", OPTIMIZER_KEYS)
    lr = base_lr(cfg)
    if not lr > 0:
        raise OptimConfigError(f"optimizer.lr={lr} must be > 0")
    decay = weight_decay(cfg)
    if name == "sgd":
        if cfg.optimizer.nesterov and not float(cfg.optimizer.momentum) > 0:
            raise OptimConfigError(f"optimizer.momentum={cfg.optimizer.momentum}: Nesterov momentum needs a momentum "
                                   f"> 0; set optimizer.nesterov=false for plain SGD")
        return "SGD", dict(lr=lr, weight_decay=decay, momentum=float(cfg.optimizer.momentum),
                           nesterov=bool(cfg.optimizer.nesterov))
    betas = tuple(float(b) for b in cfg.optimizer.get("betas", (0.9, 0.999)))
    return ("AdamW" if name == "adamw" else "Adam"), dict(lr=lr, weight_decay=decay, betas=betas)


def build_optimizer(cfg, model, device_type, fused=None, capturable=False):
    """fused: None = as trainer.fused_optimizer says. capturable: Adam/AdamW keep their step counters on the
    device so a CUDA graph can capture the whole step (training/graphs.py); SGD needs nothing for it."""
    class_name, settings = optimizer_plan(cfg)
    decay = settings.pop("weight_decay")
    groups = param_groups(model, decay, bool(cfg.optimizer.get("decay_norm_and_bias", False)))
    fused = fused_kernels(cfg, device_type) if fused is None else fused
    if class_name != "SGD":
        settings["capturable"] = capturable
    return getattr(torch.optim, class_name)(groups, fused=fused or None, **settings)


def scheduler_plan(cfg, peak_lr, steps_per_epoch, epochs):
    """(torch.optim.lr_scheduler class name, its arguments but the optimizer): the schedule's rules across keys
    (an unknown name or decay, a cyclic range upside down, scheduler.bounds_from's file or run) are met here.
    Every schedule here is stepped once per batch; peak_lr is the optimizer's lr."""
    sched = cfg.scheduler
    name = str(sched.name)
    total = max(1, steps_per_epoch * epochs)
    if name not in SCHEDULERS:
        raise OptimConfigError(f"scheduler.name='{name}' is unknown: use one of {', '.join(SCHEDULERS)}")
    check_keys(sched, "scheduler", SCHEDULER_KEYS)
    if name == "constant":
        return "LambdaLR", dict(lr_lambda=_constant)
    if name == "cosine":
        return "LambdaLR", dict(lr_lambda=warmup_then_decay(sched, steps_per_epoch, total))
    if name == "onecycle":
        peak = float(sched.max_lr) if sched.get("max_lr") is not None else peak_lr
        return "OneCycleLR", dict(max_lr=peak, total_steps=total, pct_start=float(sched.pct_start),
                                  anneal_strategy=str(sched.anneal_strategy), div_factor=float(sched.div_factor),
                                  final_div_factor=float(sched.final_div_factor), cycle_momentum=False)
    if name == "cyclic":
        low, high = cyclic_bounds(sched, cfg.get("mlflow", {}).get("tracking_uri"))
        return "CyclicLR", dict(base_lr=low, max_lr=high, mode=str(sched.mode), cycle_momentum=False,
                                step_size_up=max(1, int(float(sched.step_size_up_epochs) * steps_per_epoch)))
    return "StepLR", dict(step_size=max(1, int(sched.step_epochs) * steps_per_epoch), gamma=float(sched.gamma))


def build_scheduler(cfg, optimizer, steps_per_epoch, epochs):
    class_name, settings = scheduler_plan(cfg, optimizer.defaults["lr"], steps_per_epoch, epochs)
    return getattr(torch.optim.lr_scheduler, class_name)(optimizer, **settings)


def check_plans(cfg, steps_per_epoch=1):
    """The optimizer's and the schedule's rules across keys, checked as building them would, without torch."""
    _, settings = optimizer_plan(cfg)
    scheduler_plan(cfg, settings["lr"], steps_per_epoch, cfg.trainer.epochs)


def _constant(step):
    return 1.0


DECAYS = ("cosine", "linear", "none")


def warmup_then_decay(sched, steps_per_epoch, total):
    """scheduler=cosine's factor of the peak lr at each step: a linear warmup, then a decay to a floor.

    warmup: warmup_epochs of steps (capped at 20% of all steps: short runs, quick checks and sweep trials,
    would spend most of their steps warming up), from warmup_start x peak (0: the first step is at
    1/warmup of the peak) up to the peak. decay: cosine (default) | linear | none (stay at the peak), from the
    peak down to min_lr_ratio x peak at the last step. The defaults (warmup_start 0, decay cosine) are this
    schedule as it always was."""
    warmup = min(int(float(sched.warmup_epochs) * steps_per_epoch), int(0.2 * total))
    floor = float(sched.min_lr_ratio)
    start = float(sched.get("warmup_start", 0.0))
    decay = str(sched.get("decay", "cosine"))
    if decay not in DECAYS:
        raise OptimConfigError(f"scheduler.decay='{decay}' is unknown: use one of {', '.join(DECAYS)}")
    if not 0 <= start <= 1:
        raise OptimConfigError(f"scheduler.warmup_start={start}: use a number in [0, 1] (a fraction of the peak lr)")

    def factor(step):
        if step < warmup:
            return start + (1 - start) * (step + 1) / warmup
        if decay == "none":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress
        return floor + (1 - floor) * shape
    return factor


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
