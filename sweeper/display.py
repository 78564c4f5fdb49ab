"""What a person reads while a sweep runs: launch lines that name the trial, the sweep's estimate and the
status line's time left.

Hydra's launchers log each job as `#<job index> : <overrides>`, where the index counts launches (over-budget
and repeated proposals are never launched, so it drifts from the trial number) and the overrides include the
sweeper's own `++hydra.job.env_set...` plumbing. `LaunchLines` rewrites exactly those records into
`trial #<Optuna trial number>: <the overrides a user would type>`; every other line passes untouched.
"""
import logging
import re
import time

from sweeper import compat

PLUMBING = "++hydra.job.env_set."
_LAUNCH = re.compile(r"^(\s*)#(\d+) : ?(.*)$", re.S)


class LaunchLines(logging.Filter):
    """A filter on the launchers' loggers (sweeper/compat.py names them): job index -> trial number."""

    def __init__(self):
        super().__init__()
        self.trials = {}  # job index -> Optuna trial number, set by the runner before it launches

    def expect(self, job_idx, number):
        self.trials[int(job_idx)] = number

    def filter(self, record):
        match = _LAUNCH.match(record.getMessage())
        if match:
            indent, idx, overrides = match.groups()
            number = self.trials.get(int(idx))
            shown = " ".join(word for word in overrides.split(" ") if word and not word.startswith(PLUMBING))
            record.msg, record.args = f"{indent}trial #{number if number is not None else '?'}: {shown}", ()
        return True

    def __enter__(self):
        for name in compat.LAUNCHER_LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc):
        for name in compat.LAUNCHER_LOGGERS:
            logging.getLogger(name).removeFilter(self)


def duration(seconds):
    """12s, 3m10s, 1h05m: short enough for a status line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class SweepClock:
    """This run's pace: trials it trained over the time since its loop started (slots running side by side
    included, so with 4 slots a 4-minute trial counts about 1 minute), extrapolated to the trials left."""

    def __init__(self, n_trials, already=0, clock=time.perf_counter):
        self.n_trials, self.already, self.clock = n_trials, already, clock
        self.started, self.estimated = clock(), False

    def elapsed(self):
        return self.clock() - self.started

    def per_trial(self, done):
        """Seconds per trained trial, from the trials this run trained (None before the first)."""
        trained_here = done - self.already
        return self.elapsed() / trained_here if trained_here > 0 else None

    def left(self, done):
        pace = self.per_trial(done)
        return None if pace is None else max(0, self.n_trials - done) * pace

    def status(self, done, counts):
        """`[6/20 trained | 2 over budget, 0 invalid, 1 repeats skipped | 3m10s, ~7m00s left]`."""
        left = self.left(done)
        when = duration(self.elapsed()) + ("" if left is None or done >= self.n_trials else f", ~{duration(left)} left")
        return (f"[{done}/{self.n_trials} trained | {counts['over_budget']} over budget, {counts['invalid']} invalid, "
                f"{counts['repeat']} repeats skipped | {when}]")

    def estimate(self, done):
        """The sweep's estimate, once: after the first trial this run trained (None before, and after)."""
        pace = self.per_trial(done)
        if self.estimated or pace is None or done >= self.n_trials:
            return None
        self.estimated = True
        todo = self.n_trials - self.already
        return (f"sweep estimate: {todo} trials x ~{duration(pace)} per trial = ~{duration(todo * pace)} "
                f"(~{duration(self.left(done))} left; the status line updates it)")
