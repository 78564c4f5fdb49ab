"""The plugin: its config (group `hydra/sweeper`, name `constrained_optuna`) and the Sweeper class.

Everything heavy (optuna, mlflow, the sweep loop in sweeper/core.py) is imported in `setup`, when a
sweep actually starts: Hydra imports this module at every start of every app that has it installed.
"""
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf


@dataclass
class ConstrainedOptunaSweeperConf(OptunaSweeperConf):
    """The upstream keys (sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate,
    params, custom_search_space) mean what they mean there; these are added."""

    _target_: str = "hydra_plugins.constrained_optuna_sweeper.constrained_optuna_sweeper.ConstrainedOptunaSweeper"
    # name -> {_target_: callable(job_cfg) -> amount over budget | None | (amount, measured value)}
    constraints: dict[str, Any] = field(default_factory=dict)
    # {name: median, n_startup_trials: 3, ...} or {_target_: optuna.pruners.X, ...}; jobs report via sweeper.job
    pruner: Any = None
    # {_target_: callable(job_cfg)}: run once before the first trial; if it raises, `error: ...`, exit 2
    preflight: Any = None
    # {tracking_uri: ..., experiment: ..., register_best: null | name}: one MLflow parent run per study, trials as
    # its children; register_best registers the best trial's model (its run's model_uri tag) under that name
    mlflow: Any = None
    # null: batches of n_jobs through hydra/launcher; auto | [0, 1, ...]: a pool of devices x trials_per_device
    devices: Any = None
    trials_per_device: int = 1
    # true: propose n_trials configurations, print them, train and write nothing; stats: print only the share
    # within budget and quartiles of what fits (sweeper/preview.py)
    preview: Any = False
    max_proposals_per_trial: int = 50   # over budget / invalid / repeats in a row before the sweep gives up
    heartbeat_interval: int = 10        # seconds between heartbeats of every trial this worker holds
    grace_period: int = 60              # a trial silent this long is taken as dead and proposed again (> heartbeat_interval)
    objective_names: Any = None         # names for the summary and plots, e.g. [val_acc, num_params]
    # after the search, retrain the best top_k configurations with `seeds` new seeds each (seed_key: the job
    # config's seed) and choose the best by their mean; top_k: 0 is off (sweeper/confirm.py)
    confirm: Any = field(default_factory=lambda: {"top_k": 0, "seeds": 3, "seed_key": "seed"})
    # {search-key glob: condition on keys drawn before}: the key is drawn only when it holds (sweeper/conditions.py)
    when: dict[str, str] = field(default_factory=dict)
    # {config group: option} the search needs (e.g. {model: family}); any other choice: `error: ...`, exit 2
    requires: dict[str, str] = field(default_factory=dict)
    # globs of job-config keys that change nothing built or trained (mlflow.*, dry_run): two proposals whose
    # configs differ only there are one configuration, the second a repeat (sweeper/reduce.py)
    ignored_keys: list[str] = field(default_factory=list)
    # [{search key: value, ...}, ...]: configurations that run first, each tagged `baseline` (sweeper/starts.py)
    enqueue: list[Any] = field(default_factory=list)
    # <study> (same storage) | <storage URL>#<study>: its finished trials are copied in before the first proposal
    warm_start: Optional[str] = None


ConfigStore.instance().store(group="hydra/sweeper", name="constrained_optuna", node=ConstrainedOptunaSweeperConf,
                             provider="constrained_optuna_sweeper")


class ConstrainedOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.impl = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from sweeper.core import ConstrainedSweep
        self.impl = ConstrainedSweep(self.settings, hydra_context=hydra_context, task_function=task_function,
                                     config=config)

    def sweep(self, arguments):
        return self.impl.sweep(arguments)
