"""Confirmed winners (`hydra.sweeper.confirm`, sweeper/confirm.py): after the search the best top_k configurations
are retrained with new seeds and the best is chosen by the mean, printed with ± std. A tiny Hydra app whose
value depends on its `x` and `seed` stands in for training, so each sweep takes seconds."""
import logging
import os
import re
import statistics
import subprocess
import sys
import textwrap

from dataclasses import fields

import mlflow
import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hydra_plugins.constrained_optuna_sweeper.constrained_optuna_sweeper import ConstrainedOptunaSweeperConf

from sweeper import settings, signals
from sweeper.confirm import Confirmation
from sweeper.tracking import Tracking
from tests.faultkit import REPO, fresh_sqlite_store
from tests.test_search_baselines import started
from tests.test_sweep_loop import deadline, launcher, make_sweep  # noqa: F401 - fixtures

# x=1 is lucky with the search's seed 0 (5.0) and poor with any other (1.0x); x=3 is 3.0x whatever the seed:
# the search's best is x=1, the confirmed best x=3. A job run under a parent run logs itself there, as the
# project's training does (a child run tagged with its trial number).
APP = """
import os

import hydra


@hydra.main(version_base=None, config_path=".", config_name="config")
def main(cfg):
    value = float(cfg.x) + cfg.seed ** 2 / 100 + (4.0 if cfg.x == 1 and cfg.seed == 0 else 0.0)
    parent = os.environ.get("SWEEPER_PARENT_RUN_ID")
    if parent:
        import mlflow
        client = mlflow.MlflowClient("sqlite:///mlflow.db")
        run = client.create_run(client.get_run(parent).info.experiment_id, tags={
            "mlflow.parentRunId": parent, "trial_number": os.environ["SWEEPER_TRIAL"]})
        client.log_metric(run.info.run_id, "value", value)
        client.set_terminated(run.info.run_id)
    with open("reports.txt", "a") as f:  # the job reports to the pruner unless told not to (SWEEPER_REPORT=0)
        f.write(os.environ.get("SWEEPER_REPORT", "1") + "\\n")
    return value


if __name__ == "__main__":
    main()
"""
CONFIG = """
hydra:
  sweeper:
    direction: maximize
    storage: sqlite:///study.db
    study_name: c
    n_trials: 4
    params:
      x: choice(0, 1, 2, 3)
x: 0
seed: 0
"""


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    (tmp_path / "config.yaml").write_text(textwrap.dedent(CONFIG))
    return tmp_path


def run_app(folder, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "app.py", "-m", "hydra/sweeper=constrained_optuna", "hydra.sweep.dir=multirun",
                           "hydra/sweeper/sampler=grid", *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=180)


CONFIRM = ["hydra.sweeper.confirm.top_k=2", "hydra.sweeper.confirm.seeds=2",
           "+hydra.sweeper.mlflow.tracking_uri=sqlite:///mlflow.db"]


def test_the_best_two_are_retrained_with_two_seeds_and_the_best_is_chosen_by_mean(folder):
    fresh_sqlite_store(folder)  # mlflow.db with its schema made (a new one takes seconds of migrations)
    result = run_app(folder, *CONFIRM)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="c", storage=f"sqlite:///{folder}/study.db")
    search = {t.params["x"]: t for t in study.trials if t.user_attrs.get("launched")}
    confirms = [t for t in study.trials if "confirm_of" in t.user_attrs]
    assert len(search) == 4 and len(confirms) == 4  # n_trials counts the search only
    lucky, steady = search[1], search[3]
    assert lucky.value == 5.0 and steady.value == 3.0  # the search's two best
    for t in confirms:
        assert t.state == TrialState.COMPLETE and t.params == {} and t.user_attrs["seed"] in (1, 2)
        assert t.user_attrs["overrides"][-1] == f"seed={t.user_attrs['seed']}" and not t.intermediate_values
    by_config = {n: sorted((t.user_attrs["seed"], t.value) for t in confirms if t.user_attrs["confirm_of"] == n)
                 for n in (lucky.number, steady.number)}
    assert [s for s, _ in by_config[lucky.number]] == [s for s, _ in by_config[steady.number]] == [1, 2]
    values = [v for _, v in by_config[steady.number]]
    mean, std = statistics.fmean(values), statistics.stdev(values)
    assert mean == pytest.approx(3.025, rel=1e-9) and std == pytest.approx(0.03 / 2 ** 0.5, rel=1e-9)
    # Chosen by the mean over the new seeds, not by the search's lucky 5.0
    assert (f"best (confirmed over 2 seeds): trial #{steady.number} value={mean:.4f} ± {std:.4f} (search 3.0000) | "
            f"python app.py x=3") in result.stdout
    table = result.stdout[result.stdout.index("confirmation:"):].splitlines()
    assert re.match(rf"\s+#{lucky.number}\s+5\.0000\s+1\.0250\s+0\.0212\s+1,2 \(2/2\)", table[2]), table
    assert re.match(rf"\s+#{steady.number}\s+3\.0000\s+3\.0250\s+0\.0212\s+1,2 \(2/2\)", table[3]), table
    assert (folder / "multirun" / "best_command.txt").read_text() == "python app.py x=3\n"
    # The search's jobs reported to the pruner; the retrainings did not (never pruned)
    assert sorted((folder / "reports.txt").read_text().split()) == ["0"] * 4 + ["1"] * 4

    # MLflow: under the parent, one run per configuration with its mean and std, its seeds' job runs inside
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("Default").experiment_id], max_results=100)
    [parent] = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    groups = {int(r.data.tags["confirm_of"]): r for r in runs if r.data.tags.get("sweep") == "confirm"}
    assert set(groups) == {lucky.number, steady.number}
    group = groups[steady.number]
    assert group.data.tags["mlflow.parentRunId"] == parent.info.run_id and group.info.status == "FINISHED"
    assert group.data.metrics["value_mean"] == pytest.approx(mean, rel=1e-9)
    assert group.data.metrics["value_std"] == pytest.approx(std, rel=1e-9)
    assert group.data.metrics["search_value"] == 3.0 and group.data.params == {"x": "3"}
    seeds = {r.data.tags.get("seed"): r for r in runs if r.data.tags.get("mlflow.parentRunId") == group.info.run_id}
    assert set(seeds) == {"1", "2"} and all(r.data.tags["confirm_of"] == str(steady.number) for r in seeds.values())
    assert parent.data.metrics["best_trial"] == steady.number
    assert parent.data.metrics["best_value"] == pytest.approx(mean, rel=1e-9)

    # The same command again: the confirmations are in the study, nothing is trained again
    again = run_app(folder, *CONFIRM)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 runs to train, 4 already in the study" in again.stderr + again.stdout
    assert len(optuna.load_study(study_name="c", storage=f"sqlite:///{folder}/study.db").trials) == 8
    assert f"best (confirmed over 2 seeds): trial #{steady.number} value=3.0250" in again.stdout


def test_confirmations_run_in_the_device_pool(folder):
    result = run_app(folder, "hydra.sweeper.devices=[0,1]", "hydra.sweeper.confirm.top_k=1",
                     "hydra.sweeper.confirm.seeds=3")
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="c", storage=f"sqlite:///{folder}/study.db")
    confirms = sorted((t.user_attrs["seed"], t.value) for t in study.trials if "confirm_of" in t.user_attrs)
    assert [s for s, _ in confirms] == [1, 2, 3]
    assert [v for _, v in confirms] == pytest.approx([1.01, 1.04, 1.09], rel=1e-9)  # x=1, the search's lucky one
    assert "best (confirmed over 3 seeds): trial #" in result.stdout and "value=1.0467 ± 0.0404" in result.stdout


def test_a_warm_started_sweep_confirms_its_own_trials_not_the_copies(tmp_path, launcher):
    """Copies of another study's trials (warm start) have no overrides to retrain with and no run of this
    sweep: however well they scored, confirmation retrains the best of the trials this sweep launched."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    old = optuna.create_study(study_name="old", storage=storage, direction="maximize")
    for x in (1, 2):
        old.enqueue_trial({"x": x})
        old.tell(old.ask({"x": optuna.distributions.CategoricalDistribution([1, 2, 3])}), 100.0 + x)
    launcher.job = x_value
    sweep, study = started(tmp_path, "x=choice(1,2,3)", storage=storage, warm_start="old", n_trials=2)
    sweep.loop(study)
    copies = [t for t in study.trials if "warm_start_from" in t.user_attrs]
    ours = [t for t in study.trials if t.user_attrs.get("launched")]
    assert len(copies) == 2 and len(ours) == 2 and min(t.value for t in copies) > max(t.value for t in ours)
    best = max(ours, key=lambda t: t.value)
    outcome = Confirmation(top_k=1, seeds=2, seed_key="seed").run(sweep, study)
    sweep.heartbeats.stop()
    assert [row.trial.number for row in outcome.rows] == [best.number] and outcome.best.trial.number == best.number
    confirms = [t for t in study.trials if "confirm_of" in t.user_attrs]
    assert [(t.user_attrs["confirm_of"], t.user_attrs["seed"], t.state) for t in confirms] == [
        (best.number, 1, TrialState.COMPLETE), (best.number, 2, TrialState.COMPLETE)]
    x = f"x={best.params['x']}"
    assert [t.user_attrs["overrides"] for t in confirms] == [[x, "seed=1"], [x, "seed=2"]]
    assert outcome.best.values == [best.value, best.value]


def x_value(overrides):
    """A fake job's value: its x (a retraining without its configuration's overrides has none: it fails)."""
    return float(next(o for o in overrides if o.startswith("x="))[2:])


def tracked(tmp_path, launcher):
    """A two-trial search in this process (fake launcher), then MLflow on as `run` opens it: the parent run."""
    launcher.job = x_value
    sweep, study = make_sweep(tmp_path, "x=choice(1,2,3)", n_trials=2)
    sweep.loop(study)
    sweep.tracking = Tracking({"tracking_uri": fresh_sqlite_store(tmp_path), "experiment": "e"})
    sweep.parent = sweep.tracking.parent_run(study, sweep.storage)
    return sweep, study


def confirm_runs(sweep):
    client = sweep.tracking.client
    return client.search_runs([client.get_run(sweep.parent).info.experiment_id], "tags.sweep = 'confirm'")


@pytest.mark.parametrize("method, what", [("create_run", "opened"), ("log_metric", "written")])
def test_an_mlflow_error_in_confirmation_is_one_warning_and_the_sweep_goes_on(tmp_path, launcher, monkeypatch,
                                                                               caplog, method, what):
    sweep, study = tracked(tmp_path, launcher)
    best = max((t for t in study.trials if t.user_attrs.get("launched")), key=lambda t: t.value)

    def refuse(*args, **kwargs):
        raise RuntimeError("store down\nsecond line")
    monkeypatch.setattr(sweep.tracking.client, method, refuse)
    with caplog.at_level(logging.WARNING, logger="sweeper.confirm"):
        outcome = Confirmation(top_k=1, seeds=2, seed_key="seed").run(sweep, study)
    sweep.heartbeats.stop()
    # The retrainings trained and are in the study; the outcome is the summary's, as without the error
    assert outcome.best.trial.number == best.number and outcome.best.values == [best.value] * 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"confirmation of #{best.number}: its MLflow run could not be {what} (RuntimeError: store down); its "
        f"retrainings are recorded in the study all the same, and the sweep goes on"]
    # Its run, if the store made it, is FAILED, not left RUNNING
    assert [r.info.status for r in confirm_runs(sweep)] == ([] if method == "create_run" else ["FAILED"])


@pytest.mark.parametrize("error, status", [(RuntimeError("bug"), "FAILED"), (KeyboardInterrupt(), "KILLED"),
                                           (signals.Terminated("signal 15"), "KILLED")])
def test_confirmation_runs_end_killed_only_when_the_sweep_is_stopped(tmp_path, launcher, monkeypatch, error, status):
    sweep, study = tracked(tmp_path, launcher)

    def stop(*args, **kwargs):
        raise error
    monkeypatch.setattr(sweep.store, "record", stop)
    with pytest.raises(type(error)):
        Confirmation(top_k=1, seeds=1, seed_key="seed").run(sweep, study)
    sweep.heartbeats.stop()
    assert [r.info.status for r in confirm_runs(sweep)] == [status]


def test_confirm_keys_a_mapping_leaves_out_take_the_plugin_dataclass_defaults():
    [field] = [f for f in fields(ConstrainedOptunaSweeperConf) if f.name == "confirm"]
    default, base = field.default_factory(), OmegaConf.create({"seed": 5})
    assert Confirmation.from_settings(settings.typed({}).confirm, ["maximize"], base) is None  # top_k 0: off
    assert Confirmation.from_settings(None, ["maximize"], base) is None
    confirmation = Confirmation.from_settings(settings.typed({"confirm": {"top_k": 2}}).confirm, ["maximize"], base)
    assert (confirmation.top_k, confirmation.seeds, confirmation.seed_key) == (2, default["seeds"], default["seed_key"])
    assert confirmation.base_seed == 5


@pytest.mark.parametrize("overrides, line", [
    (["hydra.sweeper.confirm.top_k=-1"], "error: hydra.sweeper.confirm.top_k=-1: must be an integer >= 0"),
    (["hydra.sweeper.confirm.top_k=two"], "error: hydra.sweeper.confirm.top_k=two: must be an integer >= 0"),
    (["hydra.sweeper.confirm.top_k=2", "hydra.sweeper.confirm.seeds=0"],
     "error: hydra.sweeper.confirm.seeds=0: must be an integer >= 1"),
    (["hydra.sweeper.confirm.top_k=2", "hydra.sweeper.confirm.seed_key=trainer.seed"],
     "error: hydra.sweeper.confirm.seed_key=trainer.seed: not a key of the job config"),
    (["hydra.sweeper.confirm.top_k=1", "hydra.sweeper.direction=[maximize,minimize]"],
     "error: hydra.sweeper.confirm.top_k=1: confirmation ranks one objective and this sweep has 2"),
])
def test_confirm_settings_that_cannot_work_are_one_line_before_the_study(folder, overrides, line):
    result = run_app(folder, *overrides)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(line) and "Traceback" not in result.stderr
    assert not (folder / "study.db").exists() and not (folder / "multirun").exists()
