"""A preempted sweep goes on: SIGTERM to the sweep's process group is handled like Ctrl-C (one line, the trial
FAIL `interrupted`, the parent run KILLED, an exit within seconds), and running the same command again resumes
the trial from its last epoch checkpoint in a trial that carries its intermediate values, in the same MLflow run."""
import os
import signal
import subprocess
import sys
import time

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from tests.faultkit import REPO, fresh_sqlite_store, sweep_args, train_env, write_cifar

# 6, not 4: with two test workers on 2 cores, once the sweep ran on through epochs 3 and 4 before the SIGTERM sent
# after epoch 2 landed (the trial COMPLETE). The check below allows any later epoch to be the last one reported.
EPOCHS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 5 x 250 training images: an epoch of the micro model takes about a second on one CPU thread, so the
    # SIGTERM sent once epoch 2 is reported lands in epoch 3 (at 5 x 24 images an epoch took 0.2 s).
    return write_cifar(tmp_path_factory.mktemp("cifar"), per_file=250)


def sweep_command(data, tmp_path, *extra):
    args = sweep_args(data, fresh_sqlite_store(tmp_path) if not (tmp_path / "mlflow.db").exists()
                      else f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///{tmp_path}/optuna.db", "preempted", 1,
                      tmp_path / "multirun", epochs=EPOCHS, extra=("data.train_images=1250", "trainer.batch_size=50",
                                                                  *extra))
    return [sys.executable, str(REPO / "train.py"), *args]


def study(tmp_path):
    return optuna.load_study(study_name="preempted", storage=f"sqlite:///{tmp_path}/optuna.db")


def terminate_after_epoch(command, tmp_path, epoch):
    """Start the sweep, SIGTERM its process group once a trial has reported `epoch`; (process, output, seconds
    from the signal to the exit)."""
    sweep = subprocess.Popen(command, cwd=tmp_path, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while sweep.poll() is None and time.monotonic() < deadline:
        try:
            if any(epoch in t.intermediate_values for t in study(tmp_path).get_trials(deepcopy=False)):
                break
        except KeyError:  # the study is not created yet
            pass
        time.sleep(0.05)
    assert sweep.poll() is None, "the sweep ended before it could be terminated"
    os.killpg(sweep.pid, signal.SIGTERM)
    sent = time.monotonic()
    out, err = sweep.communicate(timeout=60)
    return sweep, out, err, time.monotonic() - sent


@pytest.mark.parametrize("runner", ["launcher", "pool"])
def test_a_sweep_terminated_after_epoch_2_resumes_its_trial_after_epoch_2_in_one_run(data, tmp_path, runner):
    extra = ("hydra.sweeper.devices=[0]",) if runner == "pool" else ()
    command = sweep_command(data, tmp_path, *extra)
    sweep, out, err, took = terminate_after_epoch(command, tmp_path, 2)
    assert sweep.returncode == 143, err[-3000:]
    assert took < 15, took  # seconds, not the rest of the trial
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("terminated (SIGTERM): the trials in flight are recorded FAIL"), err
    [interrupted] = [t for t in study(tmp_path).trials if t.user_attrs.get("launched")]
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["interrupted"] is True
    # The SIGTERM is sent once epoch 2 is reported; on a loaded machine epoch 3 may end before it lands. Either
    # way the trial stops inside a later epoch, and the rerun must go on after the last one it reported.
    stopped = max(interrupted.intermediate_values)
    assert 2 <= stopped < EPOCHS and sorted(interrupted.intermediate_values) == list(range(1, stopped + 1))
    checkpoint = interrupted.user_attrs["checkpoint"]
    assert os.path.isfile(checkpoint) and not [p for p in os.listdir(os.path.dirname(checkpoint)) if p.endswith(".tmp")]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = interrupted.user_attrs["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    [parent] = [r for r in client.search_runs([client.get_run(run_id).info.experiment_id])
                if r.data.tags.get("sweep") == "parent"]
    assert parent.info.status == "KILLED"

    again = subprocess.run(command, cwd=tmp_path, env=train_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming after epoch {stopped} from" in again.stdout
    assert not [e for e in range(1, stopped + 1) if f"epoch {e}/" in again.stdout]  # no epoch trained twice
    assert f"epoch {EPOCHS}/{EPOCHS}" in again.stdout

    trials = [t for t in study(tmp_path).trials if t.user_attrs.get("launched")]
    assert [t.number for t in trials] == [interrupted.number, interrupted.number + 1]
    replacement = trials[1]
    assert replacement.state == TrialState.COMPLETE and replacement.user_attrs["resumes"] == interrupted.number
    assert replacement.params == interrupted.params
    # One history for the pruner: epochs 1..stopped carried over, the rest reported by the resumed job.
    assert sorted(replacement.intermediate_values) == list(range(1, EPOCHS + 1))
    assert ({s: replacement.intermediate_values[s] for s in range(1, stopped + 1)}
            == dict(interrupted.intermediate_values))
    # One MLflow run for the trial: the interrupted one, continued, each epoch logged once.
    assert replacement.user_attrs["mlflow_run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["trial_number"] == str(replacement.number)
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == list(range(1, EPOCHS + 1))
    children = [r for r in client.search_runs([run.info.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert [c.info.run_id for c in children] == [run_id]


def test_a_requeued_job_takes_its_own_checkpoint_and_never_another_trials(tmp_path):
    """SLURM requeues a preempted job as the same trial in the same job folder: it goes on from its checkpoint. A
    sweep run again in the same hydra.sweep.dir gives that folder to another trial, which must start afresh."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from training import checkpoint
    cfg = OmegaConf.create({"model": {"name": "tiny"}, "trainer": {"epochs": 4, "resume": False},
                            "mlflow": {"tracking_uri": "sqlite:///m.db"}})
    path = tmp_path / "0" / "checkpoint" / "last.pt"
    state = {"config_key": checkpoint.config_key(cfg), "sweep_trial": "study#3", "epoch": 2, "mlflow_run_id": "r1"}
    checkpoint.save(path, state)
    tracker = SimpleNamespace(has_run=lambda run_id: run_id == "r1")
    same = SimpleNamespace(key="study#3", resume_from=None)
    other = SimpleNamespace(key="study#5", resume_from=None)
    replacing = SimpleNamespace(key="study#7", resume_from=str(path))
    assert checkpoint.load(path, cfg, tracker, same)["epoch"] == 2
    assert checkpoint.load(path, cfg, tracker, other) is None
    assert checkpoint.load(path, cfg, tracker, replacing)["sweep_trial"] == "study#3"
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # written whole, no temporary file left
