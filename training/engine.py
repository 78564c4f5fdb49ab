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
from training.progress import pass_progress


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
def evaluate(model, loader, autocast, tta="none", label="evaluating"):
    """Mean loss and accuracy over a loader; accumulated on the device, one sync at the end. Long passes show
    their progress (training/progress.py: a bar on a terminal, a line every 30 s in a file)."""
    model.eval()
    loss_sum = torch.zeros((), device=loader.images.device)
    correct = torch.zeros((), device=loader.images.device, dtype=torch.long)
    for x, y in pass_progress(loader, len(loader), label):
        with autocast:
            views = tta_views(x, tta)
            # log of the views' mean probability, from log-probabilities: as softmax(...).log() it underflowed to
            # -inf for a confidently wrong class (a smoke run of model=final printed "test loss inf").
            log_probs = torch.stack([model(view).float().log_softmax(1) for view in views])
            logits = torch.logsumexp(log_probs, 0) - math.log(len(views))
        loss_sum += F.nll_loss(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = len(loader.images)
    return loss_sum.item() / n, correct.item() / n


class TrainStep:
    """One optimizer step on a batch: forward, loss, backward, (gradient clipping), optimizer, EMA, and the
    batch's loss and correct predictions summed into device tensors (`loss_sum`, `correct`: no host sync).
    `graph_body` is the same step as a CUDA graph captures it (training/graphs.py)."""

    def __init__(self, model, forward, optimizer, criterion, autocast, scaler, ema=None, grad_clip=None,
                 graph_autocast=None):
        self.model, self.forward, self.optimizer, self.criterion = model, forward, optimizer, criterion
        self.autocast, self.scaler, self.ema, self.grad_clip = autocast, scaler, ema, grad_clip
        self.graph_autocast = graph_autocast if graph_autocast is not None else autocast
        self.device = next(model.parameters()).device
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device, dtype=torch.long)

    def reset(self):
        self.loss_sum.zero_()
        self.correct.zero_()

    def __call__(self, x, y):
        self._step(x, y, self.autocast)
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def graph_body(self, x, y):
        """The step as a CUDA graph records it: only device work (anything else would run once, at capture).
        The EMA is the averaging it is once started: AveragedModel's first update copies, deciding on its
        update counter, a CPU tensor; the eager warm-up steps made that first one, and `replayed` counts."""
        self._step(x, y, self.graph_autocast)
        if self.ema is not None:
            averaged = [(e, m) for e, m in zip(self._ema_tensors(self.ema.module), self._ema_tensors(self.model))
                        if e.is_floating_point()]
            self.ema.multi_avg_fn([e.detach() for e, _ in averaged], [m.detach() for _, m in averaged],
                                  self.ema.n_averaged)

    def replayed(self):
        """After each replay of graph_body: what it cannot hold, the EMA's update counter."""
        if self.ema is not None:
            self.ema.n_averaged += 1

    def after_scheduler(self):
        """Called after every scheduler step (the graphed step keeps its LR tensors in step here)."""

    def _ema_tensors(self, module):
        tensors = list(module.parameters())
        return tensors + list(module.buffers()) if self.ema.use_buffers else tensors

    def _step(self, x, y, autocast):
        with autocast:
            logits = self.forward(x)
            loss = self.criterion(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.loss_sum += loss.detach() * len(y)
        self.correct += (logits.argmax(1) == y).sum()


def train_one_epoch(model, step, loader, scheduler, epoch=1, progress=None):
    """One pass over `loader` with `step` (a TrainStep, or training.graphs.GraphedStep around one); returns
    (mean loss, accuracy, images seen).

    Loss and accuracy accumulate on the device: the only host syncs are the progress display's updates
    (training/progress.py: a bar on a terminal, a line every 30 s in a file) and the one at the end of the epoch.
    """
    model.train()
    steps = len(loader)
    step.reset()
    seen = 0
    if progress is not None:
        progress.start_epoch(epoch, steps)
    started = time.perf_counter()
    for index, (x, y) in enumerate(loader, 1):
        step(x, y)
        scheduler.step()
        step.after_scheduler()
        seen += len(y)
        if progress is not None and progress.due(index):
            running = step.loss_sum.item() / seen  # the one sync per display update
            if not math.isfinite(running):
                raise DivergedError(f"training loss became {running} at epoch {epoch}, step {index}")
            progress.show(index, seen, running)
    train_loss, train_acc = step.loss_sum.item() / seen, step.correct.item() / seen
    if progress is not None:
        progress.end_epoch(time.perf_counter() - started)
    if not math.isfinite(train_loss):
        raise DivergedError(f"training loss became {train_loss} in epoch {epoch}")
    return train_loss, train_acc, seen


def cuda_graphs_setting(trainer, device):
    """trainer.cuda_graphs on this device: "auto" or True on CUDA (training/graphs.py), False elsewhere: on the
    CPU the setting changes nothing."""
    setting = trainer.get("cuda_graphs", False)
    return setting if device.type == "cuda" and setting in ("auto", True) else False


class Learner:
    """What trains: the model (on the runtime's device and memory format), optimizer, per-step
    schedule, optional EMA of the weights, loss, the compiled forward when asked for, and the step
    (captured as a CUDA graph on a GPU, trainer.cuda_graphs)."""

    def __init__(self, cfg, runtime, steps_per_epoch, model=None):
        """model: an already built model to train (the benchmarks time copies of one); None = build it."""
        self.cfg, self.runtime = cfg, runtime
        self.model = runtime.prepare(model if model is not None else build_model(cfg, device=runtime.device))
        graphs = cuda_graphs_setting(cfg.trainer, runtime.device)
        self.optimizer = build_optimizer(cfg, self.model, runtime.device.type, capturable=bool(graphs))
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
        self.step = TrainStep(self.model, self.forward, self.optimizer, self.criterion, self.autocast, self.scaler,
                              self.ema, grad_clip=cfg.trainer.grad_clip, graph_autocast=runtime.autocast(cache=False))
        if graphs:
            from training.graphs import GraphedStep
            self.step = GraphedStep(self.step, graphs, precision=runtime.precision,
                                    fused=bool(self.optimizer.defaults.get("fused")))

    @property
    def graph_report(self):
        """What became of trainer.cuda_graphs ({} when not on CUDA): on/off and why, with the step times."""
        return dict(getattr(self.step, "report", {}))

    @property
    def evaluated(self):
        """The weights that are evaluated and kept: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def parts(self):
        """The stateful parts, by name (for checkpoints)."""
        return dict(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                    ema=self.ema)

    def train_epoch(self, loader, epoch, progress=None):
        """One epoch; returns its row of metrics (train loss/accuracy, lr, images/s, time)."""
        start = time.perf_counter()
        loss, acc, seen = train_one_epoch(self.model, self.step, loader, self.scheduler, epoch=epoch,
                                          progress=progress)
        seconds = time.perf_counter() - start
        return {"epoch": epoch, "train_loss": loss, "train_acc": acc,
                "lr": float(self.optimizer.param_groups[0]["lr"]), "images_per_sec": seen / seconds,
                "epoch_time": seconds}

    def evaluate(self, loader, tta="none", label="evaluating"):
        return evaluate(self.evaluated, loader, self.autocast, tta=tta, label=label)
