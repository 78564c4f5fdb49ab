"""The preview: propose n_trials configurations against an in-memory copy of the study; train and write nothing."""
import os

import optuna

from sweeper import secrets, starts
from sweeper.stores import sqlite_path
from sweeper.study import StudyStore


def preview(conf, directions, sampler, proposer_on):
    """Print one line per proposal (its values, measured amounts, verdict) and, last,
    `proposals=N feasible=F over_budget=O`. `proposer_on(store)` gives the sweep's Proposer on a StudyStore."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store, study = StudyStore.in_memory(conf.study_name, sampler, directions)
    existing = existing_trials(conf.storage, conf.study_name)
    if existing:
        study.add_trials(existing)
        print(f"preview against the {len(existing)} finished trials of study {conf.study_name}", flush=True)
    proposer = proposer_on(store)
    starts.prepare(study, proposer.starts, proposer.space, say=lambda line: print(line, flush=True))
    counts, proposals = proposer.counts, 0
    while proposals < proposer.n_trials:
        proposal = proposer.propose_once(study)
        if proposal is None:
            print("every configuration of the search space has been proposed", flush=True)
            break
        proposals += 1
        counts[proposal.kind] += 1
        params = " ".join(proposal.overrides[:len(proposal.trial.params)])
        measured = " ".join(f"{k}={v}" for k, v in proposal.measured.items())
        tags = " ".join(f"[{tag}]" for tag in proposal.tags)
        print(" ".join(part for part in (f"#{proposal.number}", tags, params, measured, proposal.note) if part), flush=True)
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
