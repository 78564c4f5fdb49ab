"""A repeat is the same model and training, not the same strings: proposals are compared by what they reduce to
(sweeper/reduce.py), across workers too."""
import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweeper import reduce as reduce_mod
from tests.test_sweep_loop import deadline, launcher, make_sweep  # noqa: F401 - fixtures
from tests.test_sweep_preview import SUMMARY, preview


def configs(overrides):
    """A job config from `key=value` overrides, with an interpolation (as an app's config has them)."""
    cfg = OmegaConf.create({"model": {"width": 1, "dropout": "${model.rate}", "rate": 0.0}, "logging": {"every": 10}})
    for line in overrides:
        key, value = line.split("=", 1)
        OmegaConf.update(cfg, key, int(value) if value.isdigit() else value, merge=True)
    return cfg


def sweep_with_ignored(tmp_path, *space, **settings):
    sweep, study = make_sweep(tmp_path, *space, ignored_keys=["logging.*"], **settings)
    sweep.job_configs = sweep.proposer.job_configs = configs
    return sweep, study


def test_the_reduced_config_resolves_and_drops_ignored_keys():
    a = OmegaConf.create({"m": {"rate": 0.1, "dropout": "${m.rate}"}, "log": {"every": 5}, "dry_run": False})
    b = OmegaConf.create({"m": {"rate": 0.1, "dropout": 0.1 + 1e-15}, "log": {"every": 50}, "dry_run": True})
    assert reduce_mod.reduced(a, ["log.*", "dry_run"]) == {"m.rate": 0.1, "m.dropout": 0.1}
    assert reduce_mod.digest(a, ["log", "dry_run"]) == reduce_mod.digest(b, ["log.*", "dry_run"])
    assert reduce_mod.digest(a, ["log.*"]) != reduce_mod.digest(b, ["log.*"])  # dry_run is not ignored here
    assert reduce_mod.digest(a, ["log.*", "dry_run"]) != reduce_mod.digest(
        OmegaConf.create({"m": {"rate": 0.2, "dropout": 0.1}}), [])


def test_proposals_that_differ_only_in_ignored_keys_are_trained_once(tmp_path, launcher):
    sweep, study = sweep_with_ignored(tmp_path, "model.width=choice(1,2)", "logging.every=choice(10,20,30)", n_trials=5)
    sweep.loop(study)
    widths = sorted(int(o.split("=")[1]) for job in launcher.launched for o in job if o.startswith("model.width="))
    assert widths == [1, 2]  # 6 cells of the space, 2 configurations: each trained once, then the space is done
    trials = study.get_trials(deepcopy=False)
    repeats = [t for t in trials if t.state == TrialState.FAIL and "repeat_of" in t.user_attrs]
    trained = {t.number: t for t in trials if t.state == TrialState.COMPLETE}
    assert len(trained) == 2 and repeats
    for t in repeats:
        assert t.params["model.width"] == trained[t.user_attrs["repeat_of"]].params["model.width"]
    # every cell was proposed: the 4 that only change logging.every were judged repeats, not trained
    assert {(t.params["model.width"], t.params["logging.every"]) for t in trials} == {
        (w, e) for w in (1, 2) for e in (10, 20, 30)}
    assert all(len(t.user_attrs[reduce_mod.DIGEST_ATTR]) == 20 for t in trained.values())
    sweep.heartbeats.stop()


def test_another_workers_running_trial_with_the_same_reduced_config_is_a_repeat(tmp_path):
    first, study = sweep_with_ignored(tmp_path, "model.width=choice(1,2)", "logging.every=choice(10,20)")
    second, other = sweep_with_ignored(tmp_path, "model.width=choice(1,2)", "logging.every=choice(10,20)")
    study.enqueue_trial({"model.width": 1, "logging.every": 10})
    mine = first.propose_once(study)
    assert mine.kind == "feasible"
    first.mark_launched(mine)  # running in the first worker, not trained yet
    other.enqueue_trial({"model.width": 1, "logging.every": 20})
    theirs = second.propose_once(other)
    assert theirs.kind == "repeat" and theirs.note == f"repeat of #{mine.number}"
    assert other.trials[mine.number].state == TrialState.RUNNING
    other.enqueue_trial({"model.width": 2, "logging.every": 20})
    assert second.propose_once(other).kind == "feasible"  # a different model is not a repeat
    for sweep in (first, second):
        sweep.heartbeats.stop()


def test_the_preview_counts_proposals_that_change_only_an_ignored_key_as_repeats(tmp_path):
    # mlflow.run_name is in this project's hydra.sweeper.ignored_keys (conf/hydra/sweeper/optuna.yaml)
    result = preview(tmp_path, "model=tiny", "hydra/sweeper/search=empty", "hydra.sweeper.n_trials=10",
                     "model.dropout=choice(0.0,0.2)", "mlflow.run_name=choice(a,b)", "hydra.sweeper.storage=null")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    proposals, feasible, over = map(int, SUMMARY.match(lines[-1]).groups())
    assert feasible == 2 and over == 0
    repeats = int(lines[-2].split("repeats=")[1])
    assert repeats == proposals - 2 >= 2  # 4 cells, 2 configurations (a cell may come up twice)
    assert len({tuple(line.split()[1:3]) for line in lines if line.startswith("#")}) == 4
    assert "every configuration of the search space has been proposed" in result.stdout
