"""What a person sees while training (training/progress.py): a redrawn bar on a terminal, bounded plain lines in
a file from the first step on, one estimate that names the quick options for a slow CPU run, and no library
INFO lines by default."""
import fcntl
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import torch

import training.progress as progress_module
from tests.conftest import REPO
from tests.faultkit import MICRO_MODEL
from training.engine import train_one_epoch
from training.progress import Progress


class SlowStep:
    """A TrainStep stand-in whose step sleeps (a slow CPU), with the loss sums the display reads."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.loss_sum, self.correct = torch.zeros(()), torch.zeros((), dtype=torch.long)

    def reset(self):
        self.loss_sum.zero_()
        self.correct.zero_()

    def __call__(self, x, y):
        time.sleep(self.seconds)
        self.loss_sum += 2.0 * len(y)

    def after_scheduler(self):
        pass


class Scheduler:
    def step(self):
        pass


def batches(n, size=4):
    return [(torch.zeros(size, 3, 32, 32), torch.zeros(size, dtype=torch.long))] * n


def test_in_a_file_the_first_line_comes_after_the_first_step_then_a_bounded_rate(monkeypatch):
    monkeypatch.setattr(progress_module, "FILE_INTERVAL_S", 0.25)  # 30 s in a real run; scaled with the steps
    out = io.StringIO()
    shown = Progress(epochs=3, device="cpu", tty=False, stream=out)
    started = time.perf_counter()
    train_one_epoch(torch.nn.Linear(1, 1), SlowStep(0.02), batches(100), Scheduler(), epoch=1, progress=shown)
    seconds = time.perf_counter() - started
    lines = [line for line in out.getvalue().splitlines() if line.startswith("  epoch 1/3 step")]
    assert lines[0].startswith("  epoch 1/3 step 1/100 | loss 2.0000 |") and "run ETA" in lines[0]
    # one line after the first step, then at most one per interval: the epoch's 2 s give at most 1 + 2 / 0.25
    assert 2 <= len(lines) <= 1 + seconds / 0.25 + 1, (len(lines), seconds)
    assert "\r" not in out.getvalue()  # plain lines, no redraws, in a file
    estimate = [line for line in out.getvalue().splitlines() if line.startswith("estimate: ")]
    assert len(estimate) == 1 and "x 100 steps" in estimate[0] and "for 3 epochs" in estimate[0]


def test_the_estimate_names_the_quick_options_when_a_cpu_run_takes_hours():
    out = io.StringIO()
    shown = Progress(epochs=30, device="cpu", tty=False, stream=out, enabled=False)
    shown.start_epoch(1, 176)
    shown.estimate(8.5)  # model=final at batch 256 on this CPU: ~30 img/s
    line = out.getvalue().strip()
    assert line.startswith("estimate: 8.5 s/step x 176 steps -> ~24:56 per epoch, ~12:28:00 for 30 epochs")
    assert "over an hour on a CPU" in line and "model=tiny" in line and "data.subset=" in line and "a GPU" in line
    quick = io.StringIO()
    fast = Progress(epochs=2, device="cpu", tty=False, stream=quick, enabled=False)
    fast.start_epoch(1, 10)
    fast.estimate(0.1)
    assert "over an hour" not in quick.getvalue()


def test_on_a_terminal_the_bar_redraws_in_place_and_libraries_are_quiet(tmp_path, cifar_root):
    """A real train.py under a pseudo-terminal: tqdm's bar (carriage returns, the step counter) and no MLflow or
    Alembic INFO line in a default run."""
    env = dict(os.environ, CIFAR10_ROOT=str(cifar_root), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               COLUMNS="120", TERM="xterm")
    env.pop("MLFLOW_LOGGING_LEVEL", None)
    # The micro model (tests/faultkit.py): what is checked is the display of its 80 steps per epoch, not the model.
    command = [sys.executable, str(REPO / "train.py"), *MICRO_MODEL, "trainer.epochs=2", "trainer.batch_size=5",
               "data.train_images=500", "data.test_images=200", "data.val_size=100", "trainer.device=cpu",
               "trainer.log_every=1", "mlflow.log_model=false", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"]
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal of 120 columns
    process = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, cwd=tmp_path, env=env)
    os.close(follower)
    output = b""
    deadline = time.time() + 240
    while time.time() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    process.wait(timeout=30)
    os.close(leader)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-3000:]
    assert "\r" in text and "epoch 1/2:" in text and "/80" in text, text[-3000:]  # tqdm's bar, redrawn
    assert "estimate: " in text
    assert "INFO mlflow" not in text and "INFO alembic" not in text and "Creating initial MLflow" not in text


def test_an_evaluation_pass_in_a_file_shows_its_progress_at_a_bounded_rate(monkeypatch):
    monkeypatch.setattr(progress_module, "FILE_INTERVAL_S", 0.2)
    out = io.StringIO()
    started = time.perf_counter()
    for _ in progress_module.pass_progress(range(40), 40, "test", stream=out, tty=False):
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    lines = out.getvalue().splitlines()
    assert lines and all(line.startswith("  test: batch ") and "left" in line for line in lines)
    assert len(lines) <= seconds / 0.2 + 1
    quiet = io.StringIO()
    assert list(progress_module.pass_progress(range(5), 5, "test", stream=quiet, tty=False)) == list(range(5))
    assert quiet.getvalue() == ""  # a pass shorter than the interval prints nothing
