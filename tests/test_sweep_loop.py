"""The sweep loop's pieces (sweeper/core.py) on small studies in this process: no Hydra composition, no
training. A `Sweep` is a ConstrainedSweep set up as `_sweep` sets it up, with a search space from the
plugin's grammar, no constraints (or the test's), and a fake launcher whose jobs return at once."""
import time
from types import SimpleNamespace

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweeper import compat, core, space as space_mod
from sweeper.constraints import Constraints


def make_sweep(tmp_path, *space, storage=None, constraints=None, **settings):
    """A ConstrainedSweep on study `s` (sqlite in tmp_path, or `storage`), proposing from `space`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = dict(dict(study_name="s", direction="maximize", n_trials=3, n_jobs=1, heartbeat_interval=1,
                         grace_period=2, storage=storage or f"sqlite:///{tmp_path}/optuna.db"), **settings)
    config = OmegaConf.create({"hydra": {"overrides": {"hydra": [], "task": []}, "sweeper": {},
                                         "sweep": {"dir": str(tmp_path / "multirun")}}})
    sweep = core.ConstrainedSweep(settings, hydra_context=SimpleNamespace(config_loader=None), task_function=None,
                                  config=config)
    sweep.space, sweep.fixed = space_mod.parse({}, list(space))
    sweep.extender, sweep.pool, sweep.devices = None, None, None
    sweep.job_configs = lambda overrides: OmegaConf.create({"overrides": list(overrides)})
    sweep.constraints = Constraints(constraints or {}, execution_whitelist=["tests.test_sweep_loop.*"])
    study = sweep.open_study(sweep.build_sampler())
    return sweep, study


def returned(value):
    ret = JobReturn()
    ret.return_value, ret.status = value, JobStatus.FAILED if isinstance(value, Exception) else JobStatus.COMPLETED
    return ret


class FakeLauncher:
    """Runs each job at once: `job(overrides) -> value` (an exception: the job crashed)."""

    def __init__(self, job):
        self.job, self.launched = job, []

    def launch(self, jobs, initial_job_idx):
        self.launched += [list(j) for j in jobs]
        return [returned(self.job([o for o in j if not o.startswith("++hydra.")])) for j in jobs]


@pytest.fixture
def deadline(monkeypatch):
    """The loop's waits end the test after 20 s instead of hanging it (a loop that would wait forever)."""
    start, sleep = time.monotonic(), time.sleep

    def bounded(seconds):
        if time.monotonic() - start > 20:
            raise TimeoutError("the sweep loop was still waiting after 20 s")
        sleep(seconds)
    monkeypatch.setattr(core.time, "sleep", bounded)


@pytest.fixture
def launcher(monkeypatch, deadline):
    """Install a FakeLauncher (returning 0.5 unless told otherwise) as the sweep's hydra/launcher."""
    fake = FakeLauncher(lambda overrides: 0.5)
    monkeypatch.setattr(core, "Plugins", SimpleNamespace(instance=lambda: SimpleNamespace(
        instantiate_launcher=lambda **kwargs: fake)))
    return fake


def orphan(study, storage, space=None, params=None, heartbeat=False):
    """A trial left RUNNING by a worker that died (after its ask, before its tell), with `params` if given."""
    if params:
        study.enqueue_trial(params)
    trial = study.ask(space)
    if heartbeat:
        study_id = storage.get_study_id_from_name(study.study_name)
        storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number))
    return trial


# --- 1. heartbeats from the first moment; trials that never had one ------------------------------------
def test_the_heartbeat_is_recorded_before_the_sampler_runs(tmp_path):
    sweep, study = make_sweep(tmp_path, "x=interval(0,1)")
    seen = []

    class Spy(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, distribution):
            seen.append(compat.running_without_heartbeat(sweep.storage, sweep.study_id))
            return super().sample_independent(study, trial, name, distribution)

    study.sampler.inner = Spy(seed=0)
    proposal = sweep.propose_once(study)
    assert proposal.kind == "feasible" and seen == [set()]  # a worker killed while sampling leaves a heartbeat
    sweep.heartbeats.stop()


def test_a_running_trial_that_never_had_a_heartbeat_is_failed_after_the_grace_period(tmp_path, launcher):
    # A worker killed between creating its trial and its first heartbeat: Optuna's stale-trial check
    # skips trials without a heartbeat row, so before, a re-run with n_trials=1 waited for it forever.
    sweep, study = make_sweep(tmp_path, "x=interval(0,1)", n_trials=1)
    dead = orphan(study, sweep.storage)
    started = time.monotonic()
    sweep.loop(study)
    sweep.heartbeats.stop()
    trials = study.get_trials(deepcopy=False)
    assert trials[dead.number].state == TrialState.FAIL
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE] and len(launcher.launched) == 1
    assert time.monotonic() - started >= 2  # not before grace_period


def test_a_study_resumed_with_another_space_says_so(tmp_path, launcher, caplog):
    """Re-running with the same study name continues it; with another space, the old trials would count towards
    n_trials and guide the sampler without a word, so the sweep says which keys differ."""
    sweep, study = make_sweep(tmp_path, "x=interval(0,1)", "y=choice(1,2)", n_trials=2)
    sweep.loop(study)
    sweep.heartbeats.stop()
    make_sweep(tmp_path, "y=choice(1,2)", "x=interval(0,1)", n_trials=3)  # the same space (in another order)
    assert "another search space" not in caplog.text
    make_sweep(tmp_path, "x=interval(0,2)", "y=choice(1,2)", "z=range(1,3)", n_trials=3)
    assert "study s: its trained trials (2) come from another search space (x, z differ)" in caplog.text
    caplog.clear()
    make_sweep(tmp_path, "x=interval(0,1)", n_trials=3)  # y fixed or dropped: not searched now
    assert "(y differs)" in caplog.text


# --- 2. the end-of-sweep summary ------------------------------------------------------------------------
def test_a_summary_that_fails_is_a_warning_and_the_parent_run_ends_failed(tmp_path, launcher, monkeypatch, caplog):
    from sweeper import job, report, secrets
    for key in (job.ENV_STUDY, job.ENV_STORAGE, job.ENV_PARENT_RUN, job.ENV_DIRECTIONS, secrets.ENV):
        monkeypatch.delenv(key, raising=False)  # run() shares them through this process's environment
    sweep, study = make_sweep(tmp_path, "x=choice(0,1)", n_trials=2)
    from tests.faultkit import fresh_sqlite_store
    sweep.s["mlflow"] = {"tracking_uri": fresh_sqlite_store(tmp_path), "experiment": "e"}

    def broken(*args):
        raise OSError("disk full\nsecond line")
    monkeypatch.setattr(report, "summarize", broken)
    sweep.run(study)  # no exception: both trials trained and are in the study
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 2
    assert "its summary failed (OSError: disk full); MLflow parent run marked FAILED" in caplog.text
    assert sweep.tracking.client.get_run(sweep.parent).info.status == "FAILED"


# --- 4. a finite space whose last cell is a dead worker's ---------------------------------------------------
GRID = {"_target_": "optuna.samplers.GridSampler", "_partial_": True}


def test_a_grid_waits_for_a_cell_that_a_dead_workers_trial_holds(tmp_path, launcher):
    # Re-run within grace_period: cell x=1 is RUNNING, its worker dead. Before, it counted as tried and the
    # sweep ended with "every configuration has been tried" and only x=0 trained.
    sweep, study = make_sweep(tmp_path, "x=choice(0,1)", n_trials=5, sampler=GRID)
    first = sweep.propose_once(study)
    sweep.close(study, first, TrialState.COMPLETE, values=[0.5])
    dead = orphan(study, sweep.storage, sweep.space, {"x": 1 - first.trial.params["x"]}, heartbeat=True)
    sweep.loop(study)
    sweep.heartbeats.stop()
    trials = study.get_trials(deepcopy=False)
    assert trials[dead.number].state == TrialState.FAIL  # reclaimed after grace_period
    assert sorted(t.params["x"] for t in trials if t.state == TrialState.COMPLETE) == [0, 1]


# --- 5. max_failure_rate with a pool -----------------------------------------------------------------------
def launched_proposal(sweep, study):
    proposal = sweep.propose_once(study)
    sweep.mark_launched(proposal)
    return proposal


@pytest.mark.parametrize("rate, stops_at", [(0.25, 5), (0.0, 1)])
def test_a_pool_judges_max_failure_rate_as_if_its_slots_were_a_batch(tmp_path, rate, stops_at):
    # 4 slots: before, the first trial to end crashing was 1 of 1 > 0.25 and stopped the sweep.
    sweep, study = make_sweep(tmp_path, "x=interval(0,1)", n_trials=8, max_failure_rate=rate)
    sweep.pool = SimpleNamespace(slots=[0, 1, 2, 3], busy=lambda: 0)
    sweep.started_at, sweep.crashes, sweep.ended = time.perf_counter(), [], 0
    outcomes = [RuntimeError("boom"), 0.5, 0.5, 0.5, RuntimeError("boom again")]
    for i, outcome in enumerate(outcomes, start=1):
        results = [(launched_proposal(sweep, study), returned(outcome))]
        if i < stops_at:
            sweep.record_all(study, results)
        else:
            with pytest.raises(core.SweepError, match=rf"hydra.sweeper.max_failure_rate={rate}: {stops_at // 5 + 1} of "
                                                      rf"the {stops_at} trials that ended crashed \(#0 RuntimeError: boom"):
                sweep.record_all(study, results)
            break
    sweep.heartbeats.stop()


# --- 8. what a job or a constraint says, masked; crashes summarised in one line -----------------------------
LEAK = "postgresql://u:s3cret@db/optuna"


def leaky_constraint(cfg):
    raise ValueError(f"cannot reach {LEAK}")


def test_reasons_are_masked_and_too_many_crashes_stop_with_one_error(tmp_path, launcher):
    from sweeper.job import Failed
    sweep, study = make_sweep(tmp_path, "x=choice(0,1,2)", n_trials=3, n_jobs=3)
    results = iter([Failed(f"lost {LEAK}"), 0.5, RuntimeError(f"crashed on {LEAK}\nsecond line")])
    launcher.job = lambda overrides: next(results)
    with pytest.raises(core.SweepError) as stopped:
        sweep.loop(study)
    crashed = next(t.number for t in study.trials if "RuntimeError" in t.user_attrs.get("fail_reason", ""))
    assert str(stopped.value) == (f"hydra.sweeper.max_failure_rate=0.0: 1 of 3 trials of the batch crashed (#{crashed} "
                                  f"RuntimeError: crashed on postgresql://u:***@db/optuna): see each trial's log, or "
                                  f"allow more")
    reasons = [t.user_attrs["fail_reason"] for t in study.trials if "fail_reason" in t.user_attrs]
    assert reasons == ["lost postgresql://u:***@db/optuna", f"RuntimeError: crashed on postgresql://u:***@db/optuna\n"
                                                           "second line"]

    judged, study = make_sweep(tmp_path / "b", "x=choice(0,1)", constraints={
        "r": {"_target_": "tests.test_sweep_loop.leaky_constraint"}})
    proposal = judged.propose_once(study)
    assert proposal.kind == "invalid" and "s3cret" not in proposal.note
    assert study.trials[0].user_attrs["reason"] == "cannot reach postgresql://u:***@db/optuna"
    for sweep_ in (sweep, judged):
        sweep_.heartbeats.stop()


# --- 6. two workers proposing the same configuration at the same moment --------------------------------------
def test_a_worker_gives_way_when_another_proposed_the_same_configuration_at_the_same_moment(tmp_path):
    # Both read the study (no trial yet), then both ask a seeded sampler: the same draw. Before, both trained it.
    seeded = {"_target_": "optuna.samplers.RandomSampler", "seed": 1}
    first, study = make_sweep(tmp_path, "x=choice(0,1,2,3,4,5,6,7)", sampler=seeded)
    second, other = make_sweep(tmp_path, "x=choice(0,1,2,3,4,5,6,7)", sampler=seeded)
    before = second.known(other.get_trials(deepcopy=False))
    second.known = lambda trials: before  # what it read before the first worker's proposal was stored
    mine = first.propose_once(study)
    theirs = second.propose_once(other)
    assert mine.kind == "feasible" and theirs.trial.params == mine.trial.params
    assert theirs.kind == "repeat" and theirs.note == f"repeat of #{mine.number}, proposed by another worker at once"
    recorded = other.trials[theirs.number]
    assert recorded.state == TrialState.FAIL and recorded.user_attrs == {"repeat_of": mine.number, "concurrent": True}
    assert other.trials[mine.number].state == TrialState.RUNNING  # the first worker's, untouched
    for sweep in (first, second):
        sweep.heartbeats.stop()


# --- 7. a _target_ that cannot be built: one error line ------------------------------------------------------
@pytest.mark.parametrize("key, settings, build", [
    ("hydra.sweeper.sampler._target_=optuna.samplers.TPESamplr",
     {"sampler": {"_target_": "optuna.samplers.TPESamplr"}}, lambda s: s.build_sampler()),
    ("hydra.sweeper.pruner._target_=optuna.pruners.MedianPrunr",
     {"pruner": {"_target_": "optuna.pruners.MedianPrunr"}}, lambda s: s.build(core.job_api.build_pruner, s.s["pruner"])),
    ("hydra.sweeper.preflight._target_=my_app.chekc", {"preflight": {"_target_": "my_app.chekc"}},
     lambda s: s.preflight(None)),
    ("hydra.sweeper.custom_search_space=my_app.spaec", {"custom_search_space": "my_app.spaec"},
     lambda s: s.build_extender()),
    ("hydra.sweeper.constraints.mem._target_=my_app.mem", {"constraints": {"mem": {"_target_": "my_app.mem"}}},
     lambda s: s.build(Constraints, s.s["constraints"], ["my_app.*"])),
    ("hydra.sweeper.constraints.sh._target_=os.system", {"constraints": {"sh": {"_target_": "os.system"}}},
     lambda s: s.build(Constraints, s.s["constraints"], ["my_app.*"])),
], ids=["sampler", "pruner", "preflight", "custom_search_space", "constraint", "constraint not allowed"])
def test_a_target_that_cannot_be_built_is_one_error_line_naming_it(key, settings, build):
    sweep = core.ConstrainedSweep(dict(settings), hydra_context=SimpleNamespace(config_loader=None), task_function=None,
                                  config=OmegaConf.create({}))
    with pytest.raises(core.UsageError) as refused:
        build(sweep)
    message = str(refused.value)
    assert message.startswith(key + ": cannot be built (") and "\n" not in message, message


# --- heartbeat settings ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, line", [
    ({"heartbeat_interval": 0}, "error: hydra.sweeper.heartbeat_interval=0: must be a number of seconds > 0"),
    ({"heartbeat_interval": "often"}, "error: hydra.sweeper.heartbeat_interval=often: must be a number of seconds > 0"),
    ({"heartbeat_interval": 10, "grace_period": 10},
     "error: hydra.sweeper.grace_period=10: must be longer than hydra.sweeper.heartbeat_interval (10 s), or a live "
     "trial is taken for dead between two of its heartbeats"),
])
def test_heartbeat_settings_that_cannot_work_are_one_error_line(settings, line, capsys):
    config = OmegaConf.create({"hydra": {"overrides": {"hydra": [], "task": []}, "sweeper": {}}})
    sweep = core.ConstrainedSweep(dict(settings, params={"x": "choice(0,1)"}),
                                  hydra_context=SimpleNamespace(config_loader=None), task_function=None, config=config)
    with pytest.raises(SystemExit) as stopped:
        sweep.sweep([])
    assert stopped.value.code == 2 and capsys.readouterr().err.strip() == line


def test_with_a_pool_ctrl_c_is_taken_at_a_wait_not_inside_a_storage_call():
    """A SIGINT that lands while the sweeper talks to its storage is held until it next waits (raised inside
    SQLAlchemy's connection clean-up, it printed SQLAlchemy's own traceback); one that lands in a wait is raised there."""
    import os
    import signal
    from sweeper.core import ConstrainedSweep
    sweep = SimpleNamespace(pool=object())
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with it ignored
    try:
        with ConstrainedSweep.interrupts_at_waits(sweep):
            os.kill(os.getpid(), signal.SIGINT)  # "inside a storage call": not raised here
            time.sleep(0.05)
            assert sweep.interrupt_pending
            with pytest.raises(KeyboardInterrupt):
                ConstrainedSweep.wait(sweep, time.sleep, 0)
            sweep.interrupt_pending = False
            with pytest.raises(KeyboardInterrupt):  # during a wait: at once
                ConstrainedSweep.wait(sweep, lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(5)))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_with_a_pool_a_signal_after_the_last_wait_is_raised_when_the_loop_ends():
    """A SIGTERM that lands after the last trial's result came in (no wait follows) is raised as the sweeper's
    signal block ends: before, it was dropped and a preempted sweep went on to its summary and exit 0."""
    import os
    import signal
    from sweeper import signals
    from sweeper.core import ConstrainedSweep
    sweep = SimpleNamespace(pool=object())
    with signals.terminate_as_interrupt():
        with pytest.raises(signals.Terminated):
            with ConstrainedSweep.interrupts_at_waits(sweep):
                os.kill(os.getpid(), signal.SIGTERM)  # "recording the last result": held
                time.sleep(0.05)
                assert sweep.interrupt_pending
        assert not sweep.interrupt_pending


def test_with_a_pool_a_second_sigterm_does_not_cut_the_clean_up():
    """SLURM and shells forward SIGTERM more than once: after the first has been raised at a wait, the next ones,
    inside the sweeper's signal block or after it, must not raise again in the middle of closing trials and runs."""
    import os
    import signal
    from sweeper import signals
    from sweeper.core import ConstrainedSweep
    sweep = SimpleNamespace(pool=object())
    with signals.terminate_as_interrupt():
        with pytest.raises(signals.Terminated):
            with ConstrainedSweep.interrupts_at_waits(sweep):
                with pytest.raises(signals.Terminated):  # the first: raised at the wait
                    ConstrainedSweep.wait(sweep, lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5)))
                os.kill(os.getpid(), signal.SIGTERM)  # clean-up inside the block: ignored
                time.sleep(0.05)
                assert not sweep.interrupt_pending
                raise signals.Terminated("the first, going up")
        os.kill(os.getpid(), signal.SIGTERM)  # clean-up after the block, under the module's own handler: ignored
        time.sleep(0.05)
