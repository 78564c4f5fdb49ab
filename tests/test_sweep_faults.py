"""Sweeps under real conditions: two workers on one study in PostgreSQL with a password that must not leak,
and a sweep killed mid-trial."""
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from tests.faultkit import REPO, fresh_sqlite_store, sweep_args, tiny_overrides, train_env

# Short heartbeats so a killed trial is recognised as dead within seconds (defaults: 10 s / 60 s).
FAST_HEARTBEAT = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3"]


@pytest.fixture(scope="module")
def data(micro_cifar):
    return micro_cifar


def launch(args, cwd):
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=train_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def launched(study):
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("launched")]


def trial_runs(tracking_uri, experiment):
    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags], [r for r in runs if r.data.tags.get("sweep")]


PASSWORD = "Pw-4f9c2e71-secret"


def password_copies(root, outputs, tracking, storage):
    """Every place the password could have been written: files under root, console output, MLflow params,
    tags and artifacts, and the study's attributes."""
    found = [f"file {path}" for path in Path(root).rglob("*") if path.is_file() and PASSWORD.encode() in path.read_bytes()]
    found += [f"console of worker {i}" for i, out in enumerate(outputs) if PASSWORD in out]
    client = mlflow.MlflowClient(tracking)
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000):
        found += [f"run {run.info.run_name} param {k}" for k, v in run.data.params.items() if PASSWORD in v]
        found += [f"run {run.info.run_name} tag {k}" for k, v in run.data.tags.items() if PASSWORD in v]
        download = Path(client.download_artifacts(run.info.run_id, "", dst_path=str(Path(root) / "downloaded")))
        found += [f"run {run.info.run_name} artifact {p.name}" for p in download.rglob("*")
                  if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    study = optuna.load_study(study_name="shared", storage=storage)
    found += [f"study attr {k}" for k, v in study.user_attrs.items() if PASSWORD in json.dumps(v)]
    for trial in study.trials:
        found += [f"trial {trial.number} attr {k}" for k, v in {**trial.user_attrs, **trial.system_attrs}.items()
                  if PASSWORD in json.dumps(v)]
    return found


def test_two_workers_on_postgres_with_a_password_leave_no_copy_of_it(postgres, data, tmp_path):
    postgres.create_role("sweeper", PASSWORD)
    for database in ("optuna", "mlflow"):
        postgres.create_database(database, owner="sweeper")
    storage = postgres.url("optuna", "sweeper", PASSWORD)     # as the README writes them
    tracking = postgres.url("mlflow", "sweeper", PASSWORD)
    # Both schemas once, before two workers race to create them (README: `optuna create-study` does the same).
    optuna.create_study(study_name="shared", storage=storage, direction="maximize")
    mlflow.MlflowClient(tracking).search_experiments()
    n_trials = 3
    common = ["-m", "hydra/sweeper=optuna", "hydra/sweeper/search=empty", "hydra/sweeper/pruner=none",
              "optimizer.lr=interval(0.0005,0.005)", f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.n_jobs=1",
              "hydra.sweeper.study_name=shared", *FAST_HEARTBEAT,
              *[a for a in tiny_overrides(data, "-") if not a.startswith("mlflow.tracking_uri")]]
    # Worker 0: the URLs on the command line (the worst case); worker 1: from environment variables, as the
    # README advises (the presets read OPTUNA_STORAGE and MLFLOW_TRACKING_URI).
    on_command_line = [f"hydra.sweeper.storage={storage}", f"mlflow.tracking_uri={tracking}"]
    from_environment = []
    env = dict(train_env(), OPTUNA_STORAGE=storage, MLFLOW_TRACKING_URI=tracking)
    workers = [subprocess.Popen([sys.executable, str(REPO / "train.py"), *common, *extra,
                                 f"hydra.sweep.dir={tmp_path}/worker{i}"], cwd=tmp_path, env=worker_env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
               for i, (extra, worker_env) in enumerate([(on_command_line, train_env()), (from_environment, env)])]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]

    study = optuna.load_study(study_name="shared", storage=storage)
    trials = launched(study)
    assert len(trials) == n_trials and all(t.state == TrialState.COMPLETE for t in trials)
    told = [[out.count(f"  trial #{t.number}: value") for out in outputs] for t in trials]
    assert sorted(map(sum, told)) == [1] * n_trials, told  # each trial trained and told by exactly one worker
    children, parents = trial_runs(tracking, "cifar10-resnet")
    assert len(parents) == 1 and len(children) == n_trials
    assert Counter(int(r.data.tags["trial_number"]) for r in children) == Counter(t.number for t in trials)
    assert password_copies(tmp_path, outputs, tracking, storage) == []
    assert "sweeper:***@127.0.0.1" in outputs[0]  # the URL is shown, masked
    assert children[0].data.params["mlflow.tracking_uri"] == tracking.replace(PASSWORD, "***")


def test_a_sweep_killed_mid_trial_completes_when_run_again(data, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    tracking = fresh_sqlite_store(tmp_path)
    args = sweep_args(data, tracking, storage, "killed", 3, tmp_path / "multirun", epochs=6) + FAST_HEARTBEAT
    sweep = launch(args, tmp_path)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and sweep.poll() is None:
        try:
            trials = launched(optuna.load_study(study_name="killed", storage=storage))
        except KeyError:  # study not created yet
            trials = []
        # A checkpoint on disk means a trial is between epochs (a finished trial deletes its own).
        training = list((tmp_path / "multirun").glob("*/checkpoint/last.pt"))
        if [t.state for t in trials].count(TrialState.COMPLETE) >= 1 and training:
            break
        time.sleep(0.1)
    os.killpg(sweep.pid, signal.SIGKILL)  # the sweeper and its in-process trial die at once
    output = sweep.communicate()[0]
    assert sweep.returncode == -signal.SIGKILL, output[-3000:]
    before = {t.number: t.state for t in launched(optuna.load_study(study_name="killed", storage=storage))}
    completed_before = sorted(n for n, s in before.items() if s == TrialState.COMPLETE)
    [interrupted] = [n for n, s in before.items() if s == TrialState.RUNNING]

    again = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=train_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming: {len(completed_before)} of 3 trials already trained" in again.stdout + again.stderr

    study = optuna.load_study(study_name="killed", storage=storage)
    after = {t.number: t for t in launched(study)}
    complete = sorted(n for n, t in after.items() if t.state == TrialState.COMPLETE)
    assert len(complete) == 3 and set(completed_before) <= set(complete)  # kept, not redone
    assert after[interrupted].state == TrialState.FAIL and "fail_reason" not in after[interrupted].user_attrs
    assert len(after) == 4  # 3 complete + the interrupted one, which a new trial replaced

    children, parents = trial_runs(tracking, "cifar10-resnet")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    by_number = {int(r.data.tags["trial_number"]): r for r in children}
    assert sorted(by_number) == sorted(after) and len(children) == 4
    assert all(by_number[n].info.status == "FINISHED" for n in complete)
    assert by_number[interrupted].info.status == "KILLED"
    assert by_number[interrupted].data.tags["trial_state"] == "FAIL"
    parent_metrics = parents[0].data.metrics
    assert parent_metrics["trials_complete"] == 3 and parent_metrics["trials_failed"] == 1


def test_a_sweep_whose_jobs_change_folder_keeps_one_study_store_and_dataset(data, tmp_path):
    """hydra.job.chdir=true runs each job in its own output folder. Relative paths (the default storage
    sqlite:///optuna.db, the MLflow store, data.root) are the launch folder's for the jobs too: before, each job
    opened a new, empty optuna.db in its folder and every trial crashed ("Record does not exist")."""
    import shutil
    shutil.copytree(data, tmp_path / "data")
    args = sweep_args("data", "sqlite:///mlflow.db", "sqlite:///optuna.db", "moved", 2, tmp_path / "multirun",
                      epochs=1, extra=["hydra.job.chdir=true"])
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=train_env(),
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="moved", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state for t in launched(study)] == [TrialState.COMPLETE] * 2
    children, parents = trial_runs(f"sqlite:///{tmp_path}/mlflow.db", "cifar10-resnet")
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(p.name for p in tmp_path.rglob("*.db")) == ["mlflow.db", "optuna.db"]  # none in the job folders

