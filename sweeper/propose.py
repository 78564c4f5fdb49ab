"""Proposing: ask the study for a configuration, judge it against the constraints, and never launch one
that is over budget, invalid, or a repeat of a trained or running trial (another worker's included).

The preview (sweeper/preview.py) is this Proposer on an in-memory study.
"""
import logging
import random
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from errors import SweepError
from sweeper import reduce as reduce_mod, secrets, space as space_mod
from sweeper.constraints import INVALID_AMOUNT, Verdict
from sweeper.records import (BASELINE, CONCURRENT, CONFIG_DIGEST, INFEASIBLE, INVALID, LAUNCHED, OVERRIDES, REASON,
                             REPEAT_OF, WITHDRAWN)
from sweeper.sampler import is_placeholder
from sweeper.settings import sampler_spec
from sweeper.study import set_attrs, trained_trials

log = logging.getLogger(__name__)


@dataclass
class Proposal:
    trial: optuna.trial.Trial
    trial_id: int
    overrides: list
    kind: str = "feasible"  # feasible | over_budget | invalid | repeat
    measured: dict = field(default_factory=dict)
    note: str = ""
    digest: str = ""  # what it builds and trains (sweeper/reduce.py)
    tags: tuple = ()  # ("baseline",): passed to the job (sweeper/job.py ENV_TAGS), its MLflow run's tags

    @property
    def number(self):
        return self.trial.number


def readable(value):
    """1115018.0 -> 1115018, 0.25 -> 0.25: amounts as a person reads them."""
    return int(value) if isinstance(value, float) and value.is_integer() else (f"{value:.4g}" if isinstance(value, float) else value)


class Proposer:
    """Proposals for one study (its StudyStore): from the search space (`space` and `fixed` overrides, or
    `extender`, hydra.sweeper.custom_search_space), each job config composed once (`job_configs`) and handed
    to every constraint. A refused proposal is told FAIL with a user attr saying why; `counts` keeps the tally."""

    def __init__(self, store, space, fixed, extender, config, job_configs, constraints, grid, rng, n_trials,
                 max_proposals, ignored=(), starts=None):
        self.store, self.space, self.fixed, self.extender, self.config = store, space, fixed, extender, config
        self.job_configs, self.constraints, self.grid, self.rng = job_configs, constraints, grid, rng
        self.n_trials, self.max_proposals = n_trials, max_proposals
        self.ignored = [str(glob) for glob in (ignored or ())]  # hydra.sweeper.ignored_keys (sweeper/reduce.py)
        self.starts = starts  # baselines and warm start (sweeper/starts.py), applied once the study is open
        self.counts = {"feasible": 0, "over_budget": 0, "invalid": 0, "repeat": 0}
        self.waiting_for_others = False  # a finite space's last configurations are other workers' running trials

    @classmethod
    def for_sweep(cls, sweep, store):
        """A Proposer for `store`'s study from a ConstrainedSweep's search space, constraints and sampler seed."""
        seed = (sampler_spec(sweep.conf) or {}).get("seed")
        return cls(store, sweep.space, sweep.fixed, sweep.extender, sweep.config, sweep.job_configs, sweep.constraints,
                   sweep.grid, random.Random(seed), sweep.n_trials, sweep.conf.max_proposals_per_trial,
                   getattr(sweep.conf, "ignored_keys", None), getattr(sweep, "starts", None))

    def propose_once(self, study):
        """Ask one trial and judge it. Returns a Proposal (kind feasible, over_budget, invalid or repeat; only a
        feasible one is still open) or None when a finite space has no configuration left to try."""
        trials = study.get_trials(deepcopy=False)
        known, seen, elsewhere = self.known(trials)
        self.waiting_for_others = False
        if self.exhausted(seen | elsewhere):
            # A configuration that only another worker's running trial holds is not done: if that worker died,
            # its trial is failed after grace_period and the configuration must run again. Wait for it.
            self.waiting_for_others = not self.exhausted(seen)
            return None
        seen = seen | elsewhere  # never steer to a configuration another worker is running
        if self.grid is not None and self.grid.is_exhausted(study):
            # The grid counts every finished cell as done, an interrupted (stale) trial's too: queue what is left.
            self.steer_to_unseen(study, seen)
        # The heartbeat first, the sampler after: a sampler can take seconds (GP, TPE on a long history), and
        # a worker killed in them must leave a trial whose heartbeat goes stale, not one without any.
        trial = self.store.ask(study)
        trial_id = self.store.storage.get_trial_id_from_study_id_trial_number(self.store.study_id, trial.number)
        self.store.heartbeats.hold(trial_id, trial.number)
        space_mod.draw(trial, self.space)  # only the keys whose conditions hold (hydra.sweeper.when)
        if self.extender is not None:
            self.extender(self.config, trial)
        params = dict(trial.params)
        proposal = Proposal(trial, trial_id, space_mod.as_overrides(params) + self.fixed,
                            tags=(BASELINE,) if trial.user_attrs.get(BASELINE) else ())
        key = space_mod.params_key(params)
        cfg, error = self.compose(proposal)
        digest = proposal.digest = "" if cfg is None else reduce_mod.digest(cfg, self.ignored)
        twin = known.get(("digest", digest)) if digest else None
        twin = twin if twin is not None else known.get(("params", key))
        if twin is not None:
            proposal.kind, proposal.note = "repeat", f"repeat of #{twin}"
            self.store.close(study, proposal, state=TrialState.FAIL, attrs={REPEAT_OF: twin})
        else:
            if digest:  # stored before anything else reads: another worker's twin check sees it (give_way_to_a_twin)
                self.store.storage.set_trial_system_attr(trial_id, CONFIG_DIGEST, digest)
            self.judge(study, proposal, cfg, error)
        if proposal.kind == "feasible":
            self.give_way_to_a_twin(study, proposal, key, digest)
        if key in seen or proposal.kind == "repeat":  # a finite space's sampler may keep coming back: move on
            self.steer_to_unseen(study, seen | {key})
        return proposal

    def give_way_to_a_twin(self, study, proposal, key, digest=None):
        """`known` was read before the ask: another worker may have proposed the same configuration since
        (with a seeded sampler every worker draws the same sequence). Read again now that this proposal's
        values and digest are stored; the one that gives way is recorded as a repeat (`repeat_of`, `concurrent`).

        It gives way to a twin that trained, or that runs and either has the lower number or is already
        launched. Each worker stores its values before it reads, so of two twins the later reader sees the
        other; both are launched only if one of them stores its values and reads in the moment between the
        other's reading and its marking the trial launched."""
        if not self.store.shared:
            return  # one process: `known` is up to date
        for t in study.get_trials(deepcopy=False):
            if t.number == proposal.number or not self.same(t, key, digest):
                continue
            if trained_trials([t]) or (t.state == TrialState.RUNNING and (
                    t.number < proposal.number or t.user_attrs.get(LAUNCHED))):
                proposal.kind, proposal.note = "repeat", f"repeat of #{t.number}, proposed by another worker at once"
                self.store.close(study, proposal, state=TrialState.FAIL, attrs={REPEAT_OF: t.number, CONCURRENT: True})
                return

    @staticmethod
    def same(trial, key, digest):
        """Is `trial` the configuration with these params and digest? By digest when both have one (what they
        build and train), by params for a trial judged before digests were stored."""
        theirs = reduce_mod.of_trial(trial)
        if theirs and digest:
            return theirs == digest
        return space_mod.params_key(trial.params) == key

    def compose(self, proposal):
        """(the proposal's job config, None) or (None, why it does not compose)."""
        try:
            return self.job_configs(proposal.overrides), None
        except Exception as err:  # noqa: BLE001 - a value Hydra cannot compose: invalid, like any refused config
            return None, (str(err).strip().splitlines() or [type(err).__name__])[0]

    def judge(self, study, proposal, cfg=None, error=None):
        """Run every constraint on the proposal's job config (composed once, by `compose`), record the verdict;
        a proposal that is over budget or invalid is told FAIL (a placeholder) and never launched."""
        if cfg is None and error is None:
            cfg, error = self.compose(proposal)
        try:
            if error is not None:
                raise ValueError(error)
            verdict = self.constraints(cfg)
        except Exception as err:  # noqa: BLE001 - a value Hydra cannot compose: invalid, like any refused config
            verdict = Verdict(amounts={n: INVALID_AMOUNT for n in self.constraints.names},
                              invalid=(str(err).strip().splitlines() or [type(err).__name__])[0])
        if verdict.invalid is not None:  # the check's own words, which may quote a URL with its password
            verdict.invalid = secrets.mask_url(verdict.invalid)
        for name, amount in verdict.amounts.items():
            proposal.trial.set_constraint(name, amount)
        proposal.measured = verdict.measured
        attrs = dict(verdict.measured)
        if verdict.feasible:
            set_attrs(proposal.trial, attrs)
            return
        if verdict.invalid is not None:
            proposal.kind, proposal.note = "invalid", f"invalid: {verdict.invalid}"
            attrs.update({INVALID: True, REASON: verdict.invalid})
        else:
            over = ", ".join(f"{name} +{readable(amount)}" for name, amount in verdict.over().items())
            proposal.kind, proposal.note = "over_budget", f"over budget ({over})"
            attrs.update({INFEASIBLE: True, REASON: f"over budget: {over}"})
        self.store.close(study, proposal, state=TrialState.FAIL, attrs=attrs)

    def propose(self, study):
        """The next feasible, new proposal; None when the space is exhausted."""
        for _ in range(self.max_proposals):
            proposal = self.propose_once(study)
            if proposal is None or proposal.kind == "feasible":
                return proposal
            self.counts[proposal.kind] += 1
            log.info(f"  proposal #{proposal.number} not launched: {proposal.note} "
                     f"({' '.join(proposal.overrides[:len(proposal.trial.params)])})")
        raise SweepError(
            f"{self.max_proposals} proposals in a row were over budget, invalid or repeats, so the "
            f"sweep stopped instead of spinning. Shrink the search space or loosen the budget, or raise "
            f"hydra.sweeper.max_proposals_per_trial.")

    def known(self, trials):
        """(("digest", d) or ("params", key) -> number of a trained or running trial, keys of the search space's
        configurations already trained, judged infeasible, running here or repeating one of those, keys of
        those running in another worker). A trial is known by its digest (what it builds and trains,
        sweeper/reduce.py), or by its params if it was judged before digests. An interrupted trial's
        configuration is not known: it is tried again."""
        known, seen, elsewhere, repeats = {}, set(), set(), []
        mine = self.store.heartbeats.numbers()
        for t in trials:
            key = space_mod.params_key(t.params)
            if t.state == TrialState.RUNNING or trained_trials([t]):
                digest = reduce_mod.of_trial(t)
                known.setdefault(("digest", digest) if digest else ("params", key), t.number)
            elif t.state == TrialState.FAIL and REPEAT_OF in t.user_attrs:
                repeats.append((t.user_attrs[REPEAT_OF], key, t.params))
                continue
            elif not is_placeholder(t):
                continue
            if space_mod.in_space(self.space, t.params):
                (elsewhere if t.state == TrialState.RUNNING and t.number not in mine else seen).add(key)
        # Other values that build the same thing (an ignored key, an undrawn layer) are judged too, while the
        # trial they repeat stands: a finite space is then exhausted instead of proposing them for ever.
        standing = set(known.values())
        seen.update(key for number, key, params in repeats
                    if number in standing and space_mod.in_space(self.space, params))
        return known, seen, elsewhere

    def exhausted(self, seen):
        """A finite space (grid, or every parameter discrete) whose every configuration has been judged."""
        if self.extender is not None:
            return False
        size = space_mod.size(self.space)
        return size is not None and len(seen) >= size

    def steer_to_unseen(self, study, seen):
        """Queue a configuration of a finite space not tried yet (after a repeat, or when the grid thinks it is done)."""
        if self.extender is None:
            cell = space_mod.unseen_cell(self.space, seen, self.rng)
            if cell is not None:
                study.enqueue_trial(cell)

    def remaining(self, trials):
        """Trials still to start: n_trials less the trained ones and every trial in flight (any worker's,
        launched or not: a dead worker's stays in flight until its heartbeat is stale)."""
        running = sum(1 for t in trials if t.state == TrialState.RUNNING)
        return self.n_trials - len(trained_trials(trials)) - running, running

    def withdrawn(self, study, proposal):
        """Two workers can both see the last slot free and both propose: the higher trial number gives way."""
        trials = study.get_trials(deepcopy=False)
        ahead = len(trained_trials(trials)) + sum(
            1 for t in trials if t.state == TrialState.RUNNING and t.number < proposal.number)
        if ahead < self.n_trials:
            return False
        self.store.close(study, proposal, state=TrialState.FAIL, attrs={WITHDRAWN: True})
        log.info(f"  proposal #{proposal.number} withdrawn: another worker took the last trial")
        return True

    def mark_launched(self, proposal):
        self.counts["feasible"] += 1
        # A list, as the launcher gets them: a value may hold spaces (`name=cifar sweep`), so no joined string.
        attrs = {LAUNCHED: True, OVERRIDES: list(proposal.overrides)}
        if proposal.digest:  # for a person reading the study; workers match the system attr, set before judging
            attrs[CONFIG_DIGEST] = proposal.digest
        set_attrs(proposal.trial, attrs)
