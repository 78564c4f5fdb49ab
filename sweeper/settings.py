"""The sweeper's settings as the plugin's dataclass types them (hydra_plugins/constrained_optuna_sweeper):
the defaults are there and only there; this module checks names and the values that cannot work."""
import re
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


def check_all(conf):
    """Every hydra.sweeper value that cannot work, as one UsageError, before anything is opened or started."""
    check_heartbeats(conf)
    check_counts(conf)
    for check in (check_directions, check_devices, check_storage, check_names, check_blocks):
        check(conf)


def _fail(key, value, allowed):
    from sweeper.secrets import mask_url
    raise UsageError(f"hydra.sweeper.{key}={mask_url(str(value))}: {allowed}")


def check_directions(conf):
    names = directions(conf)
    if not names or any(name not in ("minimize", "maximize") for name in names):
        _fail("direction", conf.direction, "must be minimize, maximize, or a list of them (one per objective)")
    objective_names = conf.objective_names
    if objective_names is None:
        return
    if not isinstance(objective_names, list) or any(not isinstance(n, str) or not n.strip() for n in objective_names) \
            or len(set(objective_names)) != len(objective_names):
        _fail("objective_names", objective_names, "must be a list of distinct names, one per objective, or null")
    # The project's preset names two objectives for a sweep that may have one: more names than objectives are
    # allowed (the first ones are used); fewer leave an objective without a name.
    if len(objective_names) < len(names):
        _fail("objective_names", objective_names, f"must name each of the {len(names)} objectives of "
                                                  f"hydra.sweeper.direction={names}")


def check_devices(conf):
    """null (batches through hydra/launcher), auto, or distinct non-negative device ids (a single id is a list of one)."""
    devices = conf.devices
    if devices is None or (isinstance(devices, str) and devices.strip() == "auto"):
        return
    ids = devices if isinstance(devices, list) else [devices]
    if not ids or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in ids) or len(set(ids)) != len(ids):
        _fail("devices", devices, "must be auto, a list of distinct device ids (integers >= 0) such as [0,1], "
                                  "or null (trials go through hydra/launcher)")


# `dialect[+driver]://...` (SQLAlchemy), or `journal:<file>` (Optuna's JournalStorage on a shared file system).
_DATABASE_URL = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\+[A-Za-z0-9_]+)?://")
# SQLite in memory: a database of one connection pool, so each job would open an empty one of its own.
_SQLITE_IN_MEMORY = re.compile(r"^sqlite(\+[A-Za-z0-9_]+)?://(/(:memory:)?)?(\?.*)?$")


def check_storage(conf):
    storage = conf.storage
    if storage is None or storage == "":
        return
    allowed = ("must be a database URL (sqlite:///optuna.db, postgresql://host/db), journal:<file> (a journal "
               "file on a shared file system), or null (in this process's memory)")
    if not isinstance(storage, str):
        _fail("storage", storage, allowed)
    if storage.startswith("journal:"):
        if not storage[len("journal:"):].strip():
            _fail("storage", storage, "journal: needs a file, e.g. journal:/shared/optuna.journal")
        return
    if _SQLITE_IN_MEMORY.match(storage.strip()):
        _fail("storage", storage, "an in-memory SQLite database is one process's: its jobs could not report to it; "
                                  "use sqlite:///<file> (e.g. sqlite:///optuna.db), or null for this process's memory")
    if not _DATABASE_URL.match(storage):
        # No scheme, so mask_url does not see the password in `user:password@host`: hide it here.
        _fail("storage", re.sub(r":[^:@/]*@", ":***@", storage), allowed)


def check_names(conf):
    if conf.study_name is not None and (not isinstance(conf.study_name, str) or not conf.study_name.strip()):
        _fail("study_name", conf.study_name, "must be a non-empty name, or null (Optuna picks one)")
    rate = conf.max_failure_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        _fail("max_failure_rate", rate, "must be a number from 0 to 1 (the share of trials that may crash)")
    if not (isinstance(conf.preview, bool) or conf.preview == "stats"):
        _fail("preview", conf.preview, "use true (one line per proposal), stats (the share within budget and "
                                       "quartiles of what fits) or false")
    if conf.custom_search_space is not None and (not isinstance(conf.custom_search_space, str)
                                                 or not conf.custom_search_space.strip()):
        _fail("custom_search_space", conf.custom_search_space, "must be the dotted name of a function, or null")


def check_blocks(conf):
    """The nested settings: params a mapping; constraints and preflight built from `_target_`s; pruner and mlflow mappings."""
    if conf.params is not None and not isinstance(conf.params, dict):
        _fail("params", conf.params, "must be a mapping of config keys to search expressions")
    if not isinstance(conf.constraints or {}, dict):
        _fail("constraints", conf.constraints, "must be a mapping of names to {_target_: function}")
    for name, spec in (conf.constraints or {}).items():
        if not isinstance(spec, dict) or not isinstance(spec.get("_target_"), str):
            _fail(f"constraints.{name}", spec, "must be {_target_: function}")
    if conf.preflight is not None and (not isinstance(conf.preflight, dict)
                                       or not isinstance(conf.preflight.get("_target_"), str)):
        _fail("preflight", conf.preflight, "must be {_target_: function}, or null")
    if conf.pruner is not None and not isinstance(conf.pruner, dict):
        _fail("pruner", conf.pruner, "must be {name: median, ...}, {_target_: optuna.pruners.X, ...}, or null")
    if conf.mlflow is not None and not isinstance(conf.mlflow, dict):
        _fail("mlflow", conf.mlflow, "must be {tracking_uri: ..., experiment: ...}, or null")


def check_counts(conf):
    """The counts a sweep runs by: each a whole number >= 1 (0 slots per device waited for a free slot forever;
    a negative n_trials ended at once, exit 0, having done nothing)."""
    for key in ("n_trials", "n_jobs", "trials_per_device", "max_proposals_per_trial"):
        value = getattr(conf, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"hydra.sweeper.{key}={value}: must be an integer >= 1")
