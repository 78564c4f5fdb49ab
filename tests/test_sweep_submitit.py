"""The SLURM path, run locally: `hydra/launcher=submitit_local` is the code path `submitit_slurm` takes (each
trial pickled, submitted as its own job, run in a fresh process, its result read back), without a cluster."""
import subprocess
import sys

import mlflow
import optuna

from tests.faultkit import MICRO_MODEL, REPO, data_overrides, fresh_sqlite_store, train_env, write_cifar


def test_a_sweep_through_submitit_gates_trains_and_nests_its_trials(tmp_path):
    data = write_cifar(tmp_path / "data")
    store = fresh_sqlite_store(tmp_path / "mlflow")
    # widths 1 and 3 of the micro model: 3 is over a 40,000-parameter budget, so the gate has work to do
    args = ["-m", "hydra/sweeper=optuna", "hydra/launcher=submitit_local", "hydra/sweeper/search=empty",
            "hydra/sweeper/pruner=none", "model.width_mult=choice(1.0,3.0)", "model.dropout=choice(0.0,0.1)",
            "budget.max_params=40000", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=0",
            f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", "hydra.sweeper.study_name=slurm-path",
            f"hydra.sweep.dir={tmp_path}/multirun", "hydra.launcher.timeout_min=10",
            *data_overrides(data), *MICRO_MODEL, "trainer.epochs=1", "trainer.batch_size=40",
            f"mlflow.tracking_uri={store}", "mlflow.log_model=true", "mlflow.register_best=slurm-path-best"]
    done = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=train_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Browse it: mlflow ui --backend-store-uri sqlite:///" in done.stdout

    study = optuna.load_study(study_name="slurm-path", storage=f"sqlite:///{tmp_path}/optuna.db")
    launched = [t for t in study.trials if t.user_attrs.get("launched")]
    assert len(launched) == 2 and all(t.params["model.width_mult"] == 1.0 for t in launched)
    assert all(t.user_attrs["params"] <= 40_000 for t in launched)
    # Each trial ran as a submitit job: its own folder with the job's pickled call, result and logs.
    assert len(list((tmp_path / "multirun" / ".submitit").glob("*/*_result.pkl"))) == 2

    client = mlflow.MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert all(c.info.status == "FINISHED" and c.data.tags["model_uri"].startswith("models:/") for c in children)
    # The best trial's model is in the Model Registry, and the parent says which version.
    [version] = client.search_model_versions("name = 'slurm-path-best'")
    best = next(c for c in children if c.data.tags["trial_number"] == str(study.best_trial.number))
    assert version.run_id == best.info.run_id
    assert parents[0].data.tags["registered_model"] == f"slurm-path-best/{version.version}"
