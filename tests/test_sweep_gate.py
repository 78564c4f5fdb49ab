"""The gate is the whole single-run check, a finite space ends when every configuration has run, and a
sweep that cannot start says why in one line (exit 2) and leaves nothing behind."""
import subprocess
import sys

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from tests.faultkit import MICRO_MODEL, REPO, data_overrides, fresh_sqlite_store, train_env, write_cifar


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("cifar"))


def run(tmp_path, *args, tracking=None):
    tracking = tracking or fresh_sqlite_store(tmp_path)
    argv = ["-m", "hydra/sweeper=optuna", "hydra/sweeper/search=empty", "hydra/sweeper/pruner=none",
            f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", "hydra.sweeper.study_name=s",
            f"hydra.sweep.dir={tmp_path}/multirun", "trainer.epochs=1", "trainer.batch_size=40",
            f"mlflow.tracking_uri={tracking}", *MICRO_MODEL, *args]
    return subprocess.run([sys.executable, str(REPO / "train.py"), *argv], cwd=tmp_path, env=train_env(),
                          capture_output=True, text=True, timeout=300)


def trials(tmp_path):
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db").trials


def job_folders(tmp_path):
    return sorted(p.name for p in (tmp_path / "multirun").iterdir() if p.is_dir())


def test_a_grid_with_an_over_budget_cell_runs_each_feasible_cell_once(data, tmp_path):
    # Micro model: width 2.0 x depth 1.0 is 30,002 parameters, the other three cells 7-25k. Before, the
    # grid launched 4 jobs for 3 distinct configs (n_trials counted the infeasible cell).
    result = run(tmp_path, *data_overrides(data), "hydra/sweeper/sampler=grid", "budget.max_params=28000",
                 "model.width_mult=choice(1.0,2.0)", "model.depth_mult=choice(0.5,1.0)")
    assert result.returncode == 0, result.stderr[-3000:]
    found = trials(tmp_path)
    launched = [t for t in found if t.user_attrs.get("launched")]
    assert len(launched) == 3 and len(job_folders(tmp_path)) == 3
    assert len({tuple(sorted(t.params.items())) for t in launched}) == 3
    [over] = [t for t in found if t.user_attrs.get("infeasible")]
    assert over.params == {"model.width_mult": 2.0, "model.depth_mult": 1.0} and over.state == TrialState.FAIL
    assert len(found) == 4


def test_tpe_on_a_finite_space_stops_when_every_configuration_has_run(data, tmp_path):
    result = run(tmp_path, *data_overrides(data), "hydra.sweeper.n_trials=10", "hydra.sweeper.sampler.seed=0",
                 "budget.max_params=28000", "model.width_mult=choice(1.0,2.0)", "model.depth_mult=choice(0.5,1.0)")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "every configuration of the search space has been tried" in result.stdout + result.stderr
    found = trials(tmp_path)
    launched = [t for t in found if t.user_attrs.get("launched")]
    assert len(launched) == 3 and len({tuple(sorted(t.params.items())) for t in launched}) == 3  # no repeats
    for t in found:
        if "repeat_of" in t.user_attrs:  # recorded, never launched
            assert t.state == TrialState.FAIL and not t.user_attrs.get("launched")
            assert found[t.user_attrs["repeat_of"]].params == t.params


def test_a_proposal_only_the_single_run_check_refuses_is_never_launched(data, tmp_path):
    # fp64 has a parameter count like fp32's; only check_config refuses it (as a single run does, before data).
    result = run(tmp_path, *data_overrides(data), "hydra/sweeper/sampler=grid", "trainer.precision=choice(fp32,fp64)")
    assert result.returncode == 0, result.stderr[-3000:]
    by_precision = {t.params["trainer.precision"]: t for t in trials(tmp_path)}
    fp64 = by_precision["fp64"]
    assert fp64.state == TrialState.FAIL and fp64.user_attrs["invalid"] and not fp64.user_attrs.get("launched")
    assert "trainer.precision=fp64: use one of fp32, bf16, fp16" in fp64.user_attrs["reason"]
    assert fp64.constraints["params"] > 0  # samplers see it as infeasible
    assert by_precision["fp32"].state == TrialState.COMPLETE and job_folders(tmp_path) == ["0"]


def nothing_written(tmp_path):
    assert not (tmp_path / "optuna.db").exists()
    runs = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(["0", "1"])
    assert runs == []


@pytest.mark.parametrize("case", ["missing search key", "missing dataset", "unreachable tracking server",
                                  "no validation split"])
def test_a_sweep_that_cannot_start_says_why_in_one_line(case, data, tmp_path):
    tracking = fresh_sqlite_store(tmp_path)
    args = {"missing search key": [*data_overrides(data), "model.depth_mul=choice(0.5,1.0)"],
            "no validation split": [*data_overrides(data), "data.val_size=0", "model.dropout=interval(0,0.3)"],
            "missing dataset": [*data_overrides(tmp_path / "nowhere"), "model.dropout=interval(0,0.3)"],
            "unreachable tracking server": [*data_overrides(data), "model.dropout=interval(0,0.3)",
                                            "mlflow.tracking_uri=http://127.0.0.1:9"]}[case]
    result = run(tmp_path, *args, tracking=tracking)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr
    expected = {"missing search key": "error: hydra.sweeper.params: 'model.depth_mul' is not a key of the config "
                                      "(model=tiny)",
                "missing dataset": "error: CIFAR-10 not found",
                "unreachable tracking server": "error: MLflow tracking server http://127.0.0.1:9 cannot be reached",
                "no validation split": "error: data.val_size=0: a sweep ranks its trials by validation accuracy"}
    assert lines[-1].startswith(expected[case])
    nothing_written(tmp_path)


def test_the_default_search_works_on_every_model_preset(tmp_path):
    from omegaconf import OmegaConf

    from sweeper import space
    from tests.conftest import compose_cfg
    preset = OmegaConf.load(REPO / "conf" / "hydra" / "sweeper" / "search" / "depth_width_dropout.yaml")
    search, _ = space.parse(preset, [])
    for model in sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml")):
        assert space.missing_keys(search, compose_cfg([f"model={model}"]), lambda key: False) == [], model
    # The example, end to end (a preview: no data, nothing written).
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "-m", "hydra/sweeper=optuna", "dry_run=true",
                             "model=table1_row2", "hydra.sweeper.n_trials=3"], cwd=tmp_path, env=train_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith("proposals=3 ")
