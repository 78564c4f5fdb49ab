"""SIGTERM taken like Ctrl-C, and the few moments when neither may land.

A scheduler (SLURM preemption, `kill`, a container stop) ends a process with SIGTERM; Python's default is to
die at once (exit 143), which left a sweep's trial RUNNING and its parent run RUNNING. `terminate_as_interrupt`
makes SIGTERM raise `Terminated`, a KeyboardInterrupt, so every path that already closes things on Ctrl-C
(the job's run KILLED, the sweeper's held trials FAIL `interrupted`, its parent run KILLED) closes them on
SIGTERM too.

`held()` marks a moment that must not be cut in two (a checkpoint being renamed into place, a tell): a SIGTERM
that lands inside is raised when the outermost `held()` ends. Only signals taken by this module's handler are
held; Python's own SIGINT handler is left as it is.
"""
import contextlib
import os
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be."""


_state = {"depth": 0, "pending": None, "raised": False}


def _handler(signum, frame):
    if _state["raised"]:
        return  # the process is ending already: a second SIGTERM (forwarded by a parent) must not cut its clean-up
    if _state["depth"] > 0:
        _state["pending"] = signum
        return
    _state["raised"] = True
    raise Terminated(f"signal {signum}")


def _ours_to_take(current):
    """SIGTERM with Python's default; or a local submitit job's: submitit's job wrapper bypasses SIGTERM (on SLURM a
    preemption comes as USR2, which requeues the job), and a local job, never requeued, would run on unseen."""
    return current is signal.SIG_DFL or (os.environ.get("SUBMITIT_EXECUTOR") == "local"
                                         and getattr(current, "__name__", "") == "bypass")


def installed():
    return signal.getsignal(signal.SIGTERM) is _handler


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM raises Terminated inside the block (main thread only, and only where SIGTERM has Python's default
    or is a local submitit job's: a handler someone else installed, or an ignored SIGTERM, is left alone)."""
    if threading.current_thread() is not threading.main_thread() or installed():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if not _ours_to_take(previous):
        yield
        return
    take()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def take(signum=signal.SIGTERM):
    """Take SIGTERM from now on (a pool worker's trial; the worker ignores it again between trials)."""
    _state.update(depth=0, pending=None, raised=False)
    signal.signal(signum, _handler)


@contextlib.contextmanager
def held():
    """A SIGTERM that lands inside is raised (as Terminated) once the outermost block has ended. Signals reach
    the main thread only: other threads' blocks are not counted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0 and _state["pending"] is not None:
            _state.update(pending=None, raised=True)
            raise Terminated("signal held until a write had ended")


@contextlib.contextmanager
def interrupts_at_waits(self):
    """A ConstrainedSweep's (`self`) signals. With a pool, this process only proposes, records and waits, so
    Ctrl-C (and SIGTERM) is taken while it waits: one that lands inside a storage call is held until the next wait. (Taken at once, it was once raised
    in SQLAlchemy's connection-pool clean-up, which printed its own traceback before the sweep's line.)
    With a launcher the trials run in this process and take Ctrl-C themselves, as they always did."""
    self.waiting, self.interrupt_pending = False, False
    if not self.pool or threading.current_thread() is not threading.main_thread():
        yield
        return
    # SIGINT ignored (a background job) or handled by someone else is left as it is; SIGTERM when sweep() took it.
    taken = {number: signal.getsignal(number) for number, ours in (
        (signal.SIGINT, signal.getsignal(signal.SIGINT) is signal.default_int_handler),
        (signal.SIGTERM, installed())) if ours}

    def on_signal(signum, frame):
        error = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        if error is Terminated and _state["raised"]:
            return  # ending already: a second SIGTERM must not cut the clean-up (as _handler)
        if self.waiting:
            _raise(error)
        self.interrupt_pending, self.pending_error = True, error

    for number in taken:
        signal.signal(number, on_signal)
    try:
        yield
    finally:
        for number, handler in taken.items():
            signal.signal(number, handler)
    if self.interrupt_pending:  # it landed after the last wait (the last trial's result was in): raised now, not lost
        self.interrupt_pending = False
        _raise(getattr(self, "pending_error", KeyboardInterrupt))


def _raise(error):
    if error is Terminated:
        _state["raised"] = True  # what _handler checks once the taken handlers are back
    raise error


def wait(self, function, *args, **kwargs):
    """Run a wait (the pool's wait for a trial to end, a sleep) as the one place a held Ctrl-C is raised."""
    self.waiting = True
    try:
        if self.interrupt_pending:
            _raise(getattr(self, "pending_error", KeyboardInterrupt))
        return function(*args, **kwargs)
    finally:
        self.waiting = False
