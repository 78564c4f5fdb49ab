"""The device pool: devices x trials_per_device slots, each trial pinned to its device, no batch barrier.

No GPU here: the ids are labels and trials run on the CPU, which is what `trainer.device=cpu` asks for;
pinning is checked through what each trial saw (CUDA_VISIBLE_DEVICES, recorded as an MLflow tag)."""
import os
import subprocess
import sys
from collections import defaultdict

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from tests.faultkit import MICRO_MODEL, REPO, data_overrides, fresh_sqlite_store, train_env, write_cifar


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("cifar"), per_file=40)


def pool_sweep(tmp_path, data, tracking, *extra):
    args = ["-m", "hydra/sweeper=optuna", "hydra/sweeper/search=empty", "hydra.sweeper.sampler.seed=0",
            f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", "hydra.sweeper.study_name=pool",
            f"hydra.sweep.dir={tmp_path}/multirun",
            "hydra.sweeper.trials_per_device=1", "trainer.batch_size=40", f"mlflow.tracking_uri={tracking}",
            *data_overrides(data, per_file=40), *extra]
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=train_env(),
                          capture_output=True, text=True, timeout=400)


def child_runs(tracking):
    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("cifar10-resnet").experiment_id])
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags], [r for r in runs if r.data.tags.get("sweep")]


def test_trials_are_pinned_and_start_as_soon_as_a_slot_frees(data, tmp_path):
    tracking = fresh_sqlite_store(tmp_path)
    result = pool_sweep(tmp_path, data, tracking, "hydra.sweeper.devices=[0,1]", "model=tiny", "augmentation=none", "hydra/sweeper/pruner=none",
                        "trainer.epochs=choice(1,4)", "model.dropout=interval(0,0.3)", "hydra.sweeper.n_trials=6")
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="pool", storage=f"sqlite:///{tmp_path}/optuna.db")
    launched = [t for t in study.trials if t.user_attrs.get("launched")]
    assert len(launched) == 6 and all(t.state == TrialState.COMPLETE for t in launched)

    children, [parent] = child_runs(tracking)
    assert len(children) == 6 and {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    # Pinning: every trial saw one device, both devices were used, and a device never ran two trials at once.
    by_device = defaultdict(list)
    for run in children:
        by_device[run.data.tags["cuda_visible_devices"]].append((run.info.start_time, run.info.end_time))
    assert set(by_device) == {"0", "1"}
    for spans in by_device.values():
        spans.sort()
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))
    # No barrier: some trial started while a 4-epoch trial was running on the other slot, after it had begun.
    spans = [(r.info.start_time, r.info.end_time, r.data.params["trainer.epochs"]) for r in children]
    assert any(start < other_start < end for start, end, epochs in spans if epochs == "4"
               for other_start, _, _ in spans), sorted(spans)
    for job in (tmp_path / "multirun").glob("[0-9]*/.hydra/hydra.yaml"):
        assert "CUDA_VISIBLE_DEVICES:" in job.read_text()


def test_the_pool_keeps_the_gate_pruning_and_resume(data, tmp_path):
    tracking = fresh_sqlite_store(tmp_path)
    common = ["hydra.sweeper.devices=[0]", *MICRO_MODEL, "trainer.epochs=2", "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=0.999",
              "hydra.sweeper.pruner.n_warmup_steps=0", "budget.max_params=20000", "model.width_mult=choice(1.0,2.0)",
              "model.dropout=interval(0,0.3)"]
    first = pool_sweep(tmp_path, data, tracking, *common, "hydra.sweeper.n_trials=1")
    assert first.returncode == 0, first.stderr[-3000:]
    second = pool_sweep(tmp_path, data, tracking, *common, "hydra.sweeper.n_trials=2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming: 1 of 2 trials already trained" in second.stdout + second.stderr
    study = optuna.load_study(study_name="pool", storage=f"sqlite:///{tmp_path}/optuna.db")
    launched = [t for t in study.trials if t.user_attrs.get("launched")]
    assert len(launched) == 2 and {t.state for t in launched} == {TrialState.PRUNED}
    assert all(t.params["model.width_mult"] == 1.0 and t.user_attrs["pruned_at_step"] == 1 for t in launched)
    assert all(t.params["model.width_mult"] == 2.0 for t in study.trials if t.user_attrs.get("infeasible"))
    children, parents = child_runs(tracking)
    assert len(children) == 2 and {c.data.tags["trial_state"] for c in children} == {"PRUNED"} and len(parents) == 1
    assert {c.data.tags["cuda_visible_devices"] for c in children} == {"0"}


def test_device_ids(monkeypatch):
    from sweeper.pool import device_ids
    assert device_ids(None) is None
    assert device_ids([0, 1]) == ["0", "1"] and device_ids(3) == ["3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert device_ids("auto") == ["2", "3"]  # the GPUs this process may use, as it sees them
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi
    with pytest.raises(ValueError, match=r"hydra.sweeper.devices=auto: no GPU is visible \(nvidia-smi lists none\)"):
        device_ids("auto")
    with pytest.raises(ValueError, match="must be auto or a non-empty list"):
        device_ids([])


def test_a_slot_whose_worker_died_while_idle_takes_the_next_trial_in_a_new_one():
    # Before, submit raised BrokenProcessPool (a traceback, the trial left RUNNING) instead of restarting.
    import signal
    import time

    from hydra.core.singleton import Singleton

    from sweeper.pool import Slot, _dumps
    slot = Slot("0", _dumps((len, None, Singleton.get_state())))
    try:
        first = slot._submit(os.getpid).result(timeout=120)
        os.kill(first, signal.SIGKILL)  # killed between trials (out of memory, by hand)
        deadline = time.monotonic() + 30
        while not slot.executor._broken and time.monotonic() < deadline:  # the executor notices the death
            time.sleep(0.05)
        assert slot.executor._broken
        assert slot._submit(os.getpid).result(timeout=120) not in (first, os.getpid())
    finally:
        slot.restart()


def test_an_empty_cuda_visible_devices_means_no_gpu(monkeypatch, tmp_path):
    # An empty value hides every GPU from CUDA; before, auto took it for unset and asked nvidia-smi.
    from sweeper.pool import device_ids
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: fake (UUID: GPU-0)'\necho 'GPU 1: fake (UUID: GPU-1)'\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device_ids("auto") == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match=r"^hydra.sweeper.devices=auto: no GPU is visible \(CUDA_VISIBLE_DEVICES is "
                                         r"set and empty\)"):
        device_ids("auto")


def test_ctrl_c_stops_the_pool_at_once_and_closes_its_trials(data, tmp_path):
    """Ctrl-C reaches the whole process group. Before, each worker's trial ended KILLED but sending its
    KeyboardInterrupt back (Hydra ties it to the job's JobReturn, which holds it again) recursed for over a
    minute, and the sweep's trials stayed RUNNING until their heartbeats went stale, so a re-run first waited
    grace_period for them. Now they are FAIL at once (an interrupted trial's configuration is proposed again)."""
    import signal
    import time
    tracking = fresh_sqlite_store(tmp_path)
    args = ["-m", "hydra/sweeper=optuna", "hydra/sweeper/search=empty", "hydra.sweeper.sampler.seed=0",
            f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", "hydra.sweeper.study_name=pool",
            f"hydra.sweep.dir={tmp_path}/multirun", "hydra.sweeper.devices=[0,1]", "trainer.batch_size=40",
            f"mlflow.tracking_uri={tracking}", *data_overrides(data, per_file=40), "model=tiny",
            "hydra/sweeper/pruner=none", "model.dropout=interval(0,0.3)", "hydra.sweeper.n_trials=2"]
    log = open(tmp_path / "log.txt", "w+")
    sweep = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args, "trainer.epochs=200"], cwd=tmp_path,
                             env=train_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 180
        while (tmp_path / "log.txt").read_text().count("mlflow run") < 2:  # both trials are training
            assert sweep.poll() is None and time.monotonic() < deadline, (tmp_path / "log.txt").read_text()[-3000:]
            time.sleep(0.5)
        interrupted_at = time.monotonic()
        os.killpg(sweep.pid, signal.SIGINT)
        assert sweep.wait(timeout=60) == 130
        assert time.monotonic() - interrupted_at < 20, "the exit waited for the workers"
    finally:
        if sweep.poll() is None:  # its own session: nothing else would stop it
            os.killpg(sweep.pid, signal.SIGKILL)
    output = (tmp_path / "log.txt").read_text()
    assert "interrupted: the trials in flight are recorded FAIL" in output and "Traceback" not in output

    study = optuna.load_study(study_name="pool", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [(t.state, t.user_attrs.get("interrupted")) for t in study.trials] == [(TrialState.FAIL, True)] * 2
    children, [parent] = child_runs(tracking)
    assert sorted(r.info.status for r in children + [parent]) == ["KILLED"] * 3
