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
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be."""


_state = {"depth": 0, "pending": None}


def _handler(signum, frame):
    if _state["depth"] > 0:
        _state["pending"] = signum
        return
    raise Terminated(f"signal {signum}")


def installed():
    return signal.getsignal(signal.SIGTERM) is _handler


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM raises Terminated inside the block (main thread only, and only where SIGTERM has Python's default:
    a handler someone else installed, or an ignored SIGTERM, is left alone)."""
    if threading.current_thread() is not threading.main_thread() or installed() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def take(signum=signal.SIGTERM):
    """Take SIGTERM from now on (a worker process's trial: undone by `ignore`)."""
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
            _state["pending"] = None
            raise Terminated("signal held until a write had ended")
