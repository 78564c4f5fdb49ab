"""Placeholders (over-budget and invalid proposals) teach the sampler but fool no pruner and no start-up count.

In-memory studies and a cheap fake problem: no training, no Hydra. Placeholders are recorded as
the sweeper records them (tests/test_sweep.py checks that a real sweep stores them this way).
"""
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from sweeper.sampler import ConstrainedSampler, worst_values

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}


def placeholder(study, over=1.0, params=None):
    """An over-budget proposal as the sweeper records it: FAIL, `infeasible`, its constraint amount."""
    trial = study.ask(SPACE) if params is None else _ask_with(study, params)
    trial.set_constraint("params", over)
    trial.set_user_attr("infeasible", True)
    trial.set_user_attr("reason", f"over budget: params +{over}")
    study.tell(trial, state=TrialState.FAIL)
    return trial


def trained(study, value, steps=(), params=None):
    trial = study.ask(SPACE) if params is None else _ask_with(study, params)
    trial.set_constraint("params", -1.0)
    for step, intermediate in steps:
        trial.report(intermediate, step)
    study.tell(trial, value)
    return trial


def _ask_with(study, params):
    study.enqueue_trial(params)
    return study.ask(SPACE)


def test_over_budget_placeholders_are_no_pruning_reference():
    # Before: placeholders were COMPLETE with value 0.0, so 1 trained + 2 over budget made 3 start-up
    # trials and the median of the one real curve pruned the next trial (should_prune was True).
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0))
    trained(study, 0.5, steps=[(1, 0.5)])
    placeholder(study)
    placeholder(study)
    trial = study.ask(SPACE)
    trial.report(0.3, 1)
    assert not trial.should_prune()
    # ...and with three trained trials it does prune: the pruner itself works.
    trained(study, 0.6, steps=[(1, 0.6)])
    trained(study, 0.7, steps=[(1, 0.7)])
    trial = study.ask(SPACE)
    trial.report(0.3, 1)
    assert trial.should_prune()


def test_start_up_counts_only_trained_trials():
    inner = optuna.samplers.TPESampler(n_startup_trials=10, seed=0)
    sampler = ConstrainedSampler(inner, n_startup_trials=10, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    trained(study, 0.5)
    for _ in range(20):
        placeholder(study)
    trial = study.ask(SPACE)
    assert sampler.in_startup(study, trial)
    # The inner TPE, shown the placeholders, would have left its start-up long ago: the count is ours.
    view_trials = sampler._study_for_inner(study).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(view_trials) == 21
    for value in (0.6, 0.7, 0.8, 0.9, 0.4, 0.3, 0.2, 0.1, 0.55):
        trained(study, value)
    assert not sampler.in_startup(study, study.ask(SPACE))  # 10 trained


def test_placeholders_appear_to_learning_samplers_with_the_worst_trained_value():
    sampler = ConstrainedSampler(optuna.samplers.GPSampler(seed=0), n_startup_trials=10)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    assert worst_values(study.trials, study.directions) is None
    trained(study, 0.8)
    trained(study, 0.6)
    over = placeholder(study, over=123.0)
    view = {t.number: t for t in sampler._study_for_inner(study).get_trials(deepcopy=False)}
    assert view[over.number].state == TrialState.COMPLETE and view[over.number].values == [0.6]  # never 0.0
    assert view[over.number].constraints == {"params": 123.0}
    assert study.trials[over.number].state == TrialState.FAIL  # the study itself is unchanged
    # Samplers that do not learn see the study as it is.
    plain = ConstrainedSampler(optuna.samplers.RandomSampler(seed=0))
    assert plain._study_for_inner(study) is study


def over_budget_share(inner, n_startup, seed, proposals=80, show_placeholders=True):
    """Share of over-budget proposals once start-up is over, on a fake problem: value -(x-0.3)^2 - (y-0.3)^2,
    budget x + y <= 1 (half the square is over budget; the best point is well inside the budget)."""
    sampler = ConstrainedSampler(inner, n_startup_trials=n_startup, seed=seed)
    sampler.learns = show_placeholders
    study = optuna.create_study(direction="maximize", sampler=sampler)
    over_after_startup = []
    for _ in range(proposals):
        started = len([t for t in study.trials if t.state == TrialState.COMPLETE]) >= n_startup
        trial = study.ask(SPACE)
        x, y = trial.params["x"], trial.params["y"]
        trial.set_constraint("params", x + y - 1)
        if x + y > 1:
            trial.set_user_attr("infeasible", True)
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, -(x - 0.3) ** 2 - (y - 0.3) ** 2)
        if started:
            over_after_startup.append(x + y > 1)
    return sum(over_after_startup) / len(over_after_startup)


def test_tpe_after_start_up_proposes_over_budget_configs_less_often_than_random():
    # Measured (seeds 0-3, 80 proposals): random 0.45, TPE shown the placeholders 0.03, TPE with the
    # placeholders hidden from it ~1.0 (it never saw where the budget ends). With the optimum right at
    # the budget's edge (value x + y) TPE searches along the edge and its share is random's (0.43 vs 0.45).
    random = [over_budget_share(optuna.samplers.RandomSampler(seed=s), 10, s) for s in range(3)]
    tpe = [over_budget_share(optuna.samplers.TPESampler(n_startup_trials=10, seed=s), 10, s) for s in range(3)]
    blind = [over_budget_share(optuna.samplers.TPESampler(n_startup_trials=10, seed=s), 10, s, proposals=40,
                               show_placeholders=False) for s in range(2)]
    assert sum(random) / 3 == pytest.approx(0.5, abs=0.15)
    assert sum(tpe) / 3 < 0.3 * sum(random) / 3, (tpe, random)
    assert min(blind) > 0.8, blind


@pytest.mark.parametrize("make", [
    lambda: optuna.samplers.NSGAIISampler(population_size=6, seed=0),
    lambda: optuna.samplers.QMCSampler(seed=0),
], ids=["nsgaii", "qmc"])  # CmaEsSampler needs the `cmaes` package, which is not installed
def test_other_samplers_run_with_placeholders(make):
    assert 0 <= over_budget_share(make(), 3, 0, proposals=24) <= 1


def test_the_accuracy_against_parameters_plot_shows_every_proposal(tmp_path):
    """Trained trials as points, pruned ones at their last reported value, over-budget ones beyond the line."""
    from optuna.distributions import FloatDistribution

    from sweeper.report import constraint_plots, constraint_points
    study = optuna.create_study(direction="maximize")
    space = {"x": FloatDistribution(0, 1)}

    def add(x, params, state, value=None, steps=()):
        trial = study.ask(space)
        trial.set_constraint("params", params - 1000)
        trial.set_user_attr("params", params)
        if params > 1000:
            trial.set_user_attr("infeasible", True)
        for step, v in steps:
            trial.report(v, step)
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)

    add(0.1, 800, TrialState.COMPLETE, 0.7)
    add(0.2, 950, TrialState.COMPLETE, 0.8)
    add(0.3, 600, TrialState.PRUNED, steps=[(1, 0.3), (2, 0.4)])
    add(0.4, 1500, TrialState.FAIL)
    points = constraint_points(study.trials, "params")
    assert points == {"trained": [(800, 0.7), (950, 0.8)], "pruned": [(600, 0.4)], "over": [1500], "limit": 1000}
    [path] = constraint_plots(study.trials, "val_acc", str(tmp_path))
    assert path.endswith("val_acc_vs_params.png") and (tmp_path / "val_acc_vs_params.png").stat().st_size > 10_000


def test_the_importance_plot_is_drawn_once_the_best_tenth_holds_two_trials(tmp_path):
    """PED-ANOVA compares the best 10% of trials with all of them: from 11 trained trials on, that top set holds
    two. A smaller sweep gets the history plot only."""
    from sweeper.report import _plots
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("x", 0, 1) - abs(t.suggest_float("y", 0, 1) - 0.5), n_trials=11)
    complete = study.trials
    for n, expected in ((10, {"optimization_history.png"}),
                        (11, {"optimization_history.png", "param_importances.png"})):
        out = tmp_path / str(n)
        out.mkdir()
        paths = _plots(complete[:n], ["maximize"], ["val_acc"], str(out))
        assert {p.rsplit("/", 1)[-1] for p in paths} == expected == {p.name for p in out.iterdir()}


def test_a_grid_cell_queued_by_the_sweeper_can_be_told_when_it_is_the_last_one():
    # The sweeper queues a cell the grid has not judged (steer_to_unseen); a queued trial gets no grid_id,
    # and GridSampler.after_trial read it when exactly one cell was left: KeyError 'grid_id' on tell.
    from optuna.distributions import CategoricalDistribution
    space = {"x": CategoricalDistribution([0, 1])}
    study = optuna.create_study(sampler=ConstrainedSampler(optuna.samplers.GridSampler({"x": [0, 1]}, seed=0)))
    first = study.ask(space)
    study.tell(first, 1.0)
    study.enqueue_trial({"x": 1 - first.params["x"]})
    queued = study.ask(space)
    study.tell(queued, 2.0)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
