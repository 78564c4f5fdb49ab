"""The sampler the sweeper puts around the configured one: placeholders teach it, but count for nothing.

A proposal that is over budget or invalid is never trained. The study records it as FAIL (user attr
`infeasible` or `invalid`, its constraint amounts set with `Trial.set_constraint`), so pruners, which
read COMPLETE trials only, never use it as a reference, and nothing counts it as a trained trial.

Learning samplers still need to see it, or they would propose the same region again and again. So
`ConstrainedSampler` passes them a view of the study (`compat.StudyView`) in which each placeholder is a
COMPLETE trial with its constraint values and, as its value, the worst value any trained trial reached
(never a made-up 0.0: GP and CMA-ES fit values; TPE and NSGA-II rank infeasible trials by their
constraint amounts and ignore the value). Until one trained trial exists, placeholders stay hidden.

Start-up counts are ours: until `n_startup_trials` trials have trained (COMPLETE or PRUNED in the
study itself), proposals come from a seeded RandomSampler, however many placeholders there are. After
that the inner sampler's own start-up check sees at least as many trials and stays out of the way.

Samplers that do not learn from results (grid, random, QMC, brute force) see the study as it is.
"""
import copy

import optuna
from optuna.samplers import BaseSampler, BruteForceSampler, GridSampler, QMCSampler, RandomSampler
from optuna.trial import TrialState

from sweeper.compat import StudyView
from sweeper.records import INFEASIBLE, INVALID
from sweeper.study import is_confirmation

NON_LEARNING = (GridSampler, RandomSampler, QMCSampler, BruteForceSampler)
TRAINED = (TrialState.COMPLETE, TrialState.PRUNED)


def is_placeholder(trial):
    return trial.state == TrialState.FAIL and bool(trial.user_attrs.get(INFEASIBLE) or trial.user_attrs.get(INVALID))


def worst_values(trials, directions):
    """Per objective, the worst value of any trained trial; None before the first one."""
    done = [t.values for t in trials if t.state == TrialState.COMPLETE and not is_placeholder(t) and t.values]
    if not done:
        return None
    pick = {optuna.study.StudyDirection.MAXIMIZE: min, optuna.study.StudyDirection.MINIMIZE: max}
    return [pick[d](v[i] for v in done) for i, d in enumerate(directions)]


class ConstrainedSampler(BaseSampler):
    def __init__(self, inner, n_startup_trials=0, seed=None):
        self.inner = inner
        self.n_startup_trials = int(n_startup_trials or 0)
        self.random = RandomSampler(seed=seed)
        self.learns = not isinstance(inner, NON_LEARNING)
        self._memo = (None, None)
        self._startup = (None, False)

    def __str__(self):
        return f"{self.inner} (placeholders as constrained trials)" if self.learns else str(self.inner)

    # --- what the inner sampler sees --------------------------------------------------------------
    def _rewrite(self, trials):
        if self._memo[0] is trials:  # samplers read the same cached list several times per proposal
            return self._memo[1]
        given, trials = trials, [t for t in trials if not is_confirmation(t)]  # retrains of a winner: not the search's
        worst = worst_values(trials, self._directions)
        if worst is None:
            rewritten = trials
        else:
            rewritten = [self._as_complete(t, worst) if is_placeholder(t) else t for t in trials]
        self._memo = (given, rewritten)
        return rewritten

    @staticmethod
    def _as_complete(trial, worst):
        view = copy.copy(trial)  # shares params, attrs and constraints; only state and values differ
        view.state = TrialState.COMPLETE
        view.values = worst
        return view

    def _study_for_inner(self, study):
        if not self.learns:
            return study
        self._directions = study.directions
        return StudyView(study, self._rewrite)

    def in_startup(self, study, trial):
        if self.n_startup_trials <= 0 or not self.learns:
            return False
        if self._startup[0] != trial.number:  # one count per proposal, not one per parameter
            trained = len(study.get_trials(deepcopy=False, states=TRAINED))
            self._startup = (trial.number, trained < self.n_startup_trials)
        return self._startup[1]

    # --- BaseSampler ------------------------------------------------------------------------------
    def infer_relative_search_space(self, study, trial):
        if self.in_startup(study, trial):
            return {}
        return self.inner.infer_relative_search_space(self._study_for_inner(study), trial)

    def sample_relative(self, study, trial, search_space):
        if not search_space:
            return {}
        return self.inner.sample_relative(self._study_for_inner(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        if self.in_startup(study, trial):
            return self.random.sample_independent(study, trial, param_name, param_distribution)
        return self.inner.sample_independent(self._study_for_inner(study), trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        if isinstance(self.inner, GridSampler) and "grid_id" not in trial.system_attrs:
            # A cell the sweeper queued (steer_to_unseen) has no grid_id, and GridSampler.after_trial reads it
            # when one cell is left (KeyError). All it would do is study.stop() for optimize(); the sweeper
            # judges itself when a finite space is done (ConstrainedSweep.exhausted).
            return
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self):
        self.inner.reseed_rng()
        self.random.reseed_rng()
