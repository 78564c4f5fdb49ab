"""The Hydra Optuna sweeper, extended for budgeted architecture search.

What the plugin (hydra-optuna-sweeper 1.4) does not do, and this subclass adds:
- every proposal is counted (meta device, milliseconds) before launch; an over-budget one is never
  launched, only recorded (user attrs `num_params`, `infeasible`, and a constraint the sampler learns from);
- `n_trials` counts trials that trained, across re-runs of the same study (resume) and across workers;
- jobs learn their trial's identity (`sweep.*` keys), report validation accuracy per epoch and get
  pruned; pruned and diverged trials are recorded as such and the sweep goes on;
- one MLflow parent run per study, the trials as its children, the best trial's summary on the parent.

It reuses the plugin's search-space parsing and trial configuration and replaces only the sweep loop.
"""
import functools
import logging
import math
import time

import optuna
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import OmegaConf
from optuna.trial import TrialState

from models import ModelConfigError, param_report
from sweeper import report as sweep_report
from sweeper.compose import JobConfigs
from sweeper.trial import DivergedError, Pruned, TrialPruned, open_storage

log = logging.getLogger(__name__)

SAMPLER_WHITELIST = ("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")


def tell(study, trial, **kwargs):
    """study.tell, except that GridSampler's end-of-grid study.stop() is not an error outside optimize()."""
    try:
        study.tell(trial, **kwargs)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


class SweepError(RuntimeError):
    """A sweep that cannot go on; the message says why and what to change."""


class ConstrainedOptunaSweeper(OptunaSweeper):
    def __init__(self, sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate,
                 custom_search_space, params, pruner=None, max_proposals_per_trial=50,
                 heartbeat_interval=10, grace_period=60):
        self.sweeper = ConstrainedSweeperImpl(
            instantiate(sampler, _execution_whitelist_=SAMPLER_WHITELIST), direction, storage, study_name,
            n_trials, n_jobs, max_failure_rate, custom_search_space, params)
        self.sweeper.pruner = OmegaConf.to_container(pruner, resolve=True) if pruner is not None else None
        self.sweeper.max_proposals_per_trial = max_proposals_per_trial
        self.sweeper.heartbeat = (heartbeat_interval, grace_period)


class ConstrainedSweeperImpl(OptunaSweeperImpl):
    pruner = None
    max_proposals_per_trial = 50
    heartbeat = (10, 60)

    # --- proposals -----------------------------------------------------------------------------
    def count_params(self, overrides):
        """Compose the trial's job config and count its model: (num_params, budget, error or None)."""
        job_cfg = self.job_configs(overrides)
        try:
            report = param_report(job_cfg)
        except ModelConfigError as err:
            return None, int(job_cfg.budget.max_params), str(err)
        return report.total, report.budget, None

    def propose(self, study, space, fixed_params, fixed_overrides):
        """Ask until a proposal fits the budget. Over-budget ones are told to the study, never launched."""
        for _ in range(self.max_proposals_per_trial):
            trial = study.ask()
            self.storage_obj.record_heartbeat(trial._trial_id)  # so a sweep killed right now leaves a stale trial
            overrides = self._configure_trials([trial], space, fixed_params, fixed_overrides)[0]
            num_params, budget, error = self.count_params(overrides)
            if error is None and num_params <= budget:
                trial.set_user_attr("num_params", num_params)
                trial.set_constraint("params_over_budget", num_params - budget)
                return trial, overrides, num_params
            self.infeasible += 1
            over = budget if num_params is None else num_params - budget
            trial.set_user_attr("num_params", num_params if num_params is not None else -1)
            trial.set_user_attr("infeasible", True)
            trial.set_user_attr("reason", error or f"{num_params:,} parameters > budget {budget:,}")
            trial.set_constraint("params_over_budget", max(over, 1))
            tell(study, trial, values=self.worst_values(num_params or budget))
            log.info(f"  proposal #{trial.number} not launched: {error or f'{num_params:,} parameters'} "
                     f"({' '.join(overrides[:len(trial.params)])})")
        raise SweepError(
            f"{self.max_proposals_per_trial} proposals in a row were over budget or invalid, so the sweep "
            f"stopped instead of spinning. Shrink the search space (fewer blocks or channels), raise "
            f"budget.max_params, or raise hydra.sweeper.max_proposals_per_trial.")

    def worst_values(self, num_params):
        """Values for a trial that never trained: the worst accuracy and, if asked, its size."""
        directions = self._get_directions()
        values = [0.0 if directions[0] == "maximize" else float("inf")]
        return values + [float(num_params)] * (len(directions) - 1)

    # --- bookkeeping across re-runs and workers ---------------------------------------------------
    @staticmethod
    def trained(study):
        """Launched trials that ended (complete, pruned, diverged or failed); interrupted ones don't count."""
        return sum(1 for t in study.get_trials(deepcopy=False)
                   if t.user_attrs.get("launched") and t.state.is_finished()
                   and (t.state != TrialState.FAIL or "fail_reason" in t.user_attrs))

    @staticmethod
    def in_flight(study):
        return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if t.user_attrs.get("launched"))

    def fail_stale(self, study):
        """Trials whose job stopped sending heartbeats (a killed sweep) become FAIL, to be replaced."""
        optuna.storages.fail_stale_trials(study)

    def withdraw_surplus(self, study, proposals):
        """Two workers can both see the last slot free and both propose: the higher trial number gives way.

        Ahead of a proposal: the trials already trained and every running trial with a lower number
        (another worker's proposal included, launched or not), so the lowest-numbered always goes on.
        """
        trials = study.get_trials(deepcopy=False)
        kept = []
        for trial, overrides, num_params in proposals:
            ahead = self.trained(study) + sum(1 for t in trials if t.state == TrialState.RUNNING
                                              and t.number < trial.number)
            if ahead < self.n_trials:
                kept.append((trial, overrides, num_params))
            else:
                trial.set_user_attr("withdrawn", True)
                tell(study, trial, state=TrialState.FAIL)
                log.info(f"  proposal #{trial.number} withdrawn: another worker took the last trial")
        return kept

    def slots(self, study):
        """How many trials this worker may launch now; waits while other workers' trials run."""
        while True:
            self.fail_stale(study)
            left = self.n_trials - self.trained(study) - self.in_flight(study)
            if left > 0 or self.in_flight(study) == 0:
                return max(0, min(self.n_jobs, left))
            time.sleep(min(5.0, self.heartbeat[0]))

    # --- the loop ------------------------------------------------------------------------------
    def sweep(self, arguments):
        self._process_searchspace_config()
        space, fixed_params, fixed_overrides = create_params_from_overrides(
            self._parse_sweeper_params_config() + list(arguments))
        for name in fixed_params:
            space.pop(name, None)
        if not space:
            raise SweepError("the search space is empty: give hydra/sweeper/search=NAME or hydra.sweeper.params, "
                             "or sweep overrides such as model.dropout='interval(0,0.3)'")
        if isinstance(self.sampler, functools.partial) and self.sampler.func == optuna.samplers.GridSampler:
            grid = {name: self._to_grid_sampler_choices(dist) for name, dist in space.items()}
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(choices) for choices in grid.values()))
        self.job_configs = JobConfigs(self.hydra_context.config_loader, self.config)
        self.storage_url = self.storage or f"sqlite:///{self.config.hydra.sweep.dir}/optuna.db"
        self.storage_obj = open_storage(self.storage_url, *self.heartbeat)
        directions = self._get_directions()
        study = optuna.create_study(study_name=self.study_name, storage=self.storage_obj, sampler=self.sampler,
                                    directions=directions, load_if_exists=True)
        parent = sweep_report.parent_run(self.config, study)
        log.info(f"Study {study.study_name} in {self.storage_url} | sampler {type(self.sampler).__name__} | "
                 f"directions {directions} | pruner {(self.pruner or {}).get('name', 'none')} | "
                 f"MLflow parent run {parent}")
        already = self.trained(study)
        if already:
            log.info(f"resuming: {already} of {self.n_trials} trials already trained")
        self.infeasible, started = 0, time.perf_counter()
        identity = [f"sweep.study_name='{study.study_name}'", f"sweep.storage='{self.storage_url}'",
                    f"sweep.parent_run_id={parent}"]
        while batch := self.slots(study):
            try:
                proposals = [self.propose(study, space, fixed_params, fixed_overrides) for _ in range(batch)]
            except SweepError:
                sweep_report.finish_parent(self.config, parent, status="FAILED")
                raise
            proposals = self.withdraw_surplus(study, proposals)
            if not proposals:
                continue
            jobs = []
            for trial, overrides, num_params in proposals:
                trial.set_user_attr("launched", True)
                trial.set_user_attr("overrides", " ".join(overrides))
                jobs.append(tuple(overrides) + tuple(identity) + (f"sweep.trial_id={trial._trial_id}",
                                                                  f"sweep.trial_number={trial.number}"))
            returns = self.launcher.launch(jobs, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            errors = [err for (trial, _, n), ret in zip(proposals, returns)
                      if (err := self.record(study, trial, ret, n)) is not None]
            done = self.trained(study)
            log.info(f"[{done}/{self.n_trials} trained | {self.infeasible} over-budget proposals skipped | "
                     f"{time.perf_counter() - started:.0f}s]")
            if errors and len(errors) / len(returns) > self.max_failure_rate:
                sweep_report.finish_parent(self.config, parent, status="FAILED")
                raise errors[0]
        sweep_report.close_interrupted(self.config, study, parent)
        sweep_report.summarize(self.config, study, parent, directions, self.infeasible,
                               self.hydra_context.config_loader)

    def record(self, study, trial, ret, num_params):
        """Tell the study how a launched trial ended. Returns the exception for real failures."""
        try:
            value = ret.return_value
            if isinstance(value, Pruned):
                raise TrialPruned(value.message)
        except TrialPruned as err:
            tell(study, trial, state=TrialState.PRUNED)
            log.info(f"  {err}")
            return None
        except DivergedError as err:
            trial.set_user_attr("fail_reason", f"diverged: {err}")
            tell(study, trial, state=TrialState.FAIL)
            log.warning(f"  trial #{trial.number} diverged: {err}")
            return None
        except Exception as err:  # noqa: BLE001 - every job error is recorded, then judged by max_failure_rate
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}"[:1000])
            tell(study, trial, state=TrialState.FAIL)
            log.warning(f"  trial #{trial.number} failed: {type(err).__name__}: {err}")
            return err
        values = [float(value)] + [float(num_params)] * (len(self._get_directions()) - 1)
        tell(study, trial, values=values)
        log.info(f"  trial #{trial.number}: value {float(value):.4f}, {num_params:,} parameters")
        return None
