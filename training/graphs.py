"""The whole training step as one CUDA graph: `trainer.cuda_graphs` (auto | true | false).

Why: on an H100, model=final's eager step took ~30 ms at batch 256 and at batch 512 alike (README
"Performance"): ~1,300 kernels a step, each launched from Python, so the GPU waited on the CPU. A CUDA
graph launches all of a step's kernels at once. The step (forward, loss, backward, gradient clipping,
the fused optimizer, the EMA of the weights, the running loss and accuracy) is captured once with
torch.cuda.graph and replayed for every later batch; only copying the batch in and the scheduler's LR
stay outside it. No torch.compile is needed (its compile time would come out of short runs); with
trainer.compile=true the compiled forward is captured the same way.

How a run goes: the first `warmup` steps run eagerly on a side stream (cudnn picks its kernels, the
optimizer makes its state; the last ones are timed), the next step is captured and replayed, and the
`trial` steps after it are timed. `auto` keeps the graph only if a replayed step is faster than an
eager one; `true` keeps it regardless. Every step is a real training step: nothing is repeated or undone.
What makes it capturable: static shapes (the training loader drops the short last batch), the LR held
in a device tensor per parameter group that the scheduler fills in place, the optimizer's fused kernels
(capturable Adam/AdamW), autocast without its weight cache, no host sync anywhere in the step.

Falls back to the eager step (and says why in `report`, which training prints and logs) when: not on
CUDA (the CPU path is untouched: this class is never built there), fp16 (GradScaler syncs every step),
optimizer kernels that are not fused, the capture raising, or `auto` measuring no gain. A batch of
another shape runs eagerly without ending the graph.

What differs from the eager step, both immaterial: the EMA's BatchNorm batch counters
(num_batches_tracked, unused with a fixed BN momentum, which the schema requires) are not averaged in
the graph; and the random numbers of dropout come from the graph's own Philox offsets.
ONLY A GPU RUN CAN CONFIRM the speed and the capture itself; tests/test_graphs.py runs this whole
state machine on the CPU with a stand-in capture that replays the recorded step eagerly, and checks
that it trains exactly as the eager step does.
"""
import contextlib
import math
import time

import torch


class CudaCapture:
    """Records a step into a torch.cuda.CUDAGraph; `replay()` runs it."""

    def __init__(self, device):
        self.device = device
        self.graph = self.stream = None

    @contextlib.contextmanager
    def side_stream(self):
        """Eager warm-up steps run on a side stream (what the capture API asks for), ordered with the default one."""
        if self.stream is None:
            self.stream = torch.cuda.Stream(self.device)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            yield
        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def capture(self, body):
        """Captured on the warm-up's side stream: the memory the warm-up steps' kernels used (and cudnn's and
        cuBLAS's workspaces, made per stream) is what the captured kernels then use too."""
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=self.stream, capture_error_mode="thread_local"):
            body()

    def replay(self):
        self.graph.replay()

    def synchronize(self):
        torch.cuda.synchronize(self.device)

    def release(self):
        self.graph = None


def _line(err, width):
    text = str(err).splitlines()[0][:width] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def refusal(err):
    """What refused the capture, in one line. torch.cuda.graph ends the capture on its way out, and when an
    operation inside refused to be captured, ending it raises again ("Capture invalidated ...") while the first
    error is being handled; the error that arrives here is then that second one, and the operation's own error
    (the one that says what to change) is at the start of its chain (__cause__ / __context__). So: the chain's
    first error, then the one that arrived."""
    chain, seen = [err], {id(err)}
    while True:
        inner = chain[-1].__cause__ or chain[-1].__context__
        if inner is None or id(inner) in seen:
            break
        chain.append(inner)
        seen.add(id(inner))
    if len(chain) == 1:
        return _line(err, 200)
    return f"{_line(chain[-1], 200)} (then {_line(err, 120)})"


class GraphedStep:
    """Wraps an engine.TrainStep: the same call, `step(x, y)`, served by a captured graph once it is ready."""

    def __init__(self, step, setting="auto", capture=None, warmup=3, trial=3, min_gain=1.03, precision="fp32",
                 fused=True):
        self.step, self.setting = step, setting
        self.capturer = capture or CudaCapture(step.device)
        self.warmup, self.trial, self.min_gain = max(2, warmup), max(1, trial), min_gain
        self.calls = 0
        self.mode = "warmup"  # warmup -> trial -> graph | eager
        self.static = None
        self.lr_tensors = None
        self.eager_s = self.graph_s = self.capture_s = None
        self.report = {"cuda_graphs": "pending"}
        reason = ("fp16 needs GradScaler, which syncs with the host every step" if precision == "fp16" else
                  "the optimizer's kernels are not fused (trainer.fused_optimizer=false)" if not fused else None)
        if reason:
            self._eager(reason)

    # the engine's TrainStep interface -------------------------------------------------------------
    @property
    def loss_sum(self):
        return self.step.loss_sum

    @property
    def correct(self):
        return self.step.correct

    def reset(self):
        self.step.reset()

    def after_scheduler(self):
        """The scheduler assigned a new LR; while a graph holds the LR tensors, make sure they carry it."""
        if self.lr_tensors is None:
            return
        for group, tensor in zip(self.step.optimizer.param_groups, self.lr_tensors):
            if group["lr"] is not tensor:  # a scheduler that assigns instead of filling in place
                tensor.fill_(float(group["lr"]))
                group["lr"] = tensor

    def __call__(self, x, y):
        self.calls += 1
        if self.calls == 1:  # a resumed optimizer may hold the LR tensors of a graphed run's checkpoint
            for group in self.step.optimizer.param_groups:
                group["lr"] = float(group["lr"])
        if self.mode == "eager":
            return self.step(x, y)
        if self.static is not None and (x.shape != self.static[0].shape or y.shape != self.static[1].shape
                                        or x.stride() != self.static[0].stride()):
            return self.step(x, y)  # a batch of another shape: eagerly (the fused kernels take the LR tensor)
        if self.mode == "warmup":
            return self._warmup_step(x, y)
        self.static[0].copy_(x)
        self.static[1].copy_(y)
        if self.mode == "trial":
            return self._trial_step()
        self._replay()

    def _replay(self):
        self.capturer.replay()
        self.step.replayed()

    # the stages --------------------------------------------------------------------------------------
    def _warmup_step(self, x, y):
        if self.calls > self.warmup:  # warm: this batch is the one captured (and then trained by the replay)
            self.static = (x.clone(), y.clone())  # clone keeps channels_last: these are the graph's inputs
            return self._capture()
        if self.calls == 2:  # the first step picks cudnn's kernels and makes the optimizer's state: not timed
            self.capturer.synchronize()
            self._eager_start = time.perf_counter()
        with self.capturer.side_stream():
            self.step(x, y)
        if self.calls == self.warmup:
            self.capturer.synchronize()
            self.eager_s = (time.perf_counter() - self._eager_start) / (self.warmup - 1)

    def _capture(self):
        optimizer = self.step.optimizer
        self.lr_tensors = [torch.tensor(float(g["lr"]), device=self.step.device) for g in optimizer.param_groups]
        for group, tensor in zip(optimizer.param_groups, self.lr_tensors):
            group["lr"] = tensor
        started = time.perf_counter()
        try:
            self.capturer.capture(lambda: self.step.graph_body(*self.static))
        except Exception as err:  # noqa: BLE001 - whatever refuses capture: train on eagerly and say why
            self.capturer.release()
            self._eager(f"capture failed: {refusal(err)}")
            return self.step(*self.static)  # capturing ran nothing: the batch is trained eagerly, no step lost
        self.capturer.synchronize()
        self.capture_s = time.perf_counter() - started
        self.mode = "trial"
        self._trial_started = None
        self._trial_steps = 0
        self._replay()  # capturing recorded the step; this runs it on the captured batch

    def _trial_step(self):
        if self._trial_started is None:
            self.capturer.synchronize()
            self._trial_started = time.perf_counter()
        self._replay()
        self._trial_steps += 1
        if self._trial_steps == self.trial:
            self.capturer.synchronize()
            self.graph_s = (time.perf_counter() - self._trial_started) / self.trial
            gain = self.eager_s / self.graph_s
            timing = (f"step {1e3 * self.graph_s:.1f} ms replayed vs {1e3 * self.eager_s:.1f} ms eager "
                      f"({gain:.2f}x), capture {self.capture_s:.1f} s")
            self.report.update(cuda_graph_step_ms=1e3 * self.graph_s, eager_step_ms=1e3 * self.eager_s,
                               cuda_graph_capture_s=self.capture_s)
            if self.setting is True or gain >= self.min_gain:
                self.mode = "graph"
                self.report["cuda_graphs"] = f"on: {timing}"
            else:
                self.capturer.release()
                self._eager(f"no gain: {timing}")

    def _eager(self, reason):
        """From now on the plain eager step; the LR goes back to a Python number (one sync, once)."""
        self.mode = "eager"
        if self.lr_tensors is not None:
            for group in self.step.optimizer.param_groups:
                group["lr"] = float(group["lr"])
            self.lr_tensors = None
        self.report["cuda_graphs"] = f"off: {reason}"


def compare_with_eager(cfg, device, steps=20, batch_size=256, capture=None, seed=0):
    """Train `steps` steps eagerly, then the same steps with the step captured as a graph (trainer.cuda_graphs=true),
    from the same weights and the same batches, dropout off; the per-step losses of both and the largest relative
    difference. A graph that froze something at capture (a learning rate, a buffer's address, the EMA's weights)
    trains differently from the eager step after a few replays, and this shows it; a right one differs by float
    noise alone (a GPU's kernels run in another order under capture). cudnn's algorithm choice is fixed for the
    comparison (deterministic, no benchmark) so both runs use the same kernels.

    `capture`: a stand-in for CudaCapture (tests); None on CUDA: the real capture, built by the Learner."""
    import copy

    from omegaconf import OmegaConf

    from models import build_model
    from training.engine import Learner
    from training.runtime import Runtime

    device = torch.device(device)
    cfg = copy.deepcopy(cfg)
    OmegaConf.update(cfg, "trainer.epochs", 1)
    # A tenth of the recipe's LR, held constant: on random images the recipe's warm-up (capped at 20% of these few
    # steps) reached its peak by step 4 and the loss diverged to NaN by step 8 on the H200, in both runs alike,
    # which would leave most of the comparison without a number.
    OmegaConf.update(cfg, "optimizer.lr", float(cfg.optimizer.lr) / 10)
    OmegaConf.update(cfg, "scheduler", {"name": "constant"}, merge=False)  # the schedule's keys go with it
    channels_last = device.type == "cuda" and cfg.trainer.channels_last in ("auto", True)
    torch.manual_seed(seed)
    start = build_model(cfg, device=device)
    for module in start.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if channels_last:
        start = start.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(seed)
    data = [(torch.randn(batch_size, 3, 32, 32, generator=generator),
             torch.randint(0, int(cfg.data.num_classes), (batch_size,), generator=generator)) for _ in range(steps)]
    data = [(x.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format),
             y.to(device)) for x, y in data]
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        curves, report = {}, {}
        for name in ("eager", "graphed"):
            run_cfg = copy.deepcopy(cfg)
            OmegaConf.update(run_cfg, "trainer.cuda_graphs", name == "graphed" and capture is None)
            runtime = Runtime(device, str(cfg.trainer.precision), channels_last=False)  # the model is converted above
            learner = Learner(run_cfg, runtime, steps, model=copy.deepcopy(start))
            step = learner.step
            if name == "graphed" and capture is not None:
                step = GraphedStep(step, True, capture=capture, precision=runtime.precision,
                                   fused=bool(learner.optimizer.defaults.get("fused")))
            learner.model.train()
            losses = []
            for x, y in data:
                step.reset()
                step(x, y)
                learner.scheduler.step()
                step.after_scheduler()
                losses.append(step.loss_sum.item() / len(y))
            curves[name] = losses
            report = dict(getattr(step, "report", {})) if name == "graphed" else report
            del learner, step
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
    # A step whose loss is not finite in either run compares as infinitely far: NaN equals nothing, and a check
    # that diverged has shown nothing.
    worst = max(abs(g - e) / max(abs(e), 1e-12) if math.isfinite(e) and math.isfinite(g) else math.inf
                for e, g in zip(curves["eager"], curves["graphed"]))
    return {"eager": curves["eager"], "graphed": curves["graphed"], "max_rel_diff": worst,
            "cuda_graphs": report.get("cuda_graphs", "")}
