"""`hydra.sweeper.storage=journal:<file>`: Optuna's JournalStorage on one file, several workers, no server.
The sweeper's own heartbeats (a trial system attr) cover it: a dead worker's trial is reaped, and two workers
on one journal still train exactly n_trials. The app is a tiny Hydra function (no torch): seconds per run."""
import datetime
import json
import subprocess
import sys
import time

import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tests.faultkit import REPO, run_together, train_env

APP = '''
import time

import hydra


@hydra.main(config_path=".", config_name="config")
def quadratic(cfg):
    time.sleep(cfg.pause)  # long enough for the two workers' trials to overlap
    return (cfg.x - 2) ** 2 + cfg.y
'''
CONFIG = '''
defaults:
  - override hydra/sweeper: constrained_optuna
hydra:
  sweeper:
    direction: minimize
    study_name: journal
    n_trials: 6
    heartbeat_interval: 1
    grace_period: 3
    params:
      x: interval(0, 4)
      y: choice(0, 1, 2)
x: 1
y: 0
pause: 0.3
'''


def app(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(APP + '\n\nif __name__ == "__main__":\n    quadratic()\n')
    (folder / "config.yaml").write_text(CONFIG)
    return folder


def worker(folder, journal, name, *extra):
    return subprocess.Popen([sys.executable, "-W", "error", "app.py", "-m", f"hydra.sweeper.storage=journal:{journal}",
                             f"hydra.sweep.dir={folder}/{name}", *extra], cwd=folder, env=train_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def logged_at(out, text):
    """When the worker logged its first line with `text` (Hydra's `[2026-01-31 12:00:00,123][HYDRA] ...`)."""
    line = next(line for line in out.splitlines() if text in line)
    return datetime.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")


def load(journal, name="journal"):
    return optuna.load_study(study_name=name,
                             storage=optuna.storages.JournalStorage(JournalFileBackend(str(journal))))


def test_two_workers_on_one_journal_train_exactly_n_trials(tmp_path):
    folder, journal = app(tmp_path), tmp_path / "shared" / "optuna.journal"
    workers = [worker(folder, journal, f"w{i}") for i in range(2)]
    outputs = [w.communicate(timeout=180)[0] for w in workers]
    for w, out in zip(workers, outputs):
        assert w.returncode == 0, out[-3000:]
        assert "Warning" not in out  # clean under python -W error
    trials = [t for t in load(journal).trials if t.user_attrs.get("launched")]
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state) for t in trials]
    told = [[out.count(f"  trial #{t.number}: value") for out in outputs] for t in trials]
    assert all(sum(counts) == 1 for counts in told), told  # each trial trained and told by exactly one worker
    assert all(sum(column) for column in zip(*told)), told  # both workers trained: the journal was shared
    # Both workers' heartbeats are in the journal, as system attrs of the trials they held.
    assert all(isinstance(t.system_attrs.get("sweeper:heartbeat"), float) for t in trials)


def test_a_dead_workers_trial_in_a_journal_is_reaped_and_its_slot_trained(tmp_path):
    folder, journal = app(tmp_path), tmp_path / "optuna.journal"
    journal_storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="journal", storage=journal_storage, direction="minimize")
    orphan = study.ask()  # a worker that died mid-trial: RUNNING, its heartbeat stopped long ago
    orphan.set_user_attr("launched", True)
    orphan_id = journal_storage.get_trial_id_from_study_id_trial_number(journal_storage.get_study_id_from_name("journal"), orphan.number)
    journal_storage.set_trial_system_attr(orphan_id, "sweeper:heartbeat", time.time() - 3600)
    done = worker(folder, journal, "w", "hydra.sweeper.n_trials=2")
    out = done.communicate(timeout=180)[0]
    assert done.returncode == 0, out[-3000:]
    reaped = f"trial #{orphan.number}: no heartbeat for 3s"
    assert reaped in out
    # It waited grace_period on its own clock, from when it first saw the trial (after its first line): a reaper
    # that compared the hour-old beat with its own time would fail the trial in its first loop, milliseconds in.
    waited = (logged_at(out, reaped) - logged_at(out, "Study journal in")).total_seconds()
    assert waited >= 2.9, out
    trials = load(journal).trials
    assert trials[orphan.number].state == TrialState.FAIL
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


SWAP_TOGETHER = """
import os, sys, time
from sweeper.compat import swap_study_user_attr
from sweeper.stores import open_storage
url, barrier, me, workers, keys = sys.argv[1:6]
storage = open_storage(url)
study_id = storage.get_study_id_from_name("cas")
open(os.path.join(barrier, me), "w").close()  # go when every worker has the journal open
while len(os.listdir(barrier)) < int(workers):
    time.sleep(0.002)
for i in range(int(keys)):
    print(f"k{i}", swap_study_user_attr(storage, study_id, f"k{i}", None, me), flush=True)
"""


def test_workers_swapping_one_attr_of_a_journal_at_once_agree_on_one_winner(tmp_path):
    # The compare-and-set that gives a study one MLflow parent run (sweeper/tracking.py: parent_run). Without
    # its lock, each worker read "absent" and wrote its own value: several winners, each keeping its own parent.
    journal, barrier, workers, keys = tmp_path / "optuna.journal", tmp_path / "barrier", 4, 20
    barrier.mkdir()
    optuna.create_study(study_name="cas", storage=optuna.storages.JournalStorage(JournalFileBackend(str(journal))))
    codes, outputs = run_together(SWAP_TOGETHER, lambda i: (f"journal:{journal}", barrier, f"w{i}", workers, keys),
                                  workers)
    assert codes == [0] * workers, "\n".join(o[-2000:] for o in outputs)
    seen = [dict(line.split() for line in out.splitlines()) for out in outputs]
    stored = load(journal, "cas").user_attrs
    for i in range(keys):
        assert {s[f"k{i}"] for s in seen} == {stored[f"k{i}"]}, (i, seen)  # every worker got the one winner
    # Only the winner wrote: one entry per key in the journal, not one per worker.
    written = [key for line in journal.read_text().splitlines() for key in json.loads(line).get("user_attr", {})]
    assert sorted(written) == sorted(f"k{i}" for i in range(keys)), written
    assert not list(tmp_path.glob("optuna.journal.swap.lock"))  # released
