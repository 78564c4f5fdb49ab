"""The study as several processes share it: which trials count, tolerant tells, this process's heartbeats,
and the StudyStore that opens the study and reclaims the trials of workers that died."""
import logging
import math
import threading
import time

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from errors import UsageError
from sweeper import compat, job as job_api, secrets
from sweeper.stores import open_storage

log = logging.getLogger(__name__)


def trained_trials(trials):
    """Launched trials that ended: COMPLETE, PRUNED, or FAIL with the job's reason (crashed, diverged, no number)."""
    return [t for t in trials if (t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs))
            and "warm_start_from" not in t.user_attrs]  # copied from another study (sweeper/starts.py)


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


class StudyStore:
    """The study's storage as this process uses it: opened once, the heartbeats of the trials this process
    holds (from `ask` until `tell`), the tell that releases one, and the trials that dead workers left RUNNING."""

    def __init__(self, storage, storage_url, study_name, heartbeat_interval, grace_period):
        self.storage, self.storage_url, self.study_name = storage, storage_url, study_name
        self.study_id = storage.get_study_id_from_name(study_name)
        self.heartbeats = Heartbeats(storage, heartbeat_interval)
        self.grace_period = grace_period
        self.silent_since = {}  # trial id -> when this process first saw it RUNNING without any heartbeat

    @classmethod
    def open(cls, conf, sampler, directions, verbose=False):
        """(StudyStore, study) for hydra.sweeper.storage (None: in this process's memory), created or resumed.
        Optuna's INFO line "A new study created in RDB ..." only repeats the sweep's own first line: it shows with
        hydra.verbose=true alone."""
        real = secrets.reveal(conf.storage)
        quiet = not verbose and optuna.logging.get_verbosity() == optuna.logging.INFO
        if quiet:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            if real:
                storage = open_storage(real, conf.heartbeat_interval, conf.grace_period)
            else:
                storage = optuna.storages.InMemoryStorage()
            study = optuna.create_study(study_name=conf.study_name, storage=storage, sampler=sampler,
                                        directions=directions, load_if_exists=True)
        except Exception as err:
            raise UsageError(f"hydra.sweeper.storage={secrets.mask_url(conf.storage)}: cannot open the study "
                             f"({type(err).__name__}: {secrets.mask_url(str(err)).splitlines()[0]})") from err
        finally:
            if quiet:
                optuna.logging.set_verbosity(optuna.logging.INFO)
        if not real:
            job_api.in_process_storages[study.study_name] = storage
        return cls(storage, conf.storage, study.study_name, conf.heartbeat_interval, conf.grace_period), study

    @classmethod
    def in_memory(cls, study_name, sampler, directions):
        """(StudyStore, study) in memory, without heartbeats: the preview's."""
        storage = optuna.storages.InMemoryStorage()
        study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, directions=directions)
        return cls(storage, None, study.study_name, 0, 0), study

    def close(self, study, proposal, state, values=None, attrs=None):
        """Record how a trial ended and stop its heartbeat."""
        if attrs:
            set_attrs(proposal.trial, attrs)
        recorded = tell(study, proposal.number, state=state, values=values)
        self.heartbeats.release(proposal.trial_id)
        return recorded

    def close_held(self, study):
        """Ctrl-C: the trials this process holds will never report. Record them FAIL (user attr `interrupted`)
        now, so that a re-run proposes their configurations again at once instead of first waiting
        grace_period for their heartbeats to go stale (the summary then marks their MLflow runs KILLED)."""
        with self.heartbeats.lock:
            held = dict(self.heartbeats.held)
        for trial_id, number in held.items():
            try:
                self.storage.set_trial_user_attr(trial_id, "interrupted", True)
            except Exception:  # noqa: BLE001 - closed by another process meanwhile: its verdict stands
                continue
            if number is not None and tell(study, number, state=TrialState.FAIL):
                log.info(f"  trial #{number}: interrupted, recorded FAIL")
            self.heartbeats.release(trial_id)

    def fail_dead_trials(self, study):
        """Free the slots of workers that died: trials whose heartbeat is stale (Optuna's check) and those
        that never had one (fail_silent_trials)."""
        optuna.storages.fail_stale_trials(study)
        self.fail_silent_trials()

    def fail_silent_trials(self):
        """Fail another worker's RUNNING trial that has had no heartbeat at all for grace_period.

        Optuna's stale-trial check compares heartbeat rows, so a worker killed between creating a trial and
        its first heartbeat (milliseconds) leaves a trial that it never fails, and that every worker counts
        in flight for ever. The time is this process's own (since it first saw the trial without a
        heartbeat), not the trial's start: that is written with the creating machine's local clock, which
        another machine may not share (time zones)."""
        if not (isinstance(self.storage, optuna.storages.RDBStorage) and self.storage.get_heartbeat_interval()):
            return
        now, grace = time.monotonic(), float(self.grace_period)
        silent = compat.running_without_heartbeat(self.storage, self.study_id) - set(self.heartbeats.held)
        self.silent_since = {tid: self.silent_since.get(tid, now) for tid in silent}
        for trial_id, since in list(self.silent_since.items()):
            if now - since < grace:
                continue
            try:
                if self.storage.set_trial_state_values(trial_id, TrialState.FAIL):
                    log.info(f"  trial id {trial_id}: RUNNING without a heartbeat for {grace:.0f}s (its worker died "
                             f"before its first one): failed, its slot is free")
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # it ended meanwhile, or another worker failed it first
            del self.silent_since[trial_id]

    def record(self, study, proposal, ret, directions):
        """Tell the study how a launched trial ended. Returns `#N <reason's first line>` for a job that crashed."""
        try:
            value = ret.return_value  # re-raises the job's exception
        except Exception as err:  # noqa: BLE001 - every job error is recorded, then judged by max_failure_rate
            reason = secrets.mask_url(f"{type(err).__name__}: {err}")[:1000]
            self.close(study, proposal, TrialState.FAIL, attrs={"fail_reason": reason})
            log.warning(f"  trial #{proposal.number} failed: {reason}")
            return f"#{proposal.number} {reason.strip().splitlines()[0]}"
        if isinstance(value, job_api.Pruned):
            self.close(study, proposal, TrialState.PRUNED)
            log.info(f"  trial #{proposal.number} pruned: {value.message}")
            return None
        if isinstance(value, job_api.Failed):
            reason = secrets.mask_url(str(value.reason))[:1000]
            self.close(study, proposal, TrialState.FAIL, attrs={"fail_reason": reason})
            log.warning(f"  trial #{proposal.number} failed: {reason}")
            return None
        values = self.numbers(value, len(directions))
        if values is None:
            reason = (f"the job returned {value!r}, not {'a number' if len(directions) == 1 else f'{len(directions)} numbers'}")
            self.close(study, proposal, TrialState.FAIL, attrs={"fail_reason": reason[:1000]})
            log.warning(f"  trial #{proposal.number}: {reason}; recorded as FAIL, the sweep goes on")
            return None
        self.close(study, proposal, TrialState.COMPLETE, values=values)
        shown = " ".join(f"{k}={v}" for k, v in proposal.measured.items())
        log.info(f"  trial #{proposal.number}: value {', '.join(f'{v:.4f}' for v in values)}{' | ' + shown if shown else ''}")
        return None

    @staticmethod
    def numbers(value, count):
        """The job's return as finite floats, one per direction; None if it is not that."""
        items = list(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else [value]
        try:
            numbers = [float(v) for v in items if not isinstance(v, (str, bool))]
        except (TypeError, ValueError):
            return None
        if len(numbers) != len(items) or len(numbers) != count:
            return None
        return numbers if all(math.isfinite(v) for v in numbers) else None
