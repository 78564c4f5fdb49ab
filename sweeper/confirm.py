"""Confirmed winners: after the search, retrain the best `top_k` configurations with `seeds` new seeds each,
and choose the sweep's best by the mean over those seeds (printed with its standard deviation).

    hydra.sweeper.confirm: {top_k: 2, seeds: 3, seed_key: trainer.seed}   # top_k: 0 (the default) is off

The search's best value is the maximum of noisy numbers, so it flatters its own configuration; a mean over
fresh seeds does not. The search trial itself is therefore not one of the seeds: a configuration whose search
run used seed s (the job config's `seed_key`) is retrained with s+1 ... s+seeds, the same seeds on every rerun.

Each retraining is a trial of the same study, created without the sampler (no parameters: no learning sampler
sees it, sweeper/sampler.py; no repeat detection compares it) with user attrs `confirm_of=<search trial>`,
`seed`, `overrides`; n_trials does not count it (sweeper/study.py: trained_trials). It runs through the same
Runner as the trials (the launcher or the device pool) and does not report to the pruner (never pruned). A
rerun of the same command trains only the retrainings the study does not have yet (finished or crashed: a
crash is a result); one in flight in another worker is waited for, and taken over if that worker died.

MLflow (sweeper/confirm_runs.py): under the sweep's parent run, one run per confirmed configuration
(`confirm-#N`, tags `sweep=confirm`, `confirm_of=N`; metrics `<objective>_mean`, `<objective>_std`,
`seeds_complete`, `search_<objective>`); each retraining's job run is its child (the job's parent run id is set
per job) and is tagged `confirm_of`, `seed`. An MLflow store that refuses a configuration's run is one warning
line, as at the summary: the retrainings are in the study all the same, the summary follows, and only that
configuration's run lacks its results (FAILED).

One objective only: a multi-objective sweep with top_k > 0 stops before the first trial with one error line.
"""
import logging
import statistics
import time
from dataclasses import dataclass, field

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from errors import UsageError
from hydra_plugins.constrained_optuna_sweeper.constrained_optuna_sweeper import ConstrainedOptunaSweeperConf
from sweeper import job as job_api
from sweeper.confirm_runs import ConfirmRuns
from sweeper.propose import Proposal
from sweeper.report import launched_overrides
from sweeper.records import CONFIRM_OF, FAIL_REASON, LAUNCHED, OVERRIDES, SEED, WARM_START_FROM
from sweeper.study import is_confirmation

log = logging.getLogger(__name__)

_ABSENT = object()


def defaults():
    """hydra.sweeper.confirm's keys and defaults, as the plugin's dataclass holds them (only there:
    sweeper/settings.py)."""
    return ConstrainedOptunaSweeperConf().confirm


def _count(key, value, least):
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UsageError(f"hydra.sweeper.confirm.{key}={value}: must be an integer >= {least}")


def override_key(override):
    """`++trainer.seed=3` -> `trainer.seed` (the key an override sets, whatever its prefix)."""
    return override.split("=", 1)[0].lstrip("+~")


@dataclass
class Row:
    """One confirmed configuration: its search trial, the seeds it is retrained with, their values (COMPLETE
    retrainings, in seed order) and how many of them ended without a value."""
    trial: optuna.trial.FrozenTrial
    seeds: list
    values: list = field(default_factory=list)
    failed: int = 0
    runs: dict = field(default_factory=dict)  # its retrainings' trial numbers (as MLflow tags them, text) -> seed

    @property
    def mean(self):
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self):
        """The sample standard deviation (n - 1) over the seeds; None with fewer than two values."""
        return statistics.stdev(self.values) if len(self.values) >= 2 else None


@dataclass
class Outcome:
    rows: list
    seeds: int
    seed_key: str
    best: Row = None


class ConfirmTrial:
    """What the Runner and StudyStore use of a trial (number, params, set_user_attr), for a trial created
    without `optuna.trial.Trial`, whose constructor calls the sampler's before_trial (a grid would give it a cell)."""

    def __init__(self, storage, trial_id, number):
        self.storage, self.trial_id, self.number, self.params = storage, trial_id, number, {}

    def set_user_attr(self, key, value):
        self.storage.set_trial_user_attr(self.trial_id, key, value)


class Confirmation:
    def __init__(self, top_k, seeds, seed_key, base_seed=0):
        self.top_k, self.seeds, self.seed_key, self.base_seed = top_k, seeds, seed_key, base_seed

    @classmethod
    def from_settings(cls, raw, directions, base):
        """hydra.sweeper.confirm (the typed config's) checked before the first trial (one error line); None when
        it is off. Composed by Hydra it has every key; keys a mapping leaves out (a sweep built from a dict, or
        `confirm: null`) take the plugin dataclass's defaults."""
        if OmegaConf.is_config(raw):
            raw = OmegaConf.to_container(raw, resolve=True)
        raw, known = ({} if raw is None else raw), defaults()
        if not isinstance(raw, dict):
            raise UsageError(f"hydra.sweeper.confirm={raw}: must be a mapping with keys {', '.join(known)}")
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise UsageError(f"hydra.sweeper.confirm.{unknown[0]}={raw[unknown[0]]}: unknown key; allowed: "
                             f"{', '.join(known)}")
        values = {**known, **raw}
        _count("top_k", values["top_k"], 0)
        _count("seeds", values["seeds"], 1)
        if values["top_k"] == 0:
            return None
        if len(directions) > 1:
            raise UsageError(f"hydra.sweeper.confirm.top_k={values['top_k']}: confirmation ranks one objective and "
                             f"this sweep has {len(directions)} ({','.join(directions)}): use top_k=0")
        key = values["seed_key"]
        found = OmegaConf.select(base, key, default=_ABSENT) if isinstance(key, str) and key else _ABSENT
        if found is _ABSENT:
            raise UsageError(f"hydra.sweeper.confirm.seed_key={key}: not a key of the job config: name the key "
                             f"that seeds a job (this project: trainer.seed)")
        if isinstance(found, bool) or not isinstance(found, int):
            raise UsageError(f"hydra.sweeper.confirm.seed_key={key}: the job config's value {found!r} is not an "
                             f"integer seed")
        return cls(values["top_k"], values["seeds"], key, found)

    # --- what to confirm ---------------------------------------------------------------------------
    def candidates(self, trials, direction):
        """The top_k COMPLETE search trials that this sweep launched, best first. A warm start's copy of another
        study's trial (sweeper/starts.py) is none of them, however well it scored: it has no overrides to retrain
        with (its retraining would be the base config with a seed) and no run of this sweep."""
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get(LAUNCHED) and t.values
                and WARM_START_FROM not in t.user_attrs and not is_confirmation(t)]
        return sorted(done, key=lambda t: t.value, reverse=direction == "maximize")[:self.top_k]

    def seeds_of(self, sweep, trial):
        """seed_key's value in the trial's job config (its search seed) s -> [s+1, ..., s+seeds]."""
        try:
            base = int(OmegaConf.select(sweep.job_configs(launched_overrides(trial)), self.seed_key))
        except Exception:  # noqa: BLE001 - a trial of an older config that no longer composes: the sweep's seed
            base = self.base_seed
        return [base + i for i in range(1, self.seeds + 1)]

    @staticmethod
    def taken(trials):
        """(search trial, seed) of retrainings running or ended with a result (a crash included): not redone.
        One that was interrupted (FAIL without a reason) is trained again."""
        return {(t.user_attrs[CONFIRM_OF], t.user_attrs.get(SEED)) for t in trials if is_confirmation(t) and (
            t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED) or FAIL_REASON in t.user_attrs)}

    # --- the run -----------------------------------------------------------------------------------
    def run(self, sweep, study):
        """Train what is missing, through the sweep's Runner; returns the Outcome the summary prints."""
        trials = study.get_trials(deepcopy=False)
        chosen = self.candidates(trials, str(sweep.directions[0]).lower())
        if not chosen:
            log.warning("hydra.sweeper.confirm: no search trial completed, so there is nothing to confirm")
            return Outcome([], self.seeds, self.seed_key)
        plan = {t.number: self.seeds_of(sweep, t) for t in chosen}
        todo = self.todo(trials, chosen, plan)
        log.info(f"confirming the best {len(chosen)} configurations ({', '.join(f'#{t.number}' for t in chosen)}) "
                 f"with {self.seeds} new seeds each ({self.seed_key}): {len(todo)} runs to train, "
                 f"{len(chosen) * self.seeds - len(todo)} already in the study")
        runs = ConfirmRuns(sweep.tracking, sweep.parent)
        try:
            with sweep.interrupts_at_waits():
                self.train(sweep, study, chosen, plan, runs)
        except BaseException as err:  # KILLED: Ctrl-C or SIGTERM (signals.Terminated); FAILED: anything else
            runs.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        outcome = self.outcome(study.get_trials(deepcopy=False), chosen, plan, str(sweep.directions[0]).lower())
        runs.record(outcome, sweep.conf.objective_names)
        return outcome

    def todo(self, trials, chosen, plan):
        taken = self.taken(trials)
        return [(t, s) for t in chosen for s in plan[t.number] if (t.number, s) not in taken]

    def train(self, sweep, study, chosen, plan, runs):
        """Start what no worker has, into every free slot; record what ends; return once every planned run has
        ended. Another worker's retraining in flight is waited for: if that worker died, its trial is failed
        after grace_period (as a search trial is) and trained here."""
        runner, poll = sweep.runner, min(5.0, float(sweep.conf.heartbeat_interval))
        wanted = {(number, seed) for number, seeds in plan.items() for seed in seeds}
        while True:
            sweep.store.fail_dead_trials(study)
            if sweep.tracking is not None:  # ... and their MLflow runs, which their dead worker left RUNNING
                sweep.tracking.close_interrupted(study, sweep.parent)
            trials = study.get_trials(deepcopy=False)
            todo, batch = self.todo(trials, chosen, plan), []
            while todo and runner.room(len(batch)):
                trial, seed = todo.pop(0)
                proposal = self.start(sweep, study, trial, seed, runs.open(trial))
                batch.append(proposal)
                runner.start(proposal)
            results = runner.collect(batch, timeout=poll, wait=sweep.wait)
            for proposal, ret in results:
                sweep.store.record(study, proposal, ret, sweep.directions)
            if batch or results or runner.busy():
                continue
            elsewhere = [t for t in trials if is_confirmation(t) and t.state == TrialState.RUNNING
                         and (t.user_attrs[CONFIRM_OF], t.user_attrs.get(SEED)) in wanted]
            if not elsewhere:
                return
            sweep.wait(time.sleep, poll)

    def start(self, sweep, study, trial, seed, config_run):
        """Create the retraining's trial (RUNNING, its attrs with it, its heartbeat held) and its Proposal."""
        overrides = [o for o in launched_overrides(trial) if override_key(o) != self.seed_key]
        overrides.append(f"{self.seed_key}={seed}")
        template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={
            CONFIRM_OF: trial.number, SEED: seed, OVERRIDES: overrides})
        trial_id = sweep.storage.create_new_trial(sweep.study_id, template_trial=template)
        number = sweep.storage.get_trial_number_from_id(trial_id)
        sweep.heartbeats.hold(trial_id, number)
        # Never pruned (the pruner would judge a retraining against the search's trials, and Hydra refuses a
        # per-job hydra.sweeper): the job does not report. Its job run goes under its configuration's run.
        extra = [f"++hydra.job.env_set.{job_api.ENV_REPORT}='0'"]
        if config_run:
            extra.append(f"++hydra.job.env_set.{job_api.ENV_PARENT_RUN}={config_run}")
        log.info(f"  confirming #{trial.number} with {self.seed_key}={seed}: trial #{number}")
        return Proposal(ConfirmTrial(sweep.storage, trial_id, number), trial_id, overrides + extra, kind="confirm")

    def outcome(self, trials, chosen, plan, direction):
        """Per configuration the values of its retrainings (the first per seed), and the best by mean."""
        ended, runs = {}, {}
        for t in sorted(trials, key=lambda t: t.number):
            if not is_confirmation(t):
                continue
            runs.setdefault(t.user_attrs[CONFIRM_OF], {})[str(t.number)] = t.user_attrs.get(SEED)
            if t.state.is_finished() and (t.state != TrialState.FAIL or FAIL_REASON in t.user_attrs):
                ended.setdefault((t.user_attrs[CONFIRM_OF], t.user_attrs.get(SEED)), t)
        rows = []
        for trial in chosen:
            row = Row(trial, plan[trial.number], runs=runs.get(trial.number, {}))
            for seed in row.seeds:
                t = ended.get((trial.number, seed))
                if t is not None and t.state == TrialState.COMPLETE:
                    row.values.append(t.value)
                elif t is not None:
                    row.failed += 1
            rows.append(row)
        scored = [r for r in rows if r.values]
        sign = 1 if direction == "maximize" else -1
        best = max(scored, key=lambda r: (sign * r.mean, sign * r.trial.value)) if scored else None
        return Outcome(rows, self.seeds, self.seed_key, best)
