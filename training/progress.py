"""What a person sees while an epoch runs: a progress bar on a terminal, plain lines in a file, and one estimate
of the run's length after its first steps.

On a terminal (stdout is a TTY) a tqdm bar redraws in place: steps done and total, img/s, the running loss,
the epoch's ETA (tqdm's) and the run's. In a file (a sweep's job log, CI, `> log`) a bar would be a line per
redraw, so a plain line is printed instead: after the first step, then every `FILE_INTERVAL_S`: never silent
for minutes, never more than a line per 30 s however fast the steps are. Each update reads the running loss
(one host sync); a redraw is due at most every `TTY_INTERVAL_S`, so on a GPU that is one sync per half second.

The estimate: after `ESTIMATE_STEPS` steps of the run's first epoch (or at its end, if shorter), one line with
the measured seconds per step, per epoch and for the run; when the run would take over an hour on a CPU, the
same line names the quick options. trainer.log_every=0 turns the in-epoch display off (the estimate stays).
"""
import sys
import time

from tqdm import tqdm

TTY_INTERVAL_S = 0.5
FILE_INTERVAL_S = 30.0
ESTIMATE_STEPS = 5
SLOW_RUN_S = 3600.0
FAST_OPTIONS = ("model=tiny", "data.subset=<images>", "trainer.epochs=<n>", "a GPU")


def clock(seconds):
    return tqdm.format_interval(max(0.0, seconds))


class Progress:
    """One run's display. `start_epoch(epoch, steps)`, then `due(index)` after each step (a clock read, no sync)
    and, when it is, `show(index, seen, loss)`; `end_epoch(index, seconds)` when the epoch is over."""

    def __init__(self, epochs, first_epoch=1, device="cpu", enabled=True, stream=None, tty=None, eval_images=0):
        self.epochs, self.first_epoch, self.device, self.enabled = epochs, first_epoch, str(device), enabled
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.estimated = False
        self.epoch_seconds = []  # finished epochs' seconds (training steps only), for the run's ETA
        self.bar = None

    # the epoch ----------------------------------------------------------------------------------------------
    def start_epoch(self, epoch, steps):
        self.epoch, self.steps = epoch, steps
        self.started = self.last = time.perf_counter()
        self.shown = 0
        if self.enabled and self.tty:
            self.bar = tqdm(total=steps, desc=f"epoch {epoch}/{self.epochs}", unit="step", leave=False,
                            file=self.stream, dynamic_ncols=True, mininterval=TTY_INTERVAL_S)

    def due(self, index):
        """Whether `show` has something to do after step `index`: the estimate, or a display update."""
        self.estimate_due = (not self.estimated and self.epoch == self.first_epoch
                             and (index == ESTIMATE_STEPS or index == self.steps))
        self.display_due = self.enabled and index < self.steps and (
            time.perf_counter() - self.last >= TTY_INTERVAL_S if self.tty else
            self.shown == 0 or time.perf_counter() - self.last >= FILE_INTERVAL_S)
        return self.estimate_due or self.display_due

    def show(self, index, seen, loss):
        now = time.perf_counter()
        elapsed = now - self.started
        per_step = elapsed / index
        if self.estimate_due:
            self.estimate(per_step)
        if not self.display_due:
            return
        epoch_left = per_step * (self.steps - index)
        run_left = epoch_left + self.epoch_s(per_step) * (self.epochs - self.epoch)
        rate = seen / elapsed if elapsed > 0 else 0.0
        if self.bar is not None:
            self.bar.update(index - self.bar.n)
            self.bar.set_postfix_str(f"loss {loss:.4f}, {rate:,.0f} img/s, run ETA {clock(run_left)}", refresh=False)
        else:
            print(f"  epoch {self.epoch}/{self.epochs} step {index}/{self.steps} | loss {loss:.4f} | {rate:,.0f} img/s "
                  f"| epoch ETA {clock(epoch_left)}, run ETA {clock(run_left)}", file=self.stream, flush=True)
        self.shown += 1
        self.last = now

    def end_epoch(self, seconds):
        self.epoch_seconds.append(seconds)
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def epoch_s(self, per_step):
        """Seconds per epoch: the finished epochs' mean, or this one's steps at the current pace."""
        return sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else per_step * self.steps

    # the estimate -------------------------------------------------------------------------------------------
    def estimate(self, per_step):
        self.estimated = True
        epoch_s = per_step * self.steps
        total = epoch_s * (self.epochs - self.first_epoch + 1)
        left = self.epochs - self.first_epoch + 1
        line = (f"estimate: {per_step:.3g} s/step x {self.steps} steps -> ~{clock(epoch_s)} per epoch, "
                f"~{clock(total)} for {left} epoch{'s' if left != 1 else ''} (training steps only)")
        if total > SLOW_RUN_S and self.device == "cpu":
            line += (f" | over an hour on a CPU: for a quick run use {', '.join(FAST_OPTIONS[:-1])}, "
                     f"or {FAST_OPTIONS[-1]}")
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)


def pass_progress(batches, total, label, stream=None, tty=None):
    """The batches of an evaluation pass, shown the same way: a bar on a terminal; in a file a line every
    FILE_INTERVAL_S (none for a pass shorter than that: a CPU test pass of model=final with TTA takes minutes,
    a tiny model's validation a second). No host sync: the pass's sums stay on the device."""
    stream = stream or sys.stdout
    if stream.isatty() if tty is None else tty:
        yield from tqdm(batches, total=total, desc=label, unit="batch", leave=False, file=stream,
                        mininterval=TTY_INTERVAL_S, dynamic_ncols=True)
        return
    started = last = time.perf_counter()
    for index, batch in enumerate(batches, 1):
        yield batch  # the caller's work on this batch runs before the generator resumes here
        now = time.perf_counter()
        if now - last >= FILE_INTERVAL_S and index < total:
            print(f"  {label}: batch {index}/{total} | {clock(now - started)} elapsed, "
                  f"~{clock((now - started) / index * (total - index))} left", file=stream, flush=True)
            last = now
