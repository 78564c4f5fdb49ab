"""The preview (`dry_run=true` in a sweep): n_trials proposals with their parameter counts, nothing trained
or written."""
import hashlib
import re
import subprocess
import sys

import optuna

from tests.faultkit import REPO, train_env

SUMMARY = re.compile(r"^proposals=(\d+) feasible=(\d+) over_budget=(\d+)$")


def preview(cwd, *args):
    return subprocess.run([sys.executable, str(REPO / "train.py"), "-m", "hydra/sweeper=optuna", "dry_run=true", *args],
                          cwd=cwd, env=train_env(), capture_output=True, text=True, timeout=120)


def test_the_default_search_previewed(tmp_path):
    result = preview(tmp_path, "hydra.sweeper.n_trials=12")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    proposals, feasible, over = map(int, SUMMARY.match(lines[-1]).groups())
    assert proposals == 12 and feasible + over == 12 and over > 0  # model=final sits at the budget's edge
    shown = [line for line in lines if line.startswith("#")]
    assert len(shown) == 12
    for line in shown:
        count = int(re.search(r"params=(\d+)", line).group(1))
        assert ("over budget" in line) == (count > 5_000_000)
        assert "model.depth_mult=" in line and "model.width_mult=" in line and "model.dropout=" in line
    assert sum("over budget" in line for line in shown) == over
    assert list(tmp_path.iterdir()) == []  # no study, no MLflow store, no job folders


def test_a_command_line_space_with_invalid_values_against_an_existing_study(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="tiny-search", storage=storage, direction="maximize")
    study.enqueue_trial({"trainer.precision": "fp32", "model.width_mult": 1.0})
    study.tell(study.ask({"trainer.precision": optuna.distributions.CategoricalDistribution(["fp32", "fp64"]),
                          "model.width_mult": optuna.distributions.CategoricalDistribution([1.0, 2.0])}), 0.5)
    before = hashlib.sha256((tmp_path / "optuna.db").read_bytes()).hexdigest()
    result = preview(tmp_path, "model=tiny", "hydra/sweeper/search=empty", "hydra.sweeper.n_trials=8",
                     "trainer.precision=choice(fp32,fp64)", "model.width_mult=choice(1.0,2.0)", "budget.max_params=200000",
                     f"hydra.sweeper.storage={storage}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "preview against the 1 finished trials of study tiny-search"
    proposals, feasible, over = map(int, SUMMARY.match(lines[-1]).groups())
    # 4 configurations, 1 already trained: the preview judges the other 3 and stops before n_trials.
    assert "every configuration of the search space has been proposed" in result.stdout
    shown = [line for line in lines if line.startswith("#")]
    assert len(shown) == proposals < 8 and feasible == 0 and over >= 1  # fp32 x width 2.0: 476,746 > 200,000
    judged = {tuple(line.split()[1:3]) for line in shown if "repeat of" not in line}
    assert judged == {("trainer.precision=fp64", "model.width_mult=1.0"), ("trainer.precision=fp64", "model.width_mult=2.0"),
                      ("trainer.precision=fp32", "model.width_mult=2.0")}
    assert all("invalid: trainer.precision=fp64: use one of" in line for line in shown if "fp64" in line)
    assert hashlib.sha256((tmp_path / "optuna.db").read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optuna.db"]


def test_the_preview_reads_a_journals_finished_trials_and_creates_no_journal(tmp_path):
    from sweeper.preview import existing_trials
    journal = tmp_path / "optuna.journal"
    assert existing_trials(f"journal:{journal}", "tiny-search") == [] and not journal.exists()  # none made
    study = optuna.create_study(study_name="tiny-search", direction="maximize",
                                storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))))
    dist = {"model.width_mult": optuna.distributions.CategoricalDistribution([1.0, 2.0])}
    study.tell(study.ask(dist), 0.5)
    study.ask(dist)  # still running: not a finished trial
    before = hashlib.sha256(journal.read_bytes()).hexdigest()
    found = existing_trials(f"journal:{journal}", "tiny-search")
    assert [(t.number, t.values) for t in found] == [(0, [0.5])]
    assert existing_trials(f"journal:{journal}", "no-such-study") == []
    assert hashlib.sha256(journal.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optuna.journal"]
