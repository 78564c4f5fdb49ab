"""`hydra/sweeper=constrained_optuna` for any Hydra app: small apps written to a temp folder and run from
there (another cwd than this repo), found through the hydra_plugins namespace without registration."""
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from tests.faultkit import REPO

SPHERE = """
import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path=".", config_name="config")
def sphere(cfg: DictConfig) -> float:
    x: float = cfg.x
    y: float = cfg.y
    return x**2 + y**2


if __name__ == "__main__":
    sphere()
"""

# The upstream plugin's example/conf/config.yaml, as it ships.
SPHERE_CONFIG = """
defaults:
  - override hydra/sweeper: optuna

hydra:
  sweeper:
    sampler:
      seed: 123
    direction: minimize
    study_name: sphere
    storage: null
    n_trials: 20
    n_jobs: 1
    params:
      x: range(-5.5, 5.5, step=0.5)
      y: choice(-5, 0, 5)

x: 1
y: 1
"""


def app(tmp_path, source, config, extra_files=()):
    (tmp_path / "app.py").write_text(textwrap.dedent(source))
    (tmp_path / "config.yaml").write_text(textwrap.dedent(config))
    for name, text in extra_files:
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def run_app(folder, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # as if installed: the plugin on the path
    return subprocess.run([sys.executable, "app.py", "-m", "hydra/sweeper=constrained_optuna",
                           "hydra.sweep.dir=multirun", *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_upstream_example_runs_unchanged(tmp_path):
    folder = app(tmp_path, SPHERE, SPHERE_CONFIG)
    result = run_app(folder)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len([d for d in (folder / "multirun").iterdir() if d.is_dir()]) == 20  # 20 jobs, one per trial
    results = yaml.safe_load((folder / "multirun" / "optimization_results.yaml").read_text())
    assert set(results) == {"name", "best_params", "best_value"} and results["name"] == "optuna"
    assert results["best_value"] == results["best_params"]["x"] ** 2 + results["best_params"]["y"] ** 2
    assert results["best_value"] <= 1.0  # TPE with seed 123 finds the bowl's bottom region in 20 trials
    assert not (folder / "mlflow.db").exists() and not list(folder.glob("*.db"))  # no MLflow, in-memory study


def test_a_constraint_of_the_apps_own_sees_the_composed_job_config(tmp_path):
    limits = """
    def radius(cfg):
        return cfg.x ** 2 + cfg.y ** 2 - 10, cfg.x ** 2 + cfg.y ** 2  # amount over, measured value
    """
    folder = app(tmp_path, SPHERE.replace("x**2 + y**2", "-(x**2 + y**2)"),
                 SPHERE_CONFIG.replace("direction: minimize", "direction: maximize"), [("limits.py", limits)])
    result = run_app(folder, "+hydra.sweeper.constraints.r2._target_=limits.radius", "hydra.sweeper.n_trials=8",
                     "hydra.sweeper.storage=sqlite:///study.db")
    assert result.returncode == 0, result.stderr[-3000:]
    import optuna
    study = optuna.load_study(study_name="sphere", storage=f"sqlite:///{folder}/study.db")
    launched = [t for t in study.trials if t.user_attrs.get("launched")]
    over = [t for t in study.trials if t.user_attrs.get("infeasible")]
    assert len(launched) == 8 and over  # the space's corners (x^2 + y^2 up to 55) are over
    assert all(t.params["x"] ** 2 + t.params["y"] ** 2 <= 10 for t in launched)
    assert all(t.user_attrs["r2"] == t.params["x"] ** 2 + t.params["y"] ** 2 for t in launched + over)
    assert all(t.constraints["r2"] > 0 for t in over)


ODD = """
import math

import hydra


@hydra.main(version_base=None, config_path=".", config_name="config")
def main(cfg):
    return {0: 0.5, 1: None, 2: "text", 3: math.nan}[cfg.x]


if __name__ == "__main__":
    main()
"""


def test_non_numeric_returns_are_failed_trials_and_the_sweep_goes_on(tmp_path):
    config = """
    hydra:
      sweeper:
        direction: maximize
        n_trials: 4
        storage: sqlite:///study.db
        study_name: odd
        params:
          x: choice(0, 1, 2, 3)
    x: 0
    """
    folder = app(tmp_path, ODD, config)
    result = run_app(folder, "hydra/sweeper/sampler=grid")
    assert result.returncode == 0, result.stderr[-3000:]
    import optuna
    trials = {t.params["x"]: t for t in optuna.load_study(study_name="odd", storage=f"sqlite:///{folder}/study.db").trials}
    assert trials[0].state.name == "COMPLETE" and trials[0].value == 0.5
    for x, shown in [(1, "None"), (2, "'text'"), (3, "nan")]:
        assert trials[x].state.name == "FAIL"
        assert trials[x].user_attrs["fail_reason"] == f"the job returned {shown}, not a number"


def test_single_runs_do_not_import_optuna_or_mlflow(tmp_path):
    # Hydra imports every hydra_plugins module at every start: ours must stay cheap.
    folder = app(tmp_path, """
    import sys

    import hydra


    @hydra.main(version_base=None, config_path=".", config_name="config")
    def main(cfg):
        print("loaded:", sorted(m for m in ("optuna", "mlflow", "sweeper.core") if m in sys.modules))


    if __name__ == "__main__":
        main()
    """, "x: 1\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "app.py"], cwd=folder, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout


@pytest.mark.parametrize("pruner", [{"name": "median", "n_startup_trials": 1}, {"name": "nope"}])
def test_pruner_specs(pruner):
    from sweeper.job import build_pruner
    if pruner["name"] == "nope":
        with pytest.raises(ValueError, match="hydra.sweeper.pruner.name='nope' is unknown: use one of none, median"):
            build_pruner(pruner)
    else:
        assert type(build_pruner(pruner)).__name__ == "MedianPruner"


def test_a_fixed_value_with_a_space_reaches_the_best_config_and_command(tmp_path):
    # `name='cifar sweep'` in a shell reaches Hydra as `name=cifar sweep`. The summary used to rebuild the
    # best trial's overrides by splitting a joined string, failed on `sweep`, and left the parent RUNNING.
    from tests.faultkit import fresh_sqlite_store
    fresh_sqlite_store(tmp_path)  # the store the sweep names, ready made
    folder = app(tmp_path, """
    import hydra


    @hydra.main(version_base=None, config_path=".", config_name="config")
    def main(cfg):
        return float(cfg.x)


    if __name__ == "__main__":
        main()
    """, "x: 0\nname: a\n")
    result = run_app(folder, "x=choice(0,1)", "name=cifar sweep", "hydra.sweeper.n_trials=2",
                     "hydra.sweeper.direction=maximize", "hydra/sweeper/sampler=grid",
                     "+hydra.sweeper.mlflow.tracking_uri=sqlite:///mlflow.db")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert yaml.safe_load((folder / "multirun" / "best_config.yaml").read_text()) == {"x": 1, "name": "cifar sweep"}
    assert (folder / "multirun" / "best_command.txt").read_text() == "python app.py x=1 'name=cifar sweep'\n"
    import mlflow
    runs = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db").search_runs(["0"])
    assert [r.info.status for r in runs if r.data.tags.get("sweep") == "parent"] == ["FINISHED"]
