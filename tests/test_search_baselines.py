"""Baselines (hydra.sweeper.enqueue) and warm starts (hydra.sweeper.warm_start): sweeper/starts.py."""
import optuna
import pytest
from optuna.trial import TrialState

from errors import UsageError
from sweeper import job as job_api, starts, stores
from sweeper.study import trained_trials
from tests.test_sweep_loop import deadline, launcher, make_sweep  # noqa: F401 - fixtures

SPACE = ("x=choice(1,2,3,4)", "lr=interval(0.001,0.1)")


def started(tmp_path, *space, **settings):
    """make_sweep, then what _sweep and open_study do with the starts (checked, then applied to the study)."""
    sweep, study = make_sweep(tmp_path, *space, **settings)
    sweep.starts = sweep.proposer.starts = starts.check(sweep.conf, sweep.space)
    starts.prepare(study, sweep.starts, sweep.space)
    return sweep, study


def test_an_enqueued_baseline_runs_first_and_is_tagged(tmp_path, launcher):
    sweep, study = started(tmp_path, *SPACE, n_trials=3, enqueue=[{"x": 3, "lr": 0.05}])
    sweep.loop(study)
    first = launcher.launched[0]
    assert "x=3" in first and "lr=0.05" in first
    assert "++hydra.job.env_set.SWEEPER_TRIAL_TAGS='baseline'" in first  # the job's MLflow run gets the tag
    # Set empty for every other job: an in-process launcher's next job must not inherit the baseline's tag.
    assert all("++hydra.job.env_set.SWEEPER_TRIAL_TAGS=''" in job for job in launcher.launched[1:])
    trials = study.get_trials(deepcopy=False)
    assert trials[0].user_attrs["baseline"] is True and trials[0].state == TrialState.COMPLETE
    assert len(trained_trials(trials)) == 3
    sweep.heartbeats.stop()
    again, resumed = started(tmp_path, *SPACE, n_trials=3, enqueue=[{"x": 3, "lr": 0.05}])
    assert not resumed.get_trials(states=(TrialState.WAITING,))  # a resumed study does not queue it again
    again.heartbeats.stop()


def test_the_job_sees_the_baseline_tag(monkeypatch):
    monkeypatch.setenv(job_api.ENV_TRIAL, "0")
    monkeypatch.setenv(job_api.ENV_TAGS, "baseline")
    assert job_api.current_trial().tags == {"baseline": "true"}
    monkeypatch.delenv(job_api.ENV_TAGS)
    assert job_api.current_trial().tags == {}


@pytest.mark.parametrize("url", ["sqlite:///{}/optuna.db", "journal:{}/optuna.journal"])
def test_a_warm_start_copies_finished_trials_that_fit_before_the_first_proposal(tmp_path, url):
    storage = url.format(tmp_path)  # a journal's study is read through its JournalStorage (stores.loadable)
    old = optuna.create_study(study_name="old", storage=stores.loadable(storage), direction="maximize")
    dists = {"x": optuna.distributions.CategoricalDistribution([1, 2, 3, 4, 8]),
             "lr": optuna.distributions.FloatDistribution(0.001, 0.1)}
    for x, value in ((1, 0.6), (2, 0.7), (8, 0.9)):  # x=8 is outside the new space
        old.enqueue_trial({"x": x, "lr": 0.01})
        old.tell(old.ask(dists), value)
    old.ask(dists)  # a trial still running: nothing to learn from
    sweep, study = started(tmp_path, *SPACE, storage=storage, warm_start="old")
    copied = study.get_trials(deepcopy=False)
    assert [(t.params["x"], t.values, t.user_attrs["warm_start_from"]) for t in copied] == [
        (1, [0.6], "old#0"), (2, [0.7], "old#1")]
    assert copied[0].distributions["x"] == sweep.space["x"]  # rebuilt with this space's distributions
    assert trained_trials(copied) == [] and sweep.proposer.remaining(copied) == (3, 0)  # n_trials counts ours
    assert study.user_attrs["warm_start_from"] == "old"
    proposal = sweep.propose_once(study)  # the sampler draws with the copies in the study
    assert proposal.number == 2 and proposal.kind == "feasible"
    sweep.heartbeats.stop()
    again, resumed = started(tmp_path, *SPACE, storage=storage, warm_start=f"{storage}#old")
    assert len(resumed.get_trials(deepcopy=False)) == 3  # copied once, not again on resume
    again.heartbeats.stop()


def test_a_warm_start_copy_carries_no_bookkeeping_of_the_source_run(tmp_path):
    """Only what the sampler and a reader use is copied: a copied `resumes=<source number>` would make
    sweeper/resume.py take this study's trial with that number as replaced, a copied checkpoint or MLflow run
    id would point at the source run's files."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    old = optuna.create_study(study_name="old", storage=storage, direction="maximize")
    dists = {"x": optuna.distributions.CategoricalDistribution([1, 2, 3, 4]),
             "lr": optuna.distributions.FloatDistribution(0.001, 0.1)}
    old.enqueue_trial({"x": 2, "lr": 0.01})
    trial = old.ask(dists)
    for key, value in {**{k: f"source {k}" for k in starts.NOT_COPIED}, "resumes": 0, "launched": True,
                       "overrides": ["x=2", "lr=0.01"], "checkpoint": str(tmp_path / "last.pt"),
                       "mlflow_run_id": "abc123", "params_m": 1.5}.items():
        trial.set_user_attr(key, value)
    old.tell(trial, 0.7)
    sweep, study = started(tmp_path, *SPACE, storage=storage, warm_start="old")
    [copy] = study.get_trials(deepcopy=False)
    assert copy.user_attrs == {"params_m": 1.5, "warm_start_from": "old#0"}
    sweep.heartbeats.stop()


@pytest.mark.parametrize("settings, message", [
    ({"enqueue": [{"y": 1}]}, "hydra.sweeper.enqueue[0].y=1: not a search key (the search keys: x, lr)"),
    ({"enqueue": [{"x": 5}]}, "hydra.sweeper.enqueue[0].x=5: outside the search space (x: 1, 2, 3, 4)"),
    ({"enqueue": [{"lr": 0.5}]}, "hydra.sweeper.enqueue[0].lr=0.5: outside the search space (lr: 0.001 to 0.1)"),
    ({"enqueue": [5]}, "hydra.sweeper.enqueue[0]=5: must be a mapping of search keys to values"),
    ({"warm_start": "nope"}, "hydra.sweeper.warm_start=nope: cannot read study 'nope'"),
    ({"warm_start": "sqlite:////no/such/dir/x.db#s"}, "hydra.sweeper.warm_start=sqlite:////no/such/dir/x.db#s: no database"),
    ({"warm_start": "journal:/no/such/dir/x.journal#s"},
     "hydra.sweeper.warm_start=journal:/no/such/dir/x.journal#s: no journal at /no/such/dir/x.journal"),
])
def test_starts_that_cannot_work_are_one_line(tmp_path, settings, message):
    sweep, study = make_sweep(tmp_path, *SPACE, **settings)
    with pytest.raises(UsageError) as caught:
        starts.check(sweep.conf, sweep.space)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    sweep.heartbeats.stop()
