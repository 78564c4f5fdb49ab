"""The training engine: one readable path from a checked config to a trained model.

`Learner` holds what trains (model, optimizer, schedule, EMA, loss) and takes one epoch at a time;
`evaluate` measures a model on a loader. Data stays on the training device (data.DeviceLoader), and
loss and accuracy accumulate there: the only host syncs are the progress lines and one per epoch.
training/tasks.py drives this for `task=train` and the LR range test; the benchmarks time it.
"""
import math
import time

import torch
import torch.nn.functional as F

from errors import DivergedError
from models import build_model
from training.optim import build_optimizer, build_scheduler


def tta_views(x, mode):
    """Test-time augmentation: the image, its mirror, and (flip_shift) one-pixel shifts of both."""
    views = [x]
    if mode in ("flip", "flip_shift"):
        views.append(x.flip(3))
    if mode == "flip_shift":
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        views += [padded[..., :-2, :-2], padded[..., 2:, 2:]]
    return views


@torch.inference_mode()
def evaluate(model, loader, autocast, tta="none"):
    """Mean loss and accuracy over a loader; accumulated on the device, one sync at the end."""
    model.eval()
    loss_sum = torch.zeros((), device=loader.images.device)
    correct = torch.zeros((), device=loader.images.device, dtype=torch.long)
    for x, y in loader:
        with autocast:
            views = tta_views(x, tta)
            logits = (sum(model(view).float().softmax(1) for view in views) / len(views)).log()
        loss_sum += F.nll_loss(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = len(loader.images)
    return loss_sum.item() / n, correct.item() / n


def train_one_epoch(model, forward, loader, optimizer, scheduler, criterion, autocast, scaler, ema=None,
                    grad_clip=None, log_every=0, epoch=1):
    """One pass over `loader`; returns (mean loss, accuracy, images seen).

    Loss and accuracy accumulate on the device: the only host syncs are the progress lines
    (every `log_every` steps) and the one at the end of the epoch.
    """
    model.train()
    device = next(model.parameters()).device
    epoch_start, steps = time.perf_counter(), len(loader)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for step, (x, y) in enumerate(loader, 1):
        with autocast:
            logits = forward(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if log_every and step % log_every == 0 and step < steps:
            running = loss_sum.item() / seen  # the one sync per display line
            if not math.isfinite(running):
                raise DivergedError(f"training loss became {running} at epoch {epoch}, step {step}")
            rate = seen / (time.perf_counter() - epoch_start)
            print(f"  epoch {epoch} step {step}/{steps} loss {running:.4f} {rate:,.0f} img/s", flush=True)
    train_loss, train_acc = loss_sum.item() / seen, correct.item() / seen
    if not math.isfinite(train_loss):
        raise DivergedError(f"training loss became {train_loss} in epoch {epoch}")
    return train_loss, train_acc, seen


class Learner:
    """What trains: the model (on the runtime's device and memory format), optimizer, per-step
    schedule, optional EMA of the weights, loss, and the compiled forward when asked for."""

    def __init__(self, cfg, runtime, steps_per_epoch, model=None):
        """model: an already built model to train (the benchmarks time copies of one); None = build it."""
        self.cfg, self.runtime = cfg, runtime
        self.model = runtime.prepare(model if model is not None else build_model(cfg, device=runtime.device))
        self.optimizer = build_optimizer(cfg, self.model, runtime.device.type)
        self.scheduler = build_scheduler(cfg, self.optimizer, steps_per_epoch, cfg.trainer.epochs)
        self.scaler = runtime.grad_scaler()
        self.autocast = runtime.autocast()
        self.ema = None
        if cfg.trainer.ema_decay:
            self.ema = torch.optim.swa_utils.AveragedModel(
                self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.trainer.ema_decay),
                use_buffers=True)
        self.forward = torch.compile(self.model) if cfg.trainer.compile else self.model
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)

    @property
    def evaluated(self):
        """The weights that are evaluated and kept: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def parts(self):
        """The stateful parts, by name (for checkpoints)."""
        return dict(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                    ema=self.ema)

    def train_epoch(self, loader, epoch):
        """One epoch; returns its row of metrics (train loss/accuracy, lr, images/s, time)."""
        start = time.perf_counter()
        trainer = self.cfg.trainer
        loss, acc, seen = train_one_epoch(self.model, self.forward, loader, self.optimizer, self.scheduler,
                                          self.criterion, self.autocast, self.scaler, self.ema,
                                          grad_clip=trainer.grad_clip, log_every=trainer.log_every, epoch=epoch)
        seconds = time.perf_counter() - start
        return {"epoch": epoch, "train_loss": loss, "train_acc": acc, "lr": self.optimizer.param_groups[0]["lr"],
                "images_per_sec": seen / seconds, "epoch_time": seconds}

    def evaluate(self, loader, tta="none"):
        return evaluate(self.evaluated, loader, self.autocast, tta=tta)
