"""Sweep settings that cannot work end in one error line and exit 2 before the study is opened: never a hang
(0 slots per device waited forever), never a silent exit 0 (a negative n_trials), never Optuna's traceback (an
interval with its bounds the wrong way round)."""
import subprocess
import sys

import pytest

from tests.faultkit import REPO, train_env


@pytest.mark.parametrize("overrides, line", [
    (["hydra.sweeper.trials_per_device=0", "hydra.sweeper.devices=[0]"],
     "error: hydra.sweeper.trials_per_device=0: must be an integer >= 1"),
    (["hydra.sweeper.n_trials=-3"], "error: hydra.sweeper.n_trials=-3: must be an integer >= 1"),
    (["hydra.sweeper.n_jobs=0"], "error: hydra.sweeper.n_jobs=0: must be an integer >= 1"),
    (["model.dropout=interval(0.5,0.1)"], "error: model.dropout=interval(0.5,0.1): `low <= high` must hold"),
])
def test_a_sweep_setting_that_cannot_work_is_one_line_before_the_study(overrides, line, tmp_path):
    env = train_env()
    env["CIFAR10_ROOT"] = str(tmp_path / "no-data-needed")  # refused before the data is looked at
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "-m", "hydra/sweeper=optuna", "model=tiny",
                             *overrides, f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db",
                             f"hydra.sweeper.storage=sqlite:///{tmp_path}/o.db", f"hydra.sweep.dir={tmp_path}/multirun"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(line) and "Traceback" not in result.stderr
    assert not (tmp_path / "o.db").exists() and not (tmp_path / "m.db").exists()  # no store was touched
