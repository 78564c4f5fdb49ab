"""What a person reads during a sweep: launch lines named by the Optuna trial number with the overrides a user
would type (no `++hydra.job.env_set` plumbing), the sweep's estimate and the status line's time left."""
import logging
import re

from sweeper.display import LaunchLines, SweepClock, duration
from tests.test_sweep_plugin import SPHERE, SPHERE_CONFIG, app, run_app


def record(message):
    return logging.LogRecord("hydra._internal.core_plugins.basic_launcher", logging.INFO, __file__, 1, message, None,
                             None)


def test_a_launch_line_names_the_trial_and_drops_the_plumbing():
    lines = LaunchLines()
    lines.expect(3, 7)
    rec = record("\t#3 : x=1 'name=a b' ++hydra.job.env_set.SWEEPER_TRIAL='7' ++hydra.job.env_set.SWEEPER_TRIAL_ID='8'")
    assert lines.filter(rec) and rec.getMessage() == "\ttrial #7: x=1 'name=a b'"
    other = record("Launching 1 jobs locally")
    assert lines.filter(other) and other.getMessage() == "Launching 1 jobs locally"


def test_durations_read_short():
    assert [duration(s) for s in (0, 59.4, 61, 3599, 3600 + 5 * 60 + 59)] == ["0s", "59s", "1m01s", "59m59s", "1h05m"]


def test_the_clock_extrapolates_this_runs_pace_once_and_in_every_status_line():
    now = [100.0]
    clock = SweepClock(n_trials=10, already=2, clock=lambda: now[0])
    counts = {"over_budget": 2, "invalid": 0, "repeat": 1}
    assert clock.estimate(2) is None  # nothing trained by this run yet: no pace to quote
    assert clock.status(2, counts) == "[2/10 trained | 2 over budget, 0 invalid, 1 repeats skipped | 0s]"
    now[0] += 120.0  # two trials in two minutes: 60 s each, 6 left
    assert clock.estimate(4) == "sweep estimate: 8 trials x ~1m00s per trial = ~8m00s (~6m00s left; the status line " \
                                "updates it)"
    assert clock.estimate(5) is None  # printed once
    assert clock.status(4, counts).endswith("| 2m00s, ~6m00s left]")
    now[0] += 480.0
    assert clock.status(10, counts).endswith("| 10m00s]")  # done: no time left to quote


def test_a_sweep_reads_as_one_numbering(tmp_path):
    """Over-budget proposals take trial numbers without launching, so Hydra's job index (#0, #1, ...) drifts
    from the trial numbers; every line the sweep prints uses the trial number."""
    limits = """
    def radius(cfg):
        return cfg.x ** 2 + cfg.y ** 2 - 10
    """
    folder = app(tmp_path, SPHERE, SPHERE_CONFIG, [("limits.py", limits)])
    result = run_app(folder, "+hydra.sweeper.constraints.r2._target_=limits.radius", "hydra.sweeper.n_trials=5")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "env_set" not in out and not re.search(r"^\S*\s+#\d+ :", out, re.M)
    launched = [int(n) for n in re.findall(r"\ttrial #(\d+): x=", out)]
    valued = [int(n) for n in re.findall(r"trial #(\d+): value", out)]
    over = [int(n) for n in re.findall(r"proposal #(\d+) not launched", out)]
    assert len(launched) == 5 and launched == valued[:5]  # each launch line and its result name the same trial
    assert over and not set(over) & set(launched) and max(launched) > 4  # numbers differ from the job index
    assert len(re.findall(r"sweep estimate: 5 trials x ~\d+\S* per trial", out)) == 1
    status = re.findall(r"\[(\d)/5 trained \|[^\]]*\| (\d+\S*)(, ~\S+ left)?\]", out)
    assert [int(s[0]) for s in status] == [1, 2, 3, 4, 5]
    assert all(s[2] for s in status[:-1]) and not status[-1][2]  # time left until the last
