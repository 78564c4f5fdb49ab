"""Sweeps end to end, as a user runs them: `python train.py -m hydra/sweeper=optuna ...` on synthetic data."""
import subprocess
import sys

import mlflow
import optuna
from optuna.trial import TrialState

from tests.conftest import REPO
from tests.faultkit import fresh_sqlite_store


def run_sweep(tmp_path, env, *extra, study="s", store="mlflow.db"):
    if not (tmp_path / store).exists():  # a new store, ready made (its schema is not what these tests check)
        fresh_sqlite_store(tmp_path, store)
    args = ["-m", "hydra/sweeper=optuna", "model=tiny", "trainer.epochs=2", "trainer.batch_size=100",
            "data.train_images=500", "data.test_images=200", "data.val_size=100", "trainer.log_every=0",
            "mlflow.log_model=false",  # a trial's logged model: tests/test_sweep_submitit.py, test_mlflow_server.py
            "trainer.device=cpu", f"mlflow.tracking_uri=sqlite:///{tmp_path}/{store}",
            f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", f"hydra.sweeper.study_name={study}",
            f"hydra.sweep.dir={tmp_path}/multirun", "hydra.sweeper.sampler.seed=0", *extra]
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


def load(tmp_path, study="s"):
    return optuna.load_study(study_name=study, storage=f"sqlite:///{tmp_path}/optuna.db")


def mlflow_runs(tmp_path, store="mlflow.db"):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/{store}")
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def launched(study):
    return [t for t in study.trials if t.user_attrs.get("launched")]


def test_sweep_gates_budget_logs_parent_and_children_and_resumes(tmp_path, train_env):
    # width 2.0 puts the tiny model (135k) far over a 150k budget: about half the space is infeasible
    space = ["budget.max_params=150000", "model.width_mult=choice(0.5,2.0)", "model.depth_mult=choice(0.5,1.0)",
             "hydra/sweeper/pruner=none"]
    first = run_sweep(tmp_path, train_env, "hydra.sweeper.n_trials=3", *space)
    assert first.returncode == 0, first.stderr[-3000:]
    study = load(tmp_path)
    trained = launched(study)
    assert len(trained) == 3 and all(t.state == TrialState.COMPLETE for t in trained)
    infeasible = [t for t in study.trials if t.user_attrs.get("infeasible")]
    for t in infeasible:
        assert t.params["model.width_mult"] == 2.0 and t.user_attrs["params"] > 150_000
        assert t.constraints["params"] > 0 and not t.user_attrs.get("launched") and t.state == TrialState.FAIL
    assert all(t.user_attrs["params"] <= 150_000 and t.constraints["params"] <= 0 for t in trained)
    assert "best trial #" in first.stdout
    assert (tmp_path / "multirun" / "optimization_results.yaml").is_file()
    command = (tmp_path / "multirun" / "best_command.txt").read_text()
    assert command.startswith("python train.py ") and "sweep." not in command

    runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 3   # over-budget proposals never became runs
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.data.tags["trial_state"] for r in children} == {"COMPLETE"}
    assert sorted(int(r.data.tags["trial_number"]) for r in children) == sorted(t.number for t in trained)
    assert "best_value" in parents[0].data.metrics and parents[0].info.status == "FINISHED"
    parent_artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parents[0].info.run_id)}
    assert {"optimization_history.png", "val_acc_vs_params.png"} <= parent_artifacts
    child_artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(children[0].info.run_id)}
    assert "resolved_config.yaml" in child_artifacts and "training_curves.png" not in child_artifacts  # log_curves=auto

    # Resume: the same command with a larger n_trials keeps the 3 and trains only 2 more
    second = run_sweep(tmp_path, train_env, "hydra.sweeper.n_trials=5", *space)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming: 3 of 5 trials already trained" in second.stderr + second.stdout
    study = load(tmp_path)
    assert len(launched(study)) == 5
    assert [t.number for t in launched(study)][:3] == [t.number for t in trained]
    children = [r for r in mlflow_runs(tmp_path) if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 5 and len({r.data.tags["mlflow.parentRunId"] for r in children}) == 1

    # The study goes on with another MLflow store (or its store was deleted): a new parent run there
    third = run_sweep(tmp_path, train_env, "hydra.sweeper.n_trials=6", *space, store="other.db")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "is not in sqlite:///" in third.stderr + third.stdout
    runs = mlflow_runs(tmp_path, store="other.db")
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 1 and children[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id


def test_space_all_over_budget_stops_with_a_clear_message(tmp_path, train_env):
    result = run_sweep(tmp_path, train_env, "budget.max_params=1000", "hydra.sweeper.max_proposals_per_trial=5",
                       "hydra.sweeper.n_trials=2")
    assert result.returncode == 2
    assert "error: 5 proposals in a row were over budget" in result.stderr and "Traceback" not in result.stderr
    study = load(tmp_path)
    assert len(study.trials) == 5 and not launched(study)
    runs = mlflow_runs(tmp_path)
    assert not [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert [r.info.status for r in runs if r.data.tags.get("sweep") == "parent"] == ["FAILED"]


def test_pruned_trials_are_recorded_with_their_epoch(tmp_path, train_env):
    result = run_sweep(tmp_path, train_env, "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=0.999",
                       "hydra.sweeper.pruner.n_warmup_steps=0", "hydra.sweeper.n_trials=2")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = launched(load(tmp_path))
    assert len(trials) == 2 and {t.state for t in trials} == {TrialState.PRUNED}
    assert all(t.last_step == 1 and t.user_attrs["pruned_at_step"] == 1 for t in trials)
    children = [r for r in mlflow_runs(tmp_path) if r.data.tags.get("mlflow.parentRunId")]
    assert {r.data.tags["trial_state"] for r in children} == {"PRUNED"}
    assert all(r.info.status == "KILLED" for r in children)


def test_a_diverging_trial_fails_alone_and_the_sweep_goes_on(tmp_path, train_env):
    result = run_sweep(tmp_path, train_env, "hydra/sweeper/sampler=grid", "optimizer=sgd", "scheduler=constant",
                       "optimizer.lr=choice(0.01,1e12)", "hydra/sweeper/search=empty", "hydra/sweeper/pruner=none",
                       "hydra.sweeper.n_trials=2")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = {t.params["optimizer.lr"]: t for t in launched(load(tmp_path))}
    assert trials[0.01].state == TrialState.COMPLETE
    assert trials[1e12].state == TrialState.FAIL and trials[1e12].user_attrs["fail_reason"].startswith("diverged")


def test_multi_objective_sweep_gives_a_pareto_front(tmp_path, train_env):
    result = run_sweep(tmp_path, train_env, "hydra.sweeper.direction=[maximize,minimize]", "trainer.epochs=1",
                       "hydra/sweeper/search=empty", "model.width_mult=choice(0.5,1.0)", "hydra.sweeper.n_trials=2")
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(tmp_path)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    for t in launched(study):
        assert t.values[1] == t.user_attrs["params"]
    front = (tmp_path / "multirun" / "pareto_front.tsv").read_text().splitlines()
    assert front[0] == "val_acc\tnum_params\tcommand" and len(front) >= 2
    assert (tmp_path / "multirun" / "pareto_front.png").stat().st_size > 0
