"""The study as several processes share it: which trials count, tolerant tells, this process's heartbeats,
and the StudyStore that opens the study and reclaims the trials of workers that died."""
import contextlib
import logging
import math
import threading
import time
import warnings

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from errors import UsageError
from sweeper import compat, job as job_api, secrets, signals
from sweeper.records import CONFIRM_OF, FAIL_REASON, HEARTBEAT, INTERRUPTED, WARM_START_FROM
from sweeper.stores import open_storage

log = logging.getLogger(__name__)


def is_confirmation(trial):
    return CONFIRM_OF in trial.user_attrs


@contextlib.contextmanager
def deliberate():
    """Around the sweeper's deliberate use of Optuna's experimental heartbeat API (and of heartbeats outside
    Study.optimize, which Optuna warns about at every ask): those warnings stop here, the app's do not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


def trained_trials(trials):
    """Launched search trials that ended: COMPLETE, PRUNED, or FAIL with the job's reason (crashed, diverged, no
    number). Confirmation runs (sweeper/confirm.py) and trials copied from another study (warm start,
    sweeper/starts.py) are not search trials of this sweep: n_trials does not count them."""
    return [t for t in trials if not is_confirmation(t) and WARM_START_FROM not in t.user_attrs
            and (t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                 or (t.state == TrialState.FAIL and FAIL_REASON in t.user_attrs))]


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


def beats(storage):
    """Whether trials in `storage` get heartbeats: Optuna's own in a database, the sweeper's in a journal."""
    return isinstance(storage, (optuna.storages.RDBStorage, optuna.storages.JournalStorage))


# A journal's heartbeat (HEARTBEAT): a trial system attr, the beating worker's wall-clock time. Readers never compare
# it with their own clock (machines may disagree): a beat is stale once its value has not changed for grace_period.
def record_heartbeat(storage, trial_id):
    if isinstance(storage, optuna.storages.JournalStorage):
        storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
    else:
        storage.record_heartbeat(trial_id)


class Heartbeats:
    """One background thread that records a heartbeat for every trial this process holds (asked, not told)."""

    def __init__(self, storage, interval):
        self.storage = storage if beats(storage) else None
        self.interval, self.held, self.lock = interval, {}, threading.Lock()  # held: trial id -> number
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="sweeper-heartbeats", daemon=True)
        if self.storage is not None:
            self.thread.start()

    def hold(self, trial_id, number=None):
        with self.lock:
            self.held[trial_id] = number
        if self.storage is not None:
            record_heartbeat(self.storage, trial_id)

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
                    record_heartbeat(self.storage, trial_id)
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
        self.beat_seen = {}     # journal: trial id -> (its heartbeat value, when this process first saw that value)

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

    @staticmethod
    def ask(study):
        """study.ask, without Optuna's warning that heartbeats belong to Study.optimize (we keep them ourselves)."""
        with deliberate():
            return study.ask()

    def close(self, study, proposal, state, values=None, attrs=None):
        """Record how a trial ended and stop its heartbeat."""
        with signals.held():  # a SIGTERM waits for the tell: never a trial half recorded
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
                self.storage.set_trial_user_attr(trial_id, INTERRUPTED, True)
            except Exception:  # noqa: BLE001 - closed by another process meanwhile: its verdict stands
                continue
            if number is not None and tell(study, number, state=TrialState.FAIL):
                log.info(f"  trial #{number}: interrupted, recorded FAIL")
            self.heartbeats.release(trial_id)

    @property
    def shared(self):
        """Whether other processes may work on this study (a database or a journal, not this process's memory)."""
        return not isinstance(self.storage, optuna.storages.InMemoryStorage)

    def fail_dead_trials(self, study):
        """Free the slots of workers that died: trials whose heartbeat is stale (Optuna's check; a journal's,
        fail_stale_journal_trials) and those that never had one (fail_silent_trials)."""
        if isinstance(self.storage, optuna.storages.JournalStorage):
            self.fail_stale_journal_trials(study)
            return
        with deliberate():
            optuna.storages.fail_stale_trials(study)
        self.fail_silent_trials()

    def fail_stale_journal_trials(self, study):
        """A journal keeps no heartbeats of Optuna's: fail another worker's RUNNING trial whose heartbeat attr
        (or its absence) has not changed for grace_period, timed on this process's own clock."""
        now, grace = time.monotonic(), float(self.grace_period)
        seen = {}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
            if trial_id in self.heartbeats.held:
                continue
            beat = trial.system_attrs.get(HEARTBEAT)
            previous = self.beat_seen.get(trial_id)
            seen[trial_id] = previous if previous is not None and previous[0] == beat else (beat, now)
            if now - seen[trial_id][1] >= grace:
                try:
                    self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
                    log.info(f"  trial #{trial.number}: no heartbeat for {grace:.0f}s (its worker died): failed, "
                             f"its slot is free")
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # it ended meanwhile, or another worker failed it first
                del seen[trial_id]
        self.beat_seen = seen

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
            self.close(study, proposal, TrialState.FAIL, attrs={FAIL_REASON: reason})
            log.warning(f"  trial #{proposal.number} failed: {reason}")
            return f"#{proposal.number} {reason.strip().splitlines()[0]}"
        if isinstance(value, job_api.Pruned):
            self.close(study, proposal, TrialState.PRUNED)
            log.info(f"  trial #{proposal.number} pruned: {value.message}")
            return None
        if isinstance(value, job_api.Failed):
            reason = secrets.mask_url(str(value.reason))[:1000]
            self.close(study, proposal, TrialState.FAIL, attrs={FAIL_REASON: reason})
            log.warning(f"  trial #{proposal.number} failed: {reason}")
            return None
        values = self.numbers(value, len(directions))
        if values is None:
            reason = (f"the job returned {value!r}, not {'a number' if len(directions) == 1 else f'{len(directions)} numbers'}")
            self.close(study, proposal, TrialState.FAIL, attrs={FAIL_REASON: reason[:1000]})
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
