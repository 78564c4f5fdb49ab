"""Every hydra.sweeper setting is checked before the first trial (one `error:` line, exit 2), and an app that runs
clean under `python -W error` with the upstream sweeper runs clean with constrained_optuna: the sweeper's
deliberate use of Optuna's experimental heartbeat API warns nobody.

The app is the shape of the upstream plugin's multi-objective example (a function of x, y returning two values):
no torch, no data, so each run takes about a second."""
import subprocess
import sys

import optuna
import pytest

from tests.faultkit import train_env

APP = '''
import hydra


@hydra.main(config_path=".", config_name="config")
def binh_and_korn(cfg):
    x, y = cfg.x, cfg.y
    return 4 * x ** 2 + 4 * y ** 2, (x - 5) ** 2 + (y - 5) ** 2


if __name__ == "__main__":
    binh_and_korn()
'''
CONFIG = '''
defaults:
  - override hydra/sweeper: {sweeper}
  - override hydra/sweeper/sampler: nsgaii
hydra:
  sweeper:
    sampler:
      seed: 123
    direction: [minimize, minimize]
    study_name: multi-objective
    storage: null
    n_trials: 4
    n_jobs: 1
    params:
      x: range(0, 5, step=0.5)
      y: range(0, 3, step=0.5)
x: 1
y: 1
'''


def app(folder, sweeper):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(APP)
    (folder / "config.yaml").write_text(CONFIG.format(sweeper=sweeper))
    return folder


def run_app(folder, *overrides):
    return subprocess.run([sys.executable, "-W", "error", "app.py", "-m", f"hydra.sweep.dir={folder}/multirun",
                           *overrides], cwd=folder, env=train_env(), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_an_app_clean_under_W_error_with_the_upstream_sweeper_is_clean_with_constrained_optuna(storage, tmp_path):
    extra = [f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db"] if storage == "sqlite" else []
    upstream = run_app(app(tmp_path / "upstream", "optuna"))
    assert upstream.returncode == 0, upstream.stderr[-2000:]  # the baseline: this app is warnings-clean
    # sqlite turns on the heartbeats (Optuna's experimental API, and its warning at every ask outside optimize).
    ours = run_app(app(tmp_path / "ours", "constrained_optuna"), *extra)
    assert ours.returncode == 0, ours.stderr[-3000:]
    assert "Warning" not in ours.stdout + ours.stderr
    assert "python app.py x=" in ours.stdout  # the summary lists the trials
    if storage == "sqlite":
        study = optuna.load_study(study_name="multi-objective", storage=f"sqlite:///{tmp_path}/optuna.db")
        assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 4


@pytest.mark.parametrize("override, line", [
    ("hydra.sweeper.direction=maxim", "error: hydra.sweeper.direction=maxim: must be minimize, maximize"),
    ("hydra.sweeper.direction=[minimize,up]", "error: hydra.sweeper.direction=['minimize', 'up']: must be"),
    ("hydra.sweeper.objective_names=[a,a]", "error: hydra.sweeper.objective_names=['a', 'a']: must be a list of "
                                            "distinct names"),
    ("hydra.sweeper.objective_names=[only_one]", "error: hydra.sweeper.objective_names=['only_one']: must name "
                                                 "each of the 2 objectives"),
    ("hydra.sweeper.devices=[0,0]", "error: hydra.sweeper.devices=[0, 0]: must be auto, a list of distinct device ids"),
    ("hydra.sweeper.devices=[-1]", "error: hydra.sweeper.devices=[-1]: must be auto"),
    ("hydra.sweeper.devices=gpu0", "error: hydra.sweeper.devices=gpu0: must be auto"),
    ("hydra.sweeper.devices=[]", "error: hydra.sweeper.devices=[]: must be auto"),
    ("hydra.sweeper.storage=optuna.db", "error: hydra.sweeper.storage=optuna.db: must be a database URL"),
    ("hydra.sweeper.storage=journal:", "error: hydra.sweeper.storage=journal:: journal: needs a file"),
    ("hydra.sweeper.max_failure_rate=2", "error: hydra.sweeper.max_failure_rate=2.0: must be a number from 0 to 1"),
    ("hydra.sweeper.study_name=''", "error: hydra.sweeper.study_name=: must be a non-empty name"),
    ("hydra.sweeper.pruner=median", "error: hydra.sweeper.pruner=median: must be {name: median, ...}"),
    ("hydra.sweeper.heartbeat_interval=0", "error: hydra.sweeper.heartbeat_interval=0: must be a number of seconds"),
    ("hydra.sweeper.n_trials=0", "error: hydra.sweeper.n_trials=0: must be an integer >= 1"),
    ("hydra.sweeper.max_proposals_per_trial=-1", "error: hydra.sweeper.max_proposals_per_trial=-1: must be an integer"),
])
def test_every_sweep_setting_that_cannot_work_is_one_line_before_the_first_trial(override, line, tmp_path):
    folder = app(tmp_path, "constrained_optuna")
    result = run_app(folder, override, f"hydra.sweeper.storage=sqlite:///{tmp_path}/o.db"
                     if not override.startswith("hydra.sweeper.storage") else "hydra.sweeper.n_trials=1")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), result.stderr[-2000:]
    assert not (tmp_path / "o.db").exists() and not (tmp_path / "multirun").exists()  # nothing opened or started


def test_a_password_in_a_storage_url_of_the_wrong_form_is_masked(tmp_path):
    result = run_app(app(tmp_path, "constrained_optuna"), "hydra.sweeper.storage=user:Pw-secret-9@db/optuna")
    assert result.returncode == 2 and "Pw-secret-9" not in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("storage, refused", [
    ("sqlite://", True), ("sqlite:///:memory:", True), ("sqlite+pysqlite://", True),
    ("sqlite:///optuna.db", False), ("sqlite:////shared/optuna.db", False), ("journal:/shared/o.journal", False),
    (None, False),
])
def test_an_in_memory_sqlite_storage_is_refused_in_one_line(storage, refused):
    """Each job opens the storage URL again: in-memory SQLite would give every job an empty database of its own."""
    from types import SimpleNamespace

    from sweeper import settings
    from sweeper.core import UsageError
    if not refused:
        settings.check_storage(SimpleNamespace(storage=storage))
        return
    with pytest.raises(UsageError) as error:
        settings.check_storage(SimpleNamespace(storage=storage))
    assert str(error.value).startswith(f"hydra.sweeper.storage={storage}: an in-memory SQLite database")
    assert "\n" not in str(error.value)
