"""The preview: propose n_trials configurations against an in-memory copy of the study; train and write nothing."""
import os
import statistics

import optuna

from sweeper import secrets, starts
from sweeper.stores import journal_path, loadable, sqlite_path
from sweeper.study import StudyStore


def preview(conf, directions, sampler, proposer_on):
    """Print one line per proposal (its values, measured amounts, verdict) and, last,
    `proposals=N feasible=F over_budget=O`. `proposer_on(store)` gives the sweep's Proposer on a StudyStore.
    With hydra.sweeper.preview=stats the lines are left out and the share within budget and the quartiles of
    each measured amount of the proposals that fit are printed instead (how much of a space fits)."""
    mode = conf.preview  # true, false or stats: checked with every setting (sweeper/settings.py)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store, study = StudyStore.in_memory(conf.study_name, sampler, directions)
    existing = existing_trials(conf.storage, conf.study_name)
    if existing:
        study.add_trials(existing)
        print(f"preview against the {len(existing)} finished trials of study {conf.study_name}", flush=True)
    proposer = proposer_on(store)
    starts.prepare(study, proposer.starts, proposer.space, say=lambda line: print(line, flush=True))
    counts, proposals, fitting = proposer.counts, 0, []
    while proposals < proposer.n_trials:
        proposal = proposer.propose_once(study)
        if proposal is None:
            print("every configuration of the search space has been proposed", flush=True)
            break
        proposals += 1
        counts[proposal.kind] += 1
        if proposal.kind == "feasible":
            fitting.append(proposal.measured)
        if mode == "stats":
            continue
        params = " ".join(proposal.overrides[:len(proposal.trial.params)])
        measured = " ".join(f"{k}={v}" for k, v in proposal.measured.items())
        tags = " ".join(f"[{tag}]" for tag in proposal.tags)
        print(" ".join(part for part in (f"#{proposal.number}", tags, params, measured, proposal.note) if part), flush=True)
    if mode == "stats":
        print_stats(counts, proposals, fitting, sampler)
    print(f"invalid={counts['invalid']} repeats={counts['repeat']}", flush=True)
    print(f"proposals={proposals} feasible={counts['feasible']} over_budget={counts['over_budget']}", flush=True)


def print_stats(counts, proposals, fitting, sampler):
    """The share of judged proposals within budget, over it and invalid; min, quartiles and max of each
    measured amount (the constraints' `measured` values, e.g. params) of those within."""
    judged = counts["feasible"] + counts["over_budget"] + counts["invalid"]
    share = lambda n: f"{n:,} ({100 * n / judged:.1f}%)" if judged else f"{n:,}"  # noqa: E731
    print(f"stats of {proposals:,} proposals from {sampler}: within budget {share(counts['feasible'])} | over budget "
          f"{share(counts['over_budget'])} | invalid {share(counts['invalid'])} | repeats {counts['repeat']:,}",
          flush=True)
    for name in dict.fromkeys(k for measured in fitting for k in measured):
        values = sorted(float(m[name]) for m in fitting if isinstance(m.get(name), (int, float)))
        if not values:
            continue
        quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
        print(f"{name} of those within: min {_num(values[0])}, quartiles "
              f"{' / '.join(_num(q) for q in quartiles)}, max {_num(values[-1])}", flush=True)
    if judged:
        print(f"share_within_budget={counts['feasible'] / judged:.3f}", flush=True)


def _num(value):
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def existing_trials(storage, study_name):
    """Finished trials of the study in its storage, read only; none if the storage or the study does not exist."""
    url = secrets.reveal(storage)
    path = sqlite_path(url) or journal_path(url)
    if not url or (path is not None and not os.path.exists(path)):  # opening it would create the file
        return []
    try:
        found = optuna.load_study(study_name=study_name, storage=loadable(url))
    except Exception:  # noqa: BLE001 - no such study (yet), or a server not reachable: a fresh preview
        return []
    return [t for t in found.get_trials(deepcopy=False) if t.state.is_finished()]
