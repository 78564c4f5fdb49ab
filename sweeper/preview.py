"""The preview: propose n_trials configurations against an in-memory copy of the study; train and write nothing."""
import os

import optuna

from sweeper import secrets
from sweeper.stores import sqlite_path
from sweeper.study import Heartbeats


def preview(sweep, sampler):
    """Print one line per proposal (its values, measured amounts, verdict) and, last,
    `proposals=N feasible=F over_budget=O`. `sweep` is a ConstrainedSweep, set up to propose."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep.storage_url, sweep.storage = None, optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name=sweep.conf.study_name, storage=sweep.storage, sampler=sampler,
                                directions=sweep.directions)
    existing = existing_trials(sweep.conf.storage, sweep.conf.study_name)
    if existing:
        study.add_trials(existing)
        print(f"preview against the {len(existing)} finished trials of study {sweep.conf.study_name}", flush=True)
    sweep.study_name, sweep.study_id = study.study_name, sweep.storage.get_study_id_from_name(study.study_name)
    sweep.heartbeats = Heartbeats(None, 0)
    counts, proposals = sweep.counts, 0
    while proposals < sweep.n_trials:
        proposal = sweep.propose_once(study)
        if proposal is None:
            print("every configuration of the search space has been proposed", flush=True)
            break
        proposals += 1
        counts[proposal.kind] += 1
        params = " ".join(proposal.overrides[:len(proposal.trial.params)])
        measured = " ".join(f"{k}={v}" for k, v in proposal.measured.items())
        print(" ".join(part for part in (f"#{proposal.number}", params, measured, proposal.note) if part), flush=True)
    if counts["invalid"] or counts["repeat"]:
        print(f"invalid={counts['invalid']} repeats={counts['repeat']}", flush=True)
    print(f"proposals={proposals} feasible={counts['feasible']} over_budget={counts['over_budget']}", flush=True)


def existing_trials(storage, study_name):
    """Finished trials of the study in its storage, read only; none if the storage or the study does not exist."""
    url = secrets.reveal(storage)
    path = sqlite_path(url)
    if not url or (path is not None and not os.path.exists(path)):
        return []
    try:
        found = optuna.load_study(study_name=study_name, storage=url)
    except Exception:  # noqa: BLE001 - no such study (yet), or a server not reachable: a fresh preview
        return []
    return [t for t in found.get_trials(deepcopy=False) if t.state.is_finished()]
