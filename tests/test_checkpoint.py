"""Kill training hard, resume it, and get the run an uninterrupted one would have given."""
import io
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import torch

from tests.conftest import compose_cfg
from tests.faultkit import REPO, fresh_sqlite_store, tiny_overrides, train_env, write_cifar
from training import checkpoint
from training.tracking import Tracker

EPOCHS = 8


def metric_steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_sigkilled_training_resumes_into_the_same_run(tmp_path, monkeypatch):
    data = write_cifar(tmp_path / "data")
    store = fresh_sqlite_store(tmp_path)
    overrides = tiny_overrides(data, store, epochs=EPOCHS)
    command = [sys.executable, str(REPO / "train.py"), *overrides]
    job = subprocess.Popen(command, cwd=tmp_path, env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("checkpoints/*/last.pt")) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL, job.stdout.read().decode()[-2000:]
    [ckpt] = tmp_path.glob("checkpoints/*/last.pt")
    killed_at = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= killed_at < EPOCHS

    client = mlflow.MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("cifar10-resnet").experiment_id])
    assert run.info.status == "RUNNING"  # SIGKILL leaves no chance to close it

    resumed = subprocess.run(command + ["trainer.resume=true"], cwd=tmp_path, env=train_env(),
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming after epoch {killed_at}" in resumed.stdout
    [run] = client.search_runs([run.info.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_epoch"] == str(killed_at)
    for key in ("train_loss", "val_acc", "lr", "epoch_time"):
        assert metric_steps(client, run.info.run_id, key) == list(range(1, EPOCHS + 1)), key
    assert "test_acc" in run.data.metrics
    assert not ckpt.exists()  # finished runs drop their checkpoint

    # Same config, never interrupted, in this process: RNG, optimizer and schedule restored exactly.
    from training import app
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses
    try:
        app.run(compose_cfg(overrides + ["mlflow.experiment=reference"]))
    finally:
        torch.set_num_threads(threads)
    [ref] = client.search_runs([client.get_experiment_by_name("reference").experiment_id])
    for key in ("train_loss", "val_loss", "lr"):
        got = [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
        want = [m.value for m in sorted(client.get_metric_history(ref.info.run_id, key), key=lambda m: m.step)]
        assert got == pytest.approx(want, rel=1e-5), key


def test_a_sigterm_just_after_the_checkpoint_waits_until_the_epoch_is_logged(tmp_path, monkeypatch):
    """Preemption lands at any moment: here between epoch 1's checkpoint and its MLflow log. The epoch is logged
    before the run stops (KILLED), so the rerun, which goes on after the checkpoint's epoch, misses none."""
    import os
    import threading

    from sweeper.signals import Terminated
    from training import app
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("needs the main thread with SIGTERM at Python's default (the run takes it as it would)")
    store = fresh_sqlite_store(tmp_path)
    cfg = compose_cfg(tiny_overrides(write_cifar(tmp_path / "data"), store, epochs=3))
    save = checkpoint.save

    def save_then_preempted(path, state):
        save(path, state)
        if state["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(checkpoint, "save", save_then_preempted)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Terminated):
        app.run(cfg)
    [ckpt] = tmp_path.glob("checkpoints/*/last.pt")
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    client = mlflow.MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("cifar10-resnet").experiment_id])
    assert run.info.status == "KILLED"
    assert metric_steps(client, run.info.run_id, "train_loss") == [1]


def test_a_half_written_checkpoint_is_never_loaded(tmp_path, monkeypatch):
    cfg = compose_cfg([f"trainer.checkpoint_dir={tmp_path}/ckpt", f"mlflow.tracking_uri={fresh_sqlite_store(tmp_path)}"])
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    with mlflow.start_run() as run:
        pass
    path = checkpoint.checkpoint_path(cfg)
    state = {"config_key": checkpoint.config_key(cfg), "epoch": 1, "mlflow_run_id": run.info.run_id,
             "weights": torch.arange(1000.0)}
    checkpoint.save(path, state)

    real_save = torch.save
    written = {}

    def killed_halfway(obj, f):  # the save dies after writing part of the new checkpoint
        buffer = io.BytesIO()
        real_save(obj, buffer)
        written["half"] = buffer.getvalue()[:buffer.tell() // 2]
        f.write(written["half"])
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, dict(state, epoch=2, weights=torch.zeros(1000)))
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # an interrupted save cleans up after itself

    # SIGKILL runs no clean-up: its half-written temporary file stays beside last.pt and is never loaded.
    partial = path.with_name(path.name + ".x1y2z3.tmp")
    partial.write_bytes(written["half"])
    assert 0 < partial.stat().st_size < path.stat().st_size
    with pytest.raises(Exception):
        torch.load(partial, weights_only=True)  # it really is unreadable
    loaded = checkpoint.load(path, cfg, Tracker(cfg))
    assert loaded["epoch"] == 1 and torch.equal(loaded["weights"], torch.arange(1000.0))

    # A damaged file in place of last.pt (a disk fault, not our write) is named, not half-used.
    path.write_bytes(partial.read_bytes())
    with pytest.raises(checkpoint.CheckpointError, match="cannot be read.*trainer.resume=false"):
        checkpoint.load(path, cfg, Tracker(cfg))


def test_two_saves_at_once_each_rename_a_whole_file_of_their_own(tmp_path, monkeypatch):
    """Two runs of one command share a checkpoint folder: a save that starts while another is writing
    must not write into the other's temporary file (with one fixed name, the result was a mix of both)."""
    path = tmp_path / "ckpt" / checkpoint.FILE
    real_save = torch.save
    calls = []

    def other_run_saves_meanwhile(obj, f):
        calls.append(obj["epoch"])
        if obj["epoch"] == 1:  # the first save is half done when the other run saves its epoch
            f.write(b"x" * 100)
            checkpoint.save(path, {"epoch": 9, "weights": torch.ones(5000)})
            f.seek(0)
            f.truncate()
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", other_run_saves_meanwhile)
    checkpoint.save(path, {"epoch": 1, "weights": torch.arange(5000.0)})
    assert calls == [1, 9]
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 1 and torch.equal(loaded["weights"], torch.arange(5000.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    store = fresh_sqlite_store(tmp_path)
    cfg = compose_cfg([f"trainer.checkpoint_dir={tmp_path}/ckpt", f"mlflow.tracking_uri={store}"])
    other = compose_cfg([f"trainer.checkpoint_dir={tmp_path}/ckpt", f"mlflow.tracking_uri={store}",
                         "optimizer=sgd"])
    checkpoint.save(checkpoint.checkpoint_path(cfg), {"config_key": checkpoint.config_key(cfg), "epoch": 1})
    with pytest.raises(checkpoint.CheckpointError, match="different config"):
        checkpoint.load(checkpoint.checkpoint_path(other), other, Tracker(other))
    # A checkpoint records its config (URLs masked), so the line says what differs.
    longer = compose_cfg([f"trainer.checkpoint_dir={tmp_path}/ckpt", f"mlflow.tracking_uri={store}", "trainer.epochs=4",
                          "trainer.resume=true"])
    checkpoint.save(checkpoint.checkpoint_path(cfg), {"config_key": checkpoint.config_key(cfg), "epoch": 1,
                                                      "config": checkpoint.recorded_config(cfg)})
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.load(checkpoint.checkpoint_path(longer), longer, Tracker(longer))
    assert f"was written for a different config (trainer.epochs: {cfg.trainer.epochs} there, 4 here): set " \
        "trainer.checkpoint_dir to another folder" in str(caught.value)
    secret = compose_cfg(["mlflow.tracking_uri=postgresql://user:hunter2@db.example/mlflow"])
    assert "hunter2" not in str(checkpoint.recorded_config(secret))
    # The default folder is the same for the same command, with or without resume, and differs otherwise.
    plain = compose_cfg(["model=tiny"])
    assert checkpoint.checkpoint_path(plain) == checkpoint.checkpoint_path(
        compose_cfg(["model=tiny", "trainer.resume=true", "trainer.log_every=0"]))
    assert checkpoint.checkpoint_path(plain) != checkpoint.checkpoint_path(compose_cfg(["model=tiny", "trainer.seed=1"]))


def test_a_checkpoint_from_another_store_is_refused_without_showing_its_password(tmp_path):
    uri = "postgresql+psycopg://sweeper:s3cret@db.example/mlflow"
    cfg = compose_cfg([f"trainer.checkpoint_dir={tmp_path}/ckpt", f"mlflow.tracking_uri={uri}"])
    path = checkpoint.checkpoint_path(cfg)
    checkpoint.save(path, {"config_key": checkpoint.config_key(cfg), "epoch": 1, "mlflow_run_id": "abc"})

    class OtherStore:
        def has_run(self, run_id):
            return False

    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.load(path, cfg, OtherStore())
    assert "sweeper:***@db.example" in str(caught.value) and "s3cret" not in str(caught.value)
