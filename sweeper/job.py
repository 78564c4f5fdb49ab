"""The job's side of a sweep, for any Hydra app: which trial am I, report progress, stop when pruned.

    from sweeper.job import Failed, Pruned, TrialPruned, current_trial

    trial = current_trial()              # None outside a sweep (a single run, another sweeper)
    for step in range(epochs):
        ...
        if trial is not None:
            trial.report(score, step)    # raises TrialPruned when the pruner says stop
    return score                         # or Pruned(message) / Failed(reason): a result, not a crash

The sweeper passes the trial's identity to each job in environment variables: the trial's number and
id per job (`hydra.job.env_set`, which Hydra applies around the task function in every launcher), the
study, its storage and the MLflow parent run in the sweeper's own environment, which launched jobs
inherit. No config keys are added to the app's config. The sweeper, not the job, keeps the trial's heartbeat. Reporting needs a storage the
job can reach: a database URL, or the in-memory study when the job runs in the sweeper's process.
"""
import logging
import os

from sweeper.records import PRUNED_AT_STEP

log = logging.getLogger(__name__)

ENV_STUDY = "SWEEPER_STUDY"
ENV_STORAGE = "SWEEPER_STORAGE"        # masked when it holds a password (sweeper.secrets.reveal)
ENV_TRIAL = "SWEEPER_TRIAL"            # the trial's number
ENV_TRIAL_ID = "SWEEPER_TRIAL_ID"
ENV_PARENT_RUN = "SWEEPER_PARENT_RUN_ID"
ENV_DIRECTIONS = "SWEEPER_DIRECTIONS"  # e.g. "maximize" or "maximize,minimize"
ENV_REPORT = "SWEEPER_REPORT"          # "0": the job does not report to the pruner (a confirmation run, never pruned)
ENV_RESUME = "SWEEPER_RESUME_FROM"     # an interrupted trial's checkpoint file, which this trial goes on from
ENV_TAGS = "SWEEPER_TRIAL_TAGS"        # the trial's tags, comma-separated (baseline): each a run tag "true"
PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband", "threshold", "wilcoxon")

# In-memory storages of this process's sweeps, by study name: a job in the sweeper's process reports to them.
in_process_storages = {}


class TrialPruned(Exception):
    """Raised by `SweepTrial.report` when the pruner stops the trial."""


class Pruned:
    """Return this from the task function for a pruned trial (recorded PRUNED)."""

    def __init__(self, message=""):
        self.message = message

    def __repr__(self):
        return f"Pruned({self.message!r})"


class Failed:
    """Return this for a trial that ended without a result but is not a crash (recorded FAIL with the
    reason; not counted against max_failure_rate), e.g. a training loss that diverged."""

    def __init__(self, reason):
        self.reason = reason

    def __repr__(self):
        return f"Failed({self.reason!r})"


def current_trial():
    """The sweep trial this job is, or None outside a sweep."""
    number = os.environ.get(ENV_TRIAL)
    return None if number is None else SweepTrial(int(number))


class SweepTrial:
    def __init__(self, number):
        self.number = number
        self.study_name = os.environ.get(ENV_STUDY, "")
        self.parent_run_id = os.environ.get(ENV_PARENT_RUN) or None
        self.directions = [d for d in os.environ.get(ENV_DIRECTIONS, "maximize").split(",") if d]
        # Optuna prunes one objective only; a confirmation run (sweeper/confirm.py) is never pruned.
        self._trial, self._reporting = None, len(self.directions) == 1 and os.environ.get(ENV_REPORT) != "0"
        self.tags = {tag: "true" for tag in os.environ.get(ENV_TAGS, "").split(",") if tag}
        self.resume_from = os.environ.get(ENV_RESUME) or None  # set for a trial that replaces an interrupted one
        self.key = f"{self.study_name}#{number}"  # what a checkpoint of this trial records (training/checkpoint.py)

    def __repr__(self):
        return f"SweepTrial(number={self.number}, study={self.study_name!r})"

    def _optuna_trial(self):
        if self._trial is None:
            import optuna

            from sweeper.secrets import reveal
            from sweeper.stores import open_storage
            url = os.environ.get(ENV_STORAGE)
            if url:
                storage = open_storage(reveal(url))
            elif self.study_name in in_process_storages:
                storage = in_process_storages[self.study_name]
            else:
                log.warning("trial %s: its study is in another process's memory, so this job cannot report to "
                            "the pruner (give hydra.sweeper.storage a database URL to prune)", self.number)
                self._reporting = False
                return None
            study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=build_pruner(_pruner_spec()),
                                      sampler=optuna.samplers.RandomSampler())
            self._trial = optuna.trial.Trial(study, int(os.environ[ENV_TRIAL_ID]))
        return self._trial

    def record(self, **attrs):
        """User attrs of this trial, best effort (a job that cannot reach its study still trains): where its
        checkpoint is and which MLflow run it logs to, so that an interrupted trial can be resumed."""
        try:
            trial = self._optuna_trial()
            if trial is None:
                return False
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            return True
        except Exception as err:  # noqa: BLE001 - closed by another process, storage away: the job goes on
            log.warning("trial %s: could not record %s in the study (%s)", self.number, sorted(attrs), err)
            return False

    def backfill(self, values):
        """Intermediate values ({step: value}) the study lacks, e.g. a step whose checkpoint was written but whose
        report was cut off by SIGTERM; no pruning decision is taken on them (that one was never taken)."""
        if not self._reporting or self._optuna_trial() is None:
            return
        try:
            known = self._frozen().intermediate_values
            for step, value in sorted(values.items()):
                if step not in known:
                    self._trial.report(float(value), int(step))
        except Exception as err:  # noqa: BLE001 - best effort, as report
            log.warning("trial %s: could not backfill intermediate values (%s)", self.number, err)

    def _frozen(self):
        import optuna
        study = self._trial.study
        return next(t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                    if t.number == self.number)

    def report(self, value, step):
        """Report an intermediate value; raise TrialPruned if the pruner says stop."""
        if not self._reporting or self._optuna_trial() is None:
            return
        import optuna
        try:
            self._trial.report(float(value), int(step))
            prune = self._trial.should_prune()
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError) as err:
            # Another process closed this trial (e.g. took it for dead): finish the job, stop reporting.
            log.warning("trial %s: cannot report to the study any more (%s); going on without pruning",
                        self.number, err)
            self._reporting = False
            return
        if prune:
            self._trial.set_user_attr(PRUNED_AT_STEP, int(step))
            raise TrialPruned(f"trial {self.number} pruned at step {step} (value {value:.4f})")

    def close(self):
        self._trial, self._reporting = None, False


def _pruner_spec():
    """`hydra.sweeper.pruner` of this job's Hydra config (resolved, so it may use the job's keys)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf
    if not HydraConfig.initialized():
        return None
    spec = HydraConfig.get().sweeper.get("pruner")
    return OmegaConf.to_container(spec, resolve=True) if spec is not None else None


def build_pruner(spec):
    """`{name: median, n_startup_trials: 3, ...}` (or `{_target_: optuna.pruners.X, ...}`) -> an Optuna pruner."""
    import optuna
    spec = dict(spec or {"name": "none"})
    if "_target_" in spec:
        from sweeper.targets import build
        return build("hydra.sweeper.pruner._target_", spec, ["optuna.pruners.*"])
    name = spec.pop("name", "none")
    classes = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
               "percentile": optuna.pruners.PercentilePruner, "threshold": optuna.pruners.ThresholdPruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
               "hyperband": optuna.pruners.HyperbandPruner, "wilcoxon": optuna.pruners.WilcoxonPruner}
    if name not in classes:
        raise ValueError(f"hydra.sweeper.pruner.name='{name}' is unknown: use one of {', '.join(PRUNERS)}")
    return classes[name](**spec)
