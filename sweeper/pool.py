"""A device pool: `devices x trials_per_device` worker processes, each pinned to one device, no batch barrier.

Each slot is one long-lived process (spawned, so nothing of the sweeper's CUDA state is inherited)
whose CUDA_VISIBLE_DEVICES is set before anything in it can touch CUDA; the trial inside sees only its
device, as `cuda:0`. A slot runs one trial at a time the way Hydra's basic launcher does
(`run_job` with the trial's composed config, its folder under `hydra.sweep.dir`), and the sweeper
starts the next trial on whichever slot frees first. Without GPUs the ids are only labels.
"""
import atexit
import gc
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

log = logging.getLogger(__name__)


def visible_gpus():
    """Ids of the GPUs this process may use: CUDA_VISIBLE_DEVICES if set (empty: none, as CUDA reads it),
    else `nvidia-smi -L`."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    import shutil
    import subprocess
    if shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
            return [str(i) for i, line in enumerate(listed.splitlines()) if line.startswith("GPU ")]
        except (OSError, subprocess.SubprocessError):
            return []
    return []


def device_ids(devices):
    """`hydra.sweeper.devices` -> a list of id strings: `auto` = every visible GPU, or the given ids."""
    if devices is None:
        return None
    if isinstance(devices, str) and devices.strip() == "auto":
        found = visible_gpus()
        if not found:
            why = ("CUDA_VISIBLE_DEVICES is set and empty" if "CUDA_VISIBLE_DEVICES" in os.environ
                   else "nvidia-smi lists none")
            raise ValueError(f"hydra.sweeper.devices=auto: no GPU is visible ({why}): give ids, e.g. "
                             f"'hydra.sweeper.devices=[0,1]', or leave it unset")
        return found
    if isinstance(devices, (int, str)):
        devices = [devices]
    ids = [str(d).strip() for d in devices]
    if not ids or any(not d for d in ids):
        raise ValueError(f"hydra.sweeper.devices={list(devices)} must be auto or a non-empty list of device ids")
    return ids


def _dumps(payload):
    try:
        return pickle.dumps(payload)
    except Exception:  # noqa: BLE001 - a task function defined in __main__ or a closure: by value
        import cloudpickle
        return cloudpickle.dumps(payload)


# --- in the worker process --------------------------------------------------------------------------
_worker = {}


def _start_worker(device, payload):
    os.environ["CUDA_VISIBLE_DEVICES"] = device  # before the task (and torch) can initialise CUDA
    # Ctrl-C reaches the whole process group: a worker between trials ignores it (it exits when the sweeper
    # shuts the pool down); a trial takes it as its own Ctrl-C (_run_trial), so its run ends KILLED.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so is SIGTERM to the group (preemption): a trial takes it
    from hydra.core.singleton import Singleton
    from hydra.core.utils import setup_globals
    gc.disable()  # the app's imports (train.py: the same, with the measurements)
    task_function, hydra_context, singleton_state = pickle.loads(payload)
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    gc.enable()
    setup_globals()
    Singleton.set_state(singleton_state)
    _worker.update(task_function=task_function, hydra_context=hydra_context)
    # At exit, what is left (torch, MLflow, ...) goes to the OS whole: freeing it one by one held the sweep's
    # end, which waits for its workers (train.py does the same at its own exit, with the measurement).
    atexit.register(gc.freeze)


def _ready():
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def _run_trial(sweep_config, environment):
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import run_job
    os.environ.update(environment)  # what the sweeper shares with its jobs, set after this worker started
    HydraConfig.instance().set_config(sweep_config)
    from sweeper import signals
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signals.take(signal.SIGTERM)  # as Ctrl-C: the trial's run ends KILLED, its last checkpoint kept
    try:
        return run_job(hydra_context=_worker["hydra_context"], task_function=_worker["task_function"],
                       config=sweep_config, job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    except BaseException as err:
        # Hydra hands a KeyboardInterrupt (or SystemExit) that leaves run_job the job's JobReturn, which holds
        # the exception again: pickling that cycle back to the sweeper recursed for over a minute of CPU
        # (measured: a 2-slot sweep took 72 s to exit after Ctrl-C). Send back a fresh one of the same kind.
        try:
            fresh = type(err)(*err.args)
        except Exception:  # noqa: BLE001 - an exception type with its own constructor
            fresh = RuntimeError(f"{type(err).__name__}: {err}")
        raise fresh from None
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


# --- in the sweeper --------------------------------------------------------------------------------
class Slot:
    def __init__(self, device, payload):
        self.device, self.payload, self.executor, self.busy = device, payload, None, False
        self.lock = threading.Lock()

    def _submit(self, function, *args):
        with self.lock:
            for retry in (False, True):
                if self.executor is None:
                    self.executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                        initializer=_start_worker, initargs=(self.device, self.payload))
                try:
                    return self.executor.submit(function, *args)
                except BrokenProcessPool:
                    # Its worker died while idle (killed, out of memory): collect() never saw it, as no
                    # trial ran. A fresh process, once; a new executor that is broken already is not this.
                    self.executor.shutdown(wait=False, cancel_futures=True)
                    self.executor = None
                    if retry:
                        raise
                    log.warning(f"the worker process on device {self.device} died while idle: starting a new one")

    def warm_up(self):
        """Start the worker in the background: a spawned process imports the app (torch: seconds) before it
        takes work, and submit() would wait for that (measured: 3.4 s of a 1-trial sweep's 19 s)."""
        threading.Thread(target=self._submit, args=(_ready,), daemon=True).start()

    def submit(self, sweep_config, environment):
        self.busy = True
        return self._submit(_run_trial, sweep_config, environment)

    def restart(self):
        """After the worker died (killed, out of memory): a fresh process for the next trial."""
        with self.lock:
            if self.executor is not None:
                self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None


class DevicePool:
    def __init__(self, devices, trials_per_device, task_function, hydra_context):
        from hydra.core.singleton import Singleton
        payload = _dumps((task_function, hydra_context, Singleton.get_state()))
        self.slots = [Slot(device, payload) for device in devices for _ in range(trials_per_device)]
        for slot in self.slots:
            slot.warm_up()
        self.running = {}  # future -> (slot, tag)

    def free_slot(self):
        return next((slot for slot in self.slots if not slot.busy), None)

    def busy(self):
        return len(self.running)

    def start(self, slot, sweep_config, tag, environment):
        self.running[slot.submit(sweep_config, environment)] = (slot, tag)

    def collect(self, timeout, wait_with=None):
        """(tag, JobReturn) of the trials that ended within `timeout` seconds (at least one if any runs).
        `wait_with(function, *args, **kwargs)` runs the blocking wait (the sweeper takes Ctrl-C there only)."""
        if not self.running:
            return []
        done, _ = (wait_with or _call)(wait, list(self.running), timeout=timeout, return_when=FIRST_COMPLETED)
        finished = []
        for future in done:
            slot, tag = self.running.pop(future)
            slot.busy = False
            try:
                finished.append((tag, future.result()))
            except BrokenProcessPool as err:
                slot.restart()
                finished.append((tag, _failed(RuntimeError(f"the worker process on device {slot.device} died "
                                                           f"during the trial ({err})"))))
            except KeyboardInterrupt:  # the trial's own Ctrl-C (its worker alone was signalled): it failed
                finished.append((tag, _failed(RuntimeError(f"interrupted on device {slot.device} (SIGINT)"))))
            except Exception as err:  # noqa: BLE001 - pickling or Hydra errors around the job: the trial failed
                finished.append((tag, _failed(err)))
        return finished

    def interrupt(self, grace=5.0):
        """Ctrl-C reached the sweeper: the trials in its workers must end too (their runs KILLED), not hold its
        exit until they finish. From a terminal the whole process group got the SIGINT already; a worker still
        busy after `grace` seconds (the signal went to the sweeper alone: `kill -INT <pid>`) gets its own."""
        self.shutdown(wait=False)
        deadline = time.monotonic() + grace
        for child in multiprocessing.active_children():
            child.join(max(0.0, deadline - time.monotonic()))
        for child in multiprocessing.active_children():
            try:
                os.kill(child.pid, signal.SIGINT)
            except OSError:
                pass  # it exited meanwhile

    def shutdown(self, wait=True):
        """Workers exit in the background with wait=False (torch's teardown takes seconds); the interpreter
        still joins them before it exits."""
        for slot in self.slots:
            with slot.lock:
                if slot.executor is not None:
                    slot.executor.shutdown(wait=wait, cancel_futures=True)


def _call(function, *args, **kwargs):
    return function(*args, **kwargs)


def _failed(err):
    from hydra.core.utils import JobReturn, JobStatus
    ret = JobReturn()
    ret.return_value = err
    ret.status = JobStatus.FAILED
    return ret
