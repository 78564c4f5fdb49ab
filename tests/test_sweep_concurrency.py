"""Several processes on one study or one store: heartbeats held by the sweeper, tolerant tells, stale
proposals reclaimed without a hot loop, and sqlite stores (Optuna's, MLflow's) created by two at once."""
import subprocess
import sys
import time

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from tests.faultkit import REPO, fresh_sqlite_store, tiny_overrides, train_env, write_cifar


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("cifar"))


def launch(args, cwd):
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=train_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def sweep_args(data, storage, tracking, study, n_trials, epochs, *extra):
    return ["-m", "hydra/sweeper=optuna", "hydra/sweeper/search=empty", "hydra/sweeper/pruner=none",
            "model.dropout=interval(0,0.3)", f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.storage={storage}",
            f"hydra.sweeper.study_name={study}", *tiny_overrides(data, tracking, epochs=epochs), *extra]


def test_two_workers_with_batches_of_two_and_a_grace_period_shorter_than_a_trial(data, tmp_path):
    # Each worker launches 2 trials per batch with the basic launcher: the second waits in the queue for
    # the whole of the first (~5 s, 80 epochs), longer than grace_period (3 s). Before, the other worker
    # took the queued trial for dead and failed it, and its owner crashed telling it.
    storage = f"sqlite:///{tmp_path}/optuna.db"  # created by both workers at once (the first-open lock)
    tracking = fresh_sqlite_store(tmp_path)
    args = sweep_args(data, storage, tracking, "pair", 4, 80, "hydra.sweeper.n_jobs=2",
                      "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3")
    workers = [launch(args + [f"hydra.sweep.dir={tmp_path}/w{i}"], tmp_path) for i in range(2)]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
        assert "already closed" not in output and "Traceback" not in output, output[-3000:]

    study = optuna.load_study(study_name="pair", storage=storage)
    launched = [t for t in study.trials if t.user_attrs.get("launched")]
    assert len(launched) == 4 and all(t.state == TrialState.COMPLETE for t in launched)
    assert not [t for t in study.trials if t.state == TrialState.FAIL and not t.user_attrs.get("withdrawn")]
    told = [sum(out.count(f"  trial #{t.number}: value") for out in outputs) for t in launched]
    assert told == [1, 1, 1, 1]
    # The condition that used to break it happened: a trial waited in its batch longer than grace_period.
    client = mlflow.MlflowClient(tracking)
    runs = {int(r.data.tags["trial_number"]): r for r in client.search_runs(
        [client.get_experiment_by_name("cifar10-resnet").experiment_id]) if "trial_number" in r.data.tags}
    waited = [runs[t.number].info.start_time / 1000 - t.datetime_start.timestamp() for t in launched]
    assert max(waited) > 3, waited


def test_a_proposal_left_running_by_a_dead_worker_is_reclaimed_without_a_hot_loop(data, tmp_path):
    """End to end, with the orphan's heartbeat gone stale. One that never had a heartbeat is failed by the same
    loop after grace_period: tests/test_sweep_loop.py checks that in-process (12 s less than a second sweep here)."""
    storage_url = f"sqlite:///{tmp_path}/optuna.db"
    storage = optuna.storages.RDBStorage(storage_url, heartbeat_interval=1, grace_period=4)
    study = optuna.create_study(study_name="orphan", storage=storage, direction="maximize")
    orphan = study.ask()  # a worker killed between its ask and its launch
    study_id = storage.get_study_id_from_name("orphan")
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, orphan.number))

    started = time.monotonic()
    result = subprocess.run([sys.executable, str(REPO / "train.py"),
                             *sweep_args(data, storage_url, fresh_sqlite_store(tmp_path), "orphan", 1, 1,
                                         "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=4",
                                         f"hydra.sweep.dir={tmp_path}/multirun")],
                            cwd=tmp_path, env=train_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name="orphan", storage=storage_url).trials
    # It waited (n_trials=1 was in flight) instead of asking and withdrawing in a loop; then took the slot.
    assert trials[orphan.number].state == TrialState.FAIL
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE] and not trials[1].user_attrs.get("withdrawn")
    assert time.monotonic() - started > 4  # the orphan's heartbeat had to go stale first


def test_telling_or_reporting_to_a_trial_another_process_closed_is_logged_not_raised(tmp_path, monkeypatch, caplog):
    from sweeper import core, job
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="closed", storage=url, direction="maximize")
    trial = study.ask()
    optuna.load_study(study_name="closed", storage=url).tell(trial.number, state=TrialState.FAIL)  # "another process"

    assert core.tell(study, trial.number, values=[0.5]) is False
    assert "already closed by another process" in caplog.text
    assert study.trials[0].state == TrialState.FAIL  # the other process's verdict stands

    # The job side: its report() finds the trial closed, logs, and the job goes on without pruning.
    monkeypatch.setenv(job.ENV_TRIAL, str(trial.number))
    storage = optuna.storages.RDBStorage(url)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("closed"), trial.number)
    monkeypatch.setenv(job.ENV_TRIAL_ID, str(trial_id))
    monkeypatch.setenv(job.ENV_STUDY, "closed")
    monkeypatch.setenv(job.ENV_STORAGE, url)
    current = job.current_trial()
    current.report(0.4, 1)  # no exception
    current.report(0.5, 2)
    assert "cannot report to the study any more" in caplog.text


RACE = """
import os, sys, time
kind, folders, me = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
if kind == "mlflow":
    from training.tracking import open_store
else:
    from sweeper.stores import open_storage
for folder in folders:
    open(os.path.join(folder, me), "w").close()  # a barrier: go when both processes are here
    while len(os.listdir(folder)) < 2:
        time.sleep(0.002)
    if kind == "mlflow":
        open_store(f"sqlite:///{folder}/mlflow.db", "race")
    else:
        open_storage(f"sqlite:///{folder}/optuna.db")
print("ok", len(folders))
"""


@pytest.mark.parametrize("kind,stores", [("mlflow", 1), ("optuna", 3)])
def test_two_processes_create_a_fresh_sqlite_store_at_once(kind, stores, tmp_path):
    # Without the lock, MLflow failed 3 times in 3 and Optuna once in 3 (README, "Sweeps at scale").
    folders = [tmp_path / f"store{i}" for i in range(stores)]
    for folder in folders:
        folder.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", RACE, kind, ",".join(map(str, folders)), f"ready{i}"], cwd=REPO,
                              env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    assert all(o.strip().endswith(f"ok {stores}") for o in outputs)
    if kind == "mlflow":
        experiments = mlflow.MlflowClient(f"sqlite:///{folders[0]}/mlflow.db").search_experiments()
        assert [e.name for e in experiments].count("race") == 1


def test_joblib_launcher_with_two_jobs_in_an_empty_folder(data, tmp_path):
    # Hydra's BasicSweeper, two parallel jobs, a fresh MLflow sqlite store that both create at once.
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=joblib",
                             "hydra.launcher.n_jobs=2", "trainer.seed=1,2",
                             *tiny_overrides(data, "sqlite:///mlflow.db", epochs=1)],
                            cwd=tmp_path, env=train_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(["0", "1"])
    assert sorted(r.data.params["trainer.seed"] for r in runs) == ["1", "2"]


def test_two_parents_made_in_the_same_moment_settle_into_the_studys_one(tmp_path):
    """Both workers read 'no parent yet' and each keeps its own: at its end, the one the study does not keep
    moves its trial runs under the study's parent and deletes its own."""
    from sweeper.report import Tracking
    uri = fresh_sqlite_store(tmp_path / "mlflow")
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="race", storage=storage)
    first, second = (Tracking({"tracking_uri": uri, "experiment": "e"}) for _ in range(2))
    mine = first.parent_run(study, storage)
    # The other worker, having read the study before `mine` was written, creates its own and writes it last.
    experiment_id = second.open()
    theirs = second.client.create_run(experiment_id, tags={"sweep": "parent"}).info.run_id
    study.set_user_attr("mlflow_parent_run_id", theirs)
    child = first.client.create_run(experiment_id, tags={"mlflow.parentRunId": mine, "trial_number": "0"}).info.run_id
    assert first.settle(study, storage, mine) == theirs
    assert first.client.get_run(child).data.tags["mlflow.parentRunId"] == theirs
    assert first.client.get_run(mine).info.lifecycle_stage == "deleted"
    assert second.settle(study, storage, theirs) == theirs  # the study's own parent stays


@pytest.mark.parametrize("message, retried", [
    ('(psycopg.errors.DuplicateTable) relation "studies" already exists', True),
    ('(psycopg.errors.DuplicateObject) type "studydirection" already exists', True),
    ('duplicate key value violates unique constraint "pg_type_typname_nsp_index"', True),
    ('relation "studies" does not exist', False),
])
def test_opening_a_store_retries_only_while_another_process_makes_its_tables(monkeypatch, message, retried):
    # Three workers on a fresh PostgreSQL database: one lost the race with DuplicateTable and died (a CI run).
    from sweeper import stores
    monkeypatch.setattr(stores.time, "sleep", lambda s: None)
    calls = []

    def open_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError(message)
        return "opened"
    if retried:
        assert stores.while_schema_is_made(open_once) == "opened" and len(calls) == 2
    else:
        with pytest.raises(RuntimeError, match="does not exist"):
            stores.while_schema_is_made(open_once)
        assert len(calls) == 1
