"""The job's side of a sweep: which trial am I, report each epoch, stop when the pruner says so.

The plugin hides the Optuna trial from the job; our sweeper passes its identity as `sweep.*`
config keys, and the job reconnects to the study's storage to report and to send heartbeats
(so a sweep killed mid-trial can tell, when re-run, which trials died with it).
"""
import threading
import warnings

from errors import DivergedError  # noqa: F401 - the sweeper records diverged trials as FAIL

# optuna is imported where it is used, so that single runs (and train.py's import) do without it.

PRUNERS = ("none", "median", "successive_halving", "hyperband", "threshold")


class TrialPruned(Exception):
    """Raised in the training loop when the pruner stops the trial."""


class Pruned:
    """What a pruned trial's job returns (raising would make Hydra log it as a job error)."""

    def __init__(self, message):
        self.message = message

    def __repr__(self):
        return f"Pruned({self.message!r})"


_storages = {}


def open_storage(url, heartbeat_interval=10, grace_period=60):
    """An RDB storage (sqlite, PostgreSQL, ...) with heartbeats; sqlite waits for locks instead of failing.

    One per process and URL: trials that run in the sweeper's process (or in a reused launcher
    worker) share it instead of paying for a new engine and schema check each (~0.1 s a trial).
    """
    key = (url, heartbeat_interval, grace_period)
    if key not in _storages:
        _storages[key] = _new_storage(*key)
    return _storages[key]


def _new_storage(url, heartbeat_interval, grace_period):
    import optuna

    from training.tracking import make_sqlite_folder
    make_sqlite_folder(url)
    # We drive heartbeats ourselves (ask/tell, not Study.optimize); Optuna warns about both.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                      grace_period=grace_period)


def build_pruner(spec, epochs):
    """`hydra.sweeper.pruner` ({name: median, ...}) -> an Optuna pruner."""
    import optuna
    spec = dict(spec or {"name": "none"})
    name = spec.pop("name", "none")
    if name not in PRUNERS:
        raise ValueError(f"hydra.sweeper.pruner.name='{name}' is unknown: use one of {', '.join(PRUNERS)}")
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(**spec)
    if name == "threshold":
        return optuna.pruners.ThresholdPruner(**spec)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**spec)
    spec.setdefault("max_resource", epochs)
    return optuna.pruners.HyperbandPruner(**spec)


class TrialReporter:
    """Reports validation accuracy per epoch to the trial and raises TrialPruned when told."""

    def __init__(self, sweep_cfg, pruner_spec, epochs, heartbeat=(10, 60)):
        import optuna
        self.storage = open_storage(str(sweep_cfg.storage), *heartbeat)
        self.study = optuna.load_study(study_name=str(sweep_cfg.study_name), storage=self.storage,
                                       pruner=build_pruner(pruner_spec, epochs))
        self.trial = optuna.trial.Trial(self.study, int(sweep_cfg.trial_id))
        self.number = int(sweep_cfg.trial_number)
        self.can_prune = len(self.study.directions) == 1  # Optuna prunes single-objective studies only
        self.storage.record_heartbeat(self.trial._trial_id)
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat[0],), daemon=True)
        self._beat.start()

    @classmethod
    def from_cfg(cls, cfg):
        """None outside a sweep (no `sweep.trial_id`)."""
        sweep = cfg.get("sweep")
        if not sweep or sweep.get("trial_id") is None:
            return None
        from hydra.core.hydra_config import HydraConfig
        sweeper_cfg = HydraConfig.get().sweeper if HydraConfig.initialized() else {}
        heartbeat = (sweeper_cfg.get("heartbeat_interval", 10), sweeper_cfg.get("grace_period", 60))
        return cls(sweep, sweeper_cfg.get("pruner"), cfg.trainer.epochs, heartbeat)

    def _heartbeat(self, interval):
        while not self._stop.wait(interval):
            self.storage.record_heartbeat(self.trial._trial_id)

    def report(self, value, epoch):
        if not self.can_prune:
            return
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_at_epoch", epoch)
            raise TrialPruned(f"trial {self.number} pruned at epoch {epoch} (value {value:.4f})")

    def close(self):
        self._stop.set()
