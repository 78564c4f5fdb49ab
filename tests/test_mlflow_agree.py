"""MLflow agrees with Optuna under concurrent starts and kills: workers that start together on a fresh study
share one parent run; a SIGKILLed worker's trial is failed in the study and its run ended in MLflow by the
worker that reaps it; nothing stays RUNNING."""
import logging
import os
import re
import signal
import subprocess
import sys
import time

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from tests.faultkit import REPO, fresh_sqlite_store, run_together, sweep_args, train_env


@pytest.fixture(scope="module")
def data(micro_cifar):
    return micro_cifar


@pytest.mark.parametrize("kind", ["sqlite", "journal", "memory"])
def test_the_parent_attr_is_set_once_by_compare_and_set(tmp_path, kind):
    from sweeper.compat import swap_study_user_attr
    from sweeper.stores import open_storage
    storage = {"sqlite": lambda: open_storage(f"sqlite:///{tmp_path}/optuna.db"),
               "journal": lambda: open_storage(f"journal:{tmp_path}/optuna.journal"),
               "memory": optuna.storages.InMemoryStorage}[kind]()
    study = optuna.create_study(study_name="cas", storage=storage)
    study_id = storage.get_study_id_from_name("cas")
    assert swap_study_user_attr(storage, study_id, "k", None, "first") == "first"
    assert swap_study_user_attr(storage, study_id, "k", None, "second") == "first"  # absent no more: lost
    assert swap_study_user_attr(storage, study_id, "k", "stale", "third") == "first"  # wrong expectation: lost
    assert swap_study_user_attr(storage, study_id, "k", "first", "fourth") == "fourth"
    assert study.user_attrs["k"] == "fourth"


def test_a_journals_parent_run_goes_through_the_compare_and_set(tmp_path):
    # The sweep hands parent_run its storage object (sweeper/core.py); on a journal the swap finds the file,
    # and its lock, through sweeper/stores.py. A worker that comes later (here by URL) reuses the parent.
    from sweeper.stores import open_storage
    from sweeper.tracking import Tracking
    url = f"journal:{tmp_path}/optuna.journal"
    study = optuna.create_study(study_name="j", storage=open_storage(url))
    settings = {"tracking_uri": fresh_sqlite_store(tmp_path), "experiment": "agree"}
    first = Tracking(settings).parent_run(study, open_storage(url))
    later = Tracking(settings)
    assert later.parent_run(study, url) == first == study.user_attrs["mlflow_parent_run_id"]
    assert later.settle(study, url, first) == first  # read by URL as well
    assert not list(tmp_path.glob("optuna.journal*.lock"))  # the swap's lock file is gone once it is done


START_TOGETHER = """
import faulthandler, os, signal, sys, time
faulthandler.register(signal.SIGUSR1)  # a worker still alive at the deadline prints where it waits
import optuna
from sweeper.stores import open_storage
from sweeper.tracking import Tracking
storage_url, tracking_url, barrier, me, workers = sys.argv[1:6]
storage = open_storage(storage_url)  # a fresh database: its tables are made by one worker, the others wait
study = optuna.create_study(study_name="together", storage=storage, load_if_exists=True)
tracking = Tracking({"tracking_uri": tracking_url, "experiment": "agree"})
tracking.open()
open(os.path.join(barrier, me), "w").close()  # go when every worker has both stores open
while len(os.listdir(barrier)) < int(workers):
    time.sleep(0.002)
print("parent", tracking.parent_run(study, storage))
"""


def test_workers_starting_together_on_a_fresh_study_share_one_parent_run(postgres, tmp_path):
    # Before, each worker read "no parent yet", created one and wrote it (an upsert): two or more parents,
    # and a worker killed before its end left its own parent RUNNING. Fresh databases, so the tables of both
    # stores are also created by several processes at once (3 of 4 failed that way, exit 2).
    postgres.create_role("agree", "pw")  # the session's cluster: a role and databases of this test's own
    for database in ("agree_optuna", "agree_mlflow"):
        postgres.create_database(database, owner="agree")
    storage, tracking = postgres.url("agree_optuna", "agree", "pw"), postgres.url("agree_mlflow", "agree", "pw")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    workers = 3
    codes, outputs = run_together(START_TOGETHER, lambda i: (storage, tracking, barrier, f"w{i}", workers), workers)
    assert codes == [0] * workers, "\n".join(o[-2000:] for o in outputs)
    chosen = {line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("parent ")}
    assert len(chosen) == 1, outputs
    [parent] = chosen
    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("agree").experiment_id], "tags.sweep = 'parent'")
    assert [r.info.run_id for r in runs] == [parent]  # the losers' candidates are deleted, not left RUNNING
    assert optuna.load_study(study_name="together", storage=storage).user_attrs["mlflow_parent_run_id"] == parent


def launch(args, cwd):
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=train_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_a_sigkilled_workers_trial_run_is_ended_by_the_worker_that_reaps_it(data, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    tracking = fresh_sqlite_store(tmp_path)
    fast = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3"]
    victim = launch(sweep_args(data, tracking, storage, "reap", 2, tmp_path / "victim", epochs=40) + fast, tmp_path)
    deadline = time.monotonic() + 240
    while not list((tmp_path / "victim").glob("*/checkpoint/last.pt")):  # its trial trains, its run is open
        assert victim.poll() is None and time.monotonic() < deadline, victim.communicate()[0][-3000:]
        time.sleep(0.05)
    reaper = launch(sweep_args(data, tracking, storage, "reap", 2, tmp_path / "reaper", epochs=2) + fast, tmp_path)
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its in-process trial die at once
    killed_output = victim.communicate()[0]
    [number] = [int(n) for n in re.findall(r"\ttrial #(\d+): ", killed_output)][-1:]
    output = reaper.communicate(timeout=300)[0]
    assert reaper.returncode == 0, output[-3000:]

    trial = optuna.load_study(study_name="reap", storage=storage).trials[number]
    assert trial.state == TrialState.FAIL and "fail_reason" not in trial.user_attrs
    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("cifar10-resnet").experiment_id])
    [run] = [r for r in runs if r.data.tags.get("trial_number") == str(number)]
    assert run.info.status == "KILLED" and run.data.tags["trial_state"] == "FAIL"
    assert "its worker stopped" in run.data.tags["error"]
    # Ended by the reaper's loop when it failed the trial, not first at its summary.
    ended = output.index(f"trial #{number}: its MLflow run ended KILLED")
    assert ended < output.index("Best trial")
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    assert len([r for r in runs if r.data.tags.get("sweep") == "parent"]) == 1


def test_a_dead_workers_confirmation_run_is_ended_too(tmp_path):
    """A confirmation run (sweeper/confirm.py: no `launched` attr, its job run a child of its configuration's
    run `confirm-#N`) failed by the reaper has its run ended KILLED like a search trial's."""
    from sweeper.tracking import Tracking
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="dead", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=1.0, user_attrs={"launched": True}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"confirm_of": 0, "seed": 1}))
    tracking = Tracking({"tracking_uri": fresh_sqlite_store(tmp_path), "experiment": "e"})
    parent = tracking.parent_run(study, storage)
    client = tracking.client
    experiment_id = client.get_run(parent).info.experiment_id
    group = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent, "sweep": "confirm",
                                                   "confirm_of": "0"}).info.run_id
    job = client.create_run(experiment_id, tags={"mlflow.parentRunId": group, "trial_number": "1"}).info.run_id
    tracking.close_interrupted(study, parent)
    run = client.get_run(job)
    assert run.info.status == "KILLED" and run.data.tags["trial_state"] == "FAIL"
    assert "its worker stopped" in run.data.tags["error"]


def test_psycopgs_pipeline_echo_is_dropped_and_nothing_else(caplog):
    from sweeper.mlflow_store import quiet_pipeline_echo
    quiet_pipeline_echo()
    quiet_pipeline_echo()  # once per process, however often a store is opened
    logger = logging.getLogger("psycopg")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger="psycopg"):
        logger.warning("error ignored terminating %r: %s", "<psycopg.Pipeline [IDLE]>", "pipeline aborted")
        logger.warning("error ignored in rollback on %s: %s", "<conn>", "server closed the connection")
    assert [r.getMessage() for r in caplog.records] == [
        "error ignored in rollback on <conn>: server closed the connection"]
