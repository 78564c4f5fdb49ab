"""The sweeper's settings as the plugin's dataclass types them (hydra_plugins/constrained_optuna_sweeper):
the defaults are there and only there; this module checks names and the values that cannot work."""
from dataclasses import fields

from omegaconf import MISSING, OmegaConf

from errors import UsageError
from hydra_plugins.constrained_optuna_sweeper.constrained_optuna_sweeper import ConstrainedOptunaSweeperConf

# Every key of hydra.sweeper (`_target_` is Hydra's, and a defaults list is gone once the config is composed).
NAMES = tuple(f.name for f in fields(ConstrainedOptunaSweeperConf) if f.name not in ("_target_", "defaults"))
# Read as plain, resolved dicts and lists; the sampler stays as Hydra passes it (its _target_ is built later).
PLAIN = ("params", "constraints", "pruner", "preflight", "mlflow", "devices", "objective_names")


def typed(settings):
    """The keyword arguments Hydra instantiated the plugin with (or a test's dict, which may leave keys out)
    as a ConstrainedOptunaSweeperConf."""
    unknown = set(settings) - set(NAMES)
    if unknown:
        raise ValueError(f"hydra.sweeper: unknown keys {sorted(unknown)}; allowed: {sorted(NAMES)}")
    values = dict(settings)
    for key in PLAIN:
        if OmegaConf.is_config(values.get(key)):
            values[key] = OmegaConf.to_container(values[key], resolve=True)
    if OmegaConf.is_config(values.get("direction")):
        values["direction"] = OmegaConf.to_container(values["direction"])
    return ConstrainedOptunaSweeperConf(**values)


def sampler_spec(conf):
    """hydra.sweeper.sampler, or None for the default (TPE). Composed by Hydra it is always set (the upstream
    defaults list picks `sampler: tpe`); a sweep built from a dict without it leaves the dataclass's MISSING."""
    sampler = conf.sampler
    return None if sampler is None or (isinstance(sampler, str) and sampler == MISSING) else sampler


def directions(conf):
    """hydra.sweeper.direction as a list of names (`minimize`, `maximize`), one per objective."""
    direction = conf.direction
    return [getattr(d, "name", d) for d in (direction if isinstance(direction, list) else [direction])]


def check_heartbeats(conf):
    interval, grace = conf.heartbeat_interval, conf.grace_period
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
        raise UsageError(f"hydra.sweeper.heartbeat_interval={interval}: must be a number of seconds > 0")
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not grace > interval:
        raise UsageError(f"hydra.sweeper.grace_period={grace}: must be longer than hydra.sweeper.heartbeat_interval "
                         f"({interval} s), or a live trial is taken for dead between two of its heartbeats")


def check_counts(conf):
    """The counts a sweep runs by: each a whole number >= 1 (0 slots per device waited for a free slot forever;
    a negative n_trials ended at once, exit 0, having done nothing)."""
    for key in ("n_trials", "n_jobs", "trials_per_device", "max_proposals_per_trial"):
        value = getattr(conf, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"hydra.sweeper.{key}={value}: must be an integer >= 1")
