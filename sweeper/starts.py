"""What a study starts with: baselines (hydra.sweeper.enqueue) and a warm start (hydra.sweeper.warm_start).

    enqueue: [{model.dropout: 0.05}, {model.dropout: 0.2, model.width_mult: 0.75}]
    warm_start: family-search-v1                     # a study in the same storage
    warm_start: sqlite:///old.db#family-search-v1    # or <storage URL>#<study> (journal:<file>#<study> too)

Each `enqueue` entry is a mapping of search keys to values, run first in its order (Optuna's enqueue_trial:
keys it leaves out are drawn as usual) and tagged `baseline` (user attr, and the MLflow run's tag). A
resumed study does not enqueue an entry again once a trial of it exists. `warm_start` copies the finished
trials of another study (COMPLETE and PRUNED with their values, over-budget and invalid placeholders with
their constraints) into the new study before the first proposal, with this space's distributions, so the
sampler starts informed. A copied trial has the user attr `warm_start_from` (`<study>#<number>`), is not one
of this study's trained trials (n_trials counts only trials trained here) and is not a repeat to avoid: the
new study measures for itself. Trials whose keys or values do not fit this space are skipped and counted.
Both are checked before the first trial: an unknown key, a value outside the space or a study that cannot be
read is one `error:` line.
"""
import logging
import os

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from errors import UsageError
from sweeper import conditions as conditions_mod, secrets, space as space_mod
from sweeper.records import (BASELINE, CHECKPOINT, CONCURRENT, CONFIG_DIGEST, INTERRUPTED, LAUNCHED, MLFLOW_RUN_ID,
                             OVERRIDES, REPEAT_OF, RESUMES, WARM_START_FROM)
from sweeper.sampler import is_placeholder
from sweeper.stores import journal_path, loadable, sqlite_path

log = logging.getLogger(__name__)

# A copy keeps what the sampler and a reader use, not the source run's bookkeeping: its launch, its job's checkpoint
# and MLflow run, and trial numbers of the source study (`resumes=N` would mark this study's trial N as replaced).
NOT_COPIED = (LAUNCHED, OVERRIDES, INTERRUPTED, REPEAT_OF, CONCURRENT, CONFIG_DIGEST, RESUMES, CHECKPOINT,
              MLFLOW_RUN_ID)


class Starts:
    def __init__(self, entries, source_url=None, source_name=None):
        self.entries, self.source_url, self.source_name = entries, source_url, source_name


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def check(conf, space):
    """Starts from hydra.sweeper.enqueue and warm_start, checked against the space; UsageError otherwise."""
    entries = _plain(getattr(conf, "enqueue", None)) or []
    if not isinstance(entries, list):
        entries = [entries]
    checked = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry:
            raise UsageError(f"hydra.sweeper.enqueue[{index}]={entry}: must be a mapping of search keys to values, "
                             f"e.g. [{{model.dropout: 0.05}}]")
        for key, value in entry.items():
            line = f"hydra.sweeper.enqueue[{index}].{key}={value}"
            if key not in space:
                raise UsageError(f"{line}: not a search key (the search keys: {', '.join(space) or 'none'})")
            distribution = space[key]
            if not space_mod.fits(key, distribution, value):
                allowed = space_mod.choices(distribution)
                allowed = (", ".join(map(str, allowed)) if allowed is not None
                           else f"{distribution.low} to {distribution.high}")
                raise UsageError(f"{line}: outside the search space ({key}: {allowed})")
        drawn = {}
        for key in space:  # a key given whose condition the entry's own values rule out would be dropped silently
            when = space_mod.conditions_of(space).get(key, [])
            readable = all(k in entry for c in when for k in c.keys)
            if key in entry and readable and not conditions_mod.active(space_mod.conditions_of(space), key, drawn):
                raise UsageError(f"hydra.sweeper.enqueue[{index}].{key}={entry[key]}: not drawn with these values "
                                 f"({' and '.join(c.text for c in when)} does not hold)")
            if key in entry:
                drawn[key] = entry[key]
        checked.append(dict(entry))
    warm = getattr(conf, "warm_start", None)
    if not warm:
        return Starts(checked)
    url, _, name = str(warm).rpartition("#") if "#" in str(warm) else (conf.storage, "", str(warm))
    real = secrets.reveal(url) if url else url
    if not real:
        raise UsageError(f"hydra.sweeper.warm_start={secrets.mask_url(str(warm))}: the study needs a storage: "
                         f"give <storage URL>#<study>, or set hydra.sweeper.storage")
    path = sqlite_path(real)
    if path is not None and not os.path.exists(path):  # load_study would create an empty database there
        raise UsageError(f"hydra.sweeper.warm_start={secrets.mask_url(str(warm))}: no database at {path}: "
                         f"give a study of the same storage, or <storage URL>#<study>")
    path = journal_path(real)
    if path is not None and not os.path.exists(path):  # opening it would create an empty journal there
        raise UsageError(f"hydra.sweeper.warm_start={secrets.mask_url(str(warm))}: no journal at {path}: "
                         f"give a study of the same storage, or <storage URL>#<study>")
    try:
        optuna.load_study(study_name=name, storage=loadable(real))
    except Exception as err:  # noqa: BLE001 - no such study, or a storage that cannot be read
        reason = secrets.mask_url(str(err)).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"hydra.sweeper.warm_start={secrets.mask_url(str(warm))}: cannot read study {name!r} "
                         f"({reason}): give a study of the same storage, or <storage URL>#<study>") from None
    return Starts(checked, real, name)


def _copy(trial, space, label):
    """The trial rebuilt with this space's distributions, or None if its keys or values do not fit it."""
    if not space_mod.in_space(space, trial.params):
        return None
    if any(not space_mod.fits(k, space[k], v) for k, v in trial.params.items()):
        return None
    attrs = {k: v for k, v in trial.user_attrs.items() if k not in NOT_COPIED}
    attrs[WARM_START_FROM] = label
    system = {k: v for k, v in trial.system_attrs.items() if k == "constraints"}
    return optuna.trial.create_trial(
        state=trial.state, params=dict(trial.params), distributions={k: space[k] for k in trial.params},
        values=trial.values if trial.state == TrialState.COMPLETE else None, user_attrs=attrs, system_attrs=system,
        intermediate_values=dict(trial.intermediate_values))


def warm_start(study, starts, space):
    """Copy the source study's finished trials into `study` (once: a resumed study is not copied into again).
    Returns (copied, skipped), or None when there was nothing to do."""
    if not starts.source_name or study.user_attrs.get(WARM_START_FROM):
        return None
    source = optuna.load_study(study_name=starts.source_name, storage=loadable(starts.source_url))
    copies, skipped = [], 0
    for trial in source.get_trials(deepcopy=False):
        if not (trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or is_placeholder(trial)):
            continue  # running, waiting, crashed or a repeat: nothing the sampler learns from
        if trial.state == TrialState.COMPLETE and len(trial.values or ()) != len(study.directions):
            skipped += 1
            continue
        copy = _copy(trial, space, f"{starts.source_name}#{trial.number}")
        if copy is None:
            skipped += 1
        else:
            copies.append(copy)
    study.add_trials(copies)
    study.set_user_attr(WARM_START_FROM, starts.source_name)
    return len(copies), skipped


def enqueue(study, starts):
    """Queue each baseline unless a trial of this study already has it (a resumed sweep). Returns how many."""
    queued = 0
    for entry in starts.entries:
        key = space_mod.params_key(entry)
        if any(t.user_attrs.get(BASELINE) and not t.user_attrs.get(WARM_START_FROM) and space_mod.params_key(
                {k: t.params.get(k, t.system_attrs.get("fixed_params", {}).get(k)) for k in entry}) == key
               for t in study.get_trials(deepcopy=False)):
            continue
        study.enqueue_trial(entry, user_attrs={BASELINE: True})
        queued += 1
    return queued


def prepare(study, starts, space, say=log.info):
    """Before the first proposal: the warm start's copies, then the baselines' queue."""
    if starts is None:
        return
    done = warm_start(study, starts, space)
    if done is not None:
        say(f"warm start: copied {done[0]} finished trials of study {starts.source_name}"
            + (f", skipped {done[1]} that do not fit this search space" if done[1] else ""))
    queued = enqueue(study, starts)
    if queued:
        say(f"baselines: {queued} queued to run first (hydra.sweeper.enqueue)")
