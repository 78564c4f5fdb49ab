"""The study as several processes share it: which trials count, tolerant tells, and this process's heartbeats."""
import logging
import threading

import optuna
from optuna.trial import TrialState

log = logging.getLogger(__name__)


def trained_trials(trials):
    """Launched trials that ended: COMPLETE, PRUNED, or FAIL with the job's reason (crashed, diverged, no number)."""
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)]


def tell(study, number, **kwargs):
    """study.tell, tolerant of a trial that another process already closed. True if it was recorded."""
    try:
        study.tell(number, **kwargs)
        return True
    except RuntimeError as err:
        if "Study.stop" in str(err):  # GridSampler's end of grid, outside optimize(): the tell stands
            return True
        log.warning(f"  trial #{number}: not recorded ({err})")
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as err:
        log.warning(f"  trial #{number} was already closed by another process ({err}); this result is not recorded")
    return False


def set_attrs(trial, attrs):
    try:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return True
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as err:
        log.warning(f"  trial #{trial.number} was already closed by another process ({err})")
        return False


class Heartbeats:
    """One background thread that records a heartbeat for every trial this process holds (asked, not told)."""

    def __init__(self, storage, interval):
        self.storage = storage if isinstance(storage, optuna.storages.RDBStorage) else None
        self.interval, self.held, self.lock = interval, {}, threading.Lock()  # held: trial id -> number
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="sweeper-heartbeats", daemon=True)
        if self.storage is not None:
            self.thread.start()

    def hold(self, trial_id, number=None):
        with self.lock:
            self.held[trial_id] = number
        if self.storage is not None:
            self.storage.record_heartbeat(trial_id)

    def numbers(self):
        """Numbers of the trials this process holds."""
        with self.lock:
            return set(self.held.values())

    def release(self, trial_id):
        with self.lock:
            self.held.pop(trial_id, None)

    def _beat(self):
        while not self.stopped.wait(self.interval):
            with self.lock:
                ids = list(self.held)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as err:  # noqa: BLE001 - a missed beat is retried; grace_period covers several
                    log.warning(f"heartbeat for trial id {trial_id} failed: {err}")

    def stop(self):
        self.stopped.set()


