"""Setting a sweep up from the plugin's settings: secrets masked, the base job config checked against the
search space, and the extender, preflight and sampler built; each problem is one UsageError line."""
import optuna
from omegaconf import OmegaConf, open_dict, read_write

from errors import UsageError
from sweeper import secrets, settings as settings_mod, space as space_mod, targets
from sweeper.sampler import ConstrainedSampler

SAMPLER_WHITELIST = ("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")


def _strings(container, prefix=""):
    """(dotted path, value) of every string in a nested dict/list container."""
    items = container.items() if isinstance(container, dict) else enumerate(container or [])
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            yield from _strings(value, f"{path}.")
        elif isinstance(value, str):
            yield path, value


def build(make, *args):
    """make(*args); its ValueError or TypeError (a bad setting, a _target_ that cannot be built) as a UsageError."""
    try:
        return make(*args)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from err

def hide_secrets(config, conf, arguments):
    """Remember real URLs (for this process and its jobs) and mask them in everything passed on."""
    overrides = config.hydra.overrides
    secrets.remember(conf.storage, (conf.mlflow or {}).get("tracking_uri"), *arguments,
                     *overrides.hydra, *overrides.task)
    with read_write(overrides), open_dict(overrides):
        overrides.hydra = [secrets.mask_url(o) for o in overrides.hydra]
        overrides.task = [secrets.mask_url(o) for o in overrides.task]
    # Jobs are composed from the masked overrides, and Hydra requires their hydra.sweeper to equal this one.
    node = config.hydra.sweeper
    for path, value in _strings(OmegaConf.to_container(node, resolve=False)):
        if secrets.has_password(value):
            with read_write(node), open_dict(node):
                OmegaConf.update(node, path, secrets.mask_url(value), merge=False)
    return [secrets.mask_url(a) for a in arguments]

def requires(conf, config):
    """hydra.sweeper.requires ({group: option}) against the config's own choices: a search preset made for one
    config (search=family for model=family) says so in one line instead of failing on its first missing key."""
    choices = OmegaConf.select(config, "hydra.runtime.choices", default=None) or {}
    preset = choices.get("hydra/sweeper/search")
    for group, option in (conf.requires or {}).items():
        if str(choices.get(group)) != str(option):
            raise UsageError(
                f"hydra.sweeper.requires.{group}={option}: "
                + (f"hydra/sweeper/search={preset} " if preset else "this search ")
                + f"searches keys of {group}={option}, but the config has {group}={choices.get(group)}: "
                  f"add {group}={option} to the command line")


def extender(conf, whitelist):
    """hydra.sweeper.custom_search_space as a callable(config, trial), or None."""
    if not conf.custom_search_space:
        return None
    return build(targets.build, "hydra.sweeper.custom_search_space",
                      {"_target_": conf.custom_search_space, "_partial_": True}, whitelist)

def base_config(job_configs, fixed, space, config):
    """The job config without search values; every plain search key must be in it."""
    try:
        base = job_configs(fixed)
    except Exception as err:
        raise UsageError(f"the sweep's fixed overrides do not compose: {str(err).splitlines()[0]}") from err
    missing = space_mod.missing_keys(space, base, job_configs.is_group)
    if missing:
        choices = config.hydra.runtime.choices
        groups = [f"{g}={choices[g]}" for g in dict.fromkeys(k.split(".")[0] for k in missing) if g in choices]
        raise UsageError(
            f"hydra.sweeper.params: {', '.join(repr(k) for k in missing)} "
            f"{'is not a key' if len(missing) == 1 else 'are not keys'} of the config"
            + (f" ({', '.join(groups)})" if groups else "")
            + ": add it to that config, or search other keys (a hydra/sweeper/search preset that fits, "
              "or the space on the command line)")
    return base

def preflight(conf, whitelist, base):
    """Run hydra.sweeper.preflight on the base job config; what it raises stops the sweep (UsageError)."""
    if not conf.preflight:
        return
    spec = dict(conf.preflight)
    spec.setdefault("_partial_", True)
    check = build(targets.build, "hydra.sweeper.preflight._target_", spec, whitelist)
    try:
        check(base)
    except Exception as err:  # noqa: BLE001 - the check's own message says what to change
        raise UsageError(str(err).strip() or type(err).__name__) from err

def sampler(conf, space):
    """(the ConstrainedSampler around hydra.sweeper.sampler, the GridSampler inside it or None)."""
    spec = dict(settings_mod.sampler_spec(conf) or {"_target_": "optuna.samplers.TPESampler"})
    inner = build(targets.build, "hydra.sweeper.sampler._target_", spec, SAMPLER_WHITELIST)
    grid = None
    if callable(inner) and getattr(inner, "func", None) is optuna.samplers.GridSampler:
        try:
            choices = space_mod.grid(space)
        except ValueError as err:
            raise UsageError(str(err)) from err
        inner = grid = inner(choices)
    return ConstrainedSampler(inner, n_startup_trials=spec.get("n_startup_trials", 0), seed=spec.get("seed")), grid
