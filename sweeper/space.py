"""The search space: `hydra.sweeper.params` and the command line's sweep overrides, in the plugin's grammar."""
import itertools
import math

from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from errors import UsageError
from sweeper import conditions as conditions_mod
from sweeper.compat import distribution_from_override

MAX_ENUMERATED_CELLS = 100_000


class Space(dict):
    """{name: distribution} in drawing order, with `when`: {name: [Condition]} for the conditional keys
    (sweeper/conditions.py); a key without conditions is always drawn."""

    def __init__(self, *args, when=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.when = when or {}


def conditions_of(space):
    return getattr(space, "when", None) or {}


def parse(params, arguments, when=None):
    """-> (Space {name: distribution}, [fixed overrides]). Later entries win: the command line over the preset,
    and a plain value (`model.dropout=0.1`) takes its key out of the space. `when` (hydra.sweeper.when) makes
    keys conditional; it is checked against the space here."""
    if when is not None and not isinstance(when, dict):
        from omegaconf import OmegaConf
        when = OmegaConf.to_container(when, resolve=True) if OmegaConf.is_config(when) else when
        if not isinstance(when, dict):
            raise UsageError(f"hydra.sweeper.when={when}: must be a mapping of search-key globs to conditions")
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    space, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        try:
            value = distribution_from_override(override) if not override.is_delete() else None
        except ValueError as err:  # Optuna refuses a distribution whose bounds are the wrong way round
            raise UsageError(f"{override.input_line}: {str(err).splitlines()[0]} (interval(low,high) and "
                             f"range(low,high) take the lower bound first)") from None
        if isinstance(value, BaseDistribution):
            space[key] = value
            fixed.pop(key, None)
        else:
            fixed[key] = override.input_line
            space.pop(key, None)
    space = Space(space)
    space.when = conditions_mod.parse(when, space)
    return space, list(fixed.values())


def draw(trial, space):
    """Suggest the space's keys in order, each only if its conditions hold on those drawn before; -> {name: value}."""
    when, drawn = conditions_of(space), {}
    for name, distribution in space.items():
        if conditions_mod.active(when, name, drawn):
            drawn[name] = suggest(trial, name, distribution)
    return drawn


def suggest(trial, name, distribution):
    """Draw `name` from `distribution` on an asked trial, as `Study.ask(fixed_distributions)` does (the same
    distribution, so the same draw), through the public suggest methods."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step,
                                   log=distribution.log)
    raise TypeError(f"{name}: no suggest method for {distribution!r}")


def as_overrides(params):
    return [f"{name}={value}" for name, value in params.items()]


def params_key(params):
    """A hashable identity of one configuration (floats to 12 digits: 0.30000000000000004 is 0.3)."""
    return tuple(sorted((name, repr(round(value, 12) if isinstance(value, float) else value))
                        for name, value in params.items()))


def choices(distribution):
    """Every value of a discrete distribution (for the grid and for finite spaces); None if continuous."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution) and not distribution.log:
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:
        count = int(round((distribution.high - distribution.low) / distribution.step)) + 1
        return [min(distribution.high, round(distribution.low + i * distribution.step, 12)) for i in range(count)]
    return None


def grid(space):
    if conditions_of(space):
        raise ValueError("hydra/sweeper/sampler=grid needs a space without conditions (hydra.sweeper.when): "
                         "Optuna's grid draws every key of every cell; use sampler=random or tpe")
    found = {name: choices(dist) for name, dist in space.items()}
    continuous = [name for name, values in found.items() if values is None]
    if continuous:
        raise ValueError(f"hydra/sweeper/sampler=grid needs discrete values: {', '.join(continuous)} "
                         f"{'is' if len(continuous) == 1 else 'are'} continuous (use choice(...) or range(...))")
    return found


def size(space):
    """Number of distinct configurations of a finite space; None if any parameter is continuous (or, for a
    conditional space, if it has more than MAX_ENUMERATED_CELLS: never exhausted in practice)."""
    counts = [choices(dist) for dist in space.values()]
    if any(c is None for c in counts):
        return None
    if not conditions_of(space):
        return math.prod(len(c) for c in counts)
    # A conditional space: conditions read only some keys (the deciding ones), so walk their values alone and
    # multiply in the others' counts (search=family: 4 branches, not 100,000+ cells, which took 10 s).
    when, names = conditions_of(space), list(space)
    deciding = {key for conditions in when.values() for condition in conditions for key in condition.keys}

    def count(at, drawn):
        if at == len(names):
            return 1
        name = names[at]
        if not conditions_mod.active(when, name, drawn):
            return count(at + 1, drawn)
        values = choices(space[name])
        if name not in deciding:
            return len(values) * count(at + 1, drawn)
        total = 0
        for value in values:
            total += count(at + 1, {**drawn, name: value})
        return total
    return count(0, {})


def cells(space):
    """Every configuration of a finite space, conditions applied (an undrawn key is absent), in order."""
    when, names = conditions_of(space), list(space)
    if not when:
        for values in itertools.product(*(choices(space[n]) for n in names)):
            yield dict(zip(names, values))
        return

    def walk(at, drawn):
        if at == len(names):
            yield dict(drawn)
            return
        name = names[at]
        if not conditions_mod.active(when, name, drawn):
            yield from walk(at + 1, drawn)
            return
        for value in choices(space[name]):
            drawn[name] = value
            yield from walk(at + 1, drawn)
            del drawn[name]
    yield from walk(0, {})


def fits(name, distribution, value):
    """Is `value` one the distribution can give (one of its choices; within its bounds if continuous)?"""
    values = choices(distribution)
    if values is not None:
        return params_key({name: value}) in {params_key({name: v}) for v in values}
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return distribution.low <= value <= distribution.high


def _allowed(space, name):
    """The params_key of each of a discrete key's values (None if continuous), kept on the space: the proposer
    asks for every trial of the study at every proposal (2,000 proposals of search=family: 10 minutes without)."""
    memo = getattr(space, "_allowed", None)
    if memo is None:
        memo = {}
        try:
            space._allowed = memo
        except AttributeError:  # a plain dict: computed each time
            pass
    if name not in memo:
        values = choices(space[name])
        memo[name] = None if values is None else {params_key({name: v}) for v in values}
    return memo[name]


def in_space(space, params):
    """Do these params name exactly the keys the space draws for them (its conditions applied, in order), each
    value one of its choices (if discrete)?"""
    when, drawn = conditions_of(space), {}
    for name in space:
        if not conditions_mod.active(when, name, drawn):
            continue
        if name not in params:
            return False
        allowed = _allowed(space, name)
        if allowed is not None and params_key({name: params[name]}) not in allowed:
            return False
        drawn[name] = params[name]
    return set(params) == set(drawn)


def changed_keys(space, trials):
    """The keys on which `trials` (a resumed study's) differ from `space`: drawn then but not searched now,
    drawn from another distribution, or searched now (unconditionally) but drawn by none of them; sorted."""
    changed = {name for trial in trials for name, distribution in trial.distributions.items()
               if space.get(name) != distribution}
    drawn = {name for trial in trials for name in trial.distributions}
    when = conditions_of(space)
    changed.update(name for name in space if trials and name not in drawn and not when.get(name))
    return sorted(changed)


def unseen_cell(space, seen, rng):
    """A random configuration of a finite space whose key is not in `seen`, or None."""
    if (size(space) or MAX_ENUMERATED_CELLS + 1) > MAX_ENUMERATED_CELLS:
        return None
    found = [cell for cell in cells(space) if params_key(cell) not in seen]
    return rng.choice(found) if found else None


def missing_keys(space, base_cfg, is_group):
    """Search-space keys that are plain values (not config groups) but not in the composed config."""
    from omegaconf import OmegaConf
    missing = []
    for name in space:
        if name.startswith(("+", "~")) or is_group(name):
            continue
        if OmegaConf.select(base_cfg, name.lstrip("+"), default=_ABSENT, throw_on_missing=False) is _ABSENT:
            missing.append(name)
    return missing


_ABSENT = object()
