"""Bad input: each is one clear line before any training, and nothing reaches the stores.

Most cases run in this process through training.app.run() (imports paid once); a few run train.py as
real subprocesses, all at once, to prove the exit codes and that no traceback is printed.
"""
import subprocess
import sys
import time

import pytest

from errors import TrackingError, UserError
from training import app
from tests.conftest import compose_cfg
from tests.faultkit import REPO, data_overrides, free_port, train_env, write_cifar


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A good synthetic dataset and a copy whose data_batch_3 is cut short."""
    good = write_cifar(tmp_path_factory.mktemp("good"))
    bad = write_cifar(tmp_path_factory.mktemp("corrupt"))
    batch = bad / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:5000])
    return {"good": good, "corrupt": bad, "missing": tmp_path_factory.mktemp("empty") / "nothing"}


CASES = [  # (id, overrides, dataset, message that must appear)
    ("unknown block", ["model.layers.layer1.block=inverted"], "good",
     "model.layers.layer1.block=inverted: use one of basic, bottleneck"),
    ("unknown optimizer", ["optimizer.name=lamb"], "good", "optimizer.name=lamb: use one of adam, adamw, sgd"),
    ("unknown scheduler", ["scheduler.name=warm"], "good", "scheduler.name=warm: use one of constant, cosine"),
    ("unknown augmentation", ["augmentation.name=mixup"], "good", "augmentation.name=mixup: use one of none, simple, autoaugment"),
    ("zero blocks", ["model.layers.layer2.blocks=0"], "good", "model.layers.layer2.blocks=0: must be an integer >= 1"),
    ("negative blocks", ["model.layers.layer1.blocks=-2"], "good", "model.layers.layer1.blocks=-2"),
    ("zero channels", ["model.layers.layer1.channels=0"], "good", "model.layers.layer1.channels=0: must be an integer >= 1"),
    ("negative channels", ["model.layers.layer3.channels=-64"], "good", "model.layers.layer3.channels=-64"),
    ("zero stem channels", ["stem.channels=0"], "good", "stem.channels=0: must be an integer >= 1"),
    ("dropout 1", ["model.dropout=1.0"], "good", "model.dropout=1.0: must be a number in [0, 1), or null"),
    ("negative dropout", ["model.layers.layer2.dropout=-0.1"], "good", "model.layers.layer2.dropout=-0.1: must be a number in [0, 1), or null"),
    ("bottleneck channels", ["model.layers.layer3.channels=130"], "good",
     "bottleneck channels 130 are not divisible by blocks.bottleneck_reduction=4"),
    ("kernel-2 with 5x5 stem", ["model=resnet18_k2_pad", "stem=conv5x5"], "good",
     "Kernel-2 blocks need even feature maps at each stride-2 block: use stem=conv3x3"),
    ("batch size 0", ["trainer.batch_size=0"], "good", "trainer.batch_size=0: must be an integer >= 1"),
    ("negative batch size", ["trainer.batch_size=-32"], "good", "trainer.batch_size=-32: must be an integer >= 1"),
    ("fused optimizer setting", ["trainer.fused_optimizer=maybe"], "good",
     "trainer.fused_optimizer=maybe: use one of auto, true, false"),
    ("missing dataset", [], "missing", "CIFAR-10 not found"),
    ("corrupted dataset", [], "corrupt", "as a CIFAR-10 batch"),
    ("dataset of the wrong size", ["data.train_images=50000"], "good", "expected 50,000 images"),
    ("missing CIFAR-100", ["data=cifar100"], "missing", "CIFAR-100 not found"),
    ("class count against the dataset", ["data=cifar100", "data.num_classes=10"], "good",
     "data.num_classes=10: cifar100 has 100; remove the override"),
    ("model head against the dataset", ["model.num_classes=5"], "good",
     "model.num_classes=5: must equal data.num_classes=10 for cifar10"),
    ("validation split too large", ["data.val_size=50000"], "good", "data.val_size=50000: must be an integer in [0,"),
    ("unknown AutoAugment policy", ["data.autoaugment_policy=cifar100"], "good",
     "data.autoaugment_policy=cifar100: use one of cifar10, imagenet, svhn"),
    ("over budget", ["model=resnet18"], "good", "over the budget of 5,000,000"),
    # The schema's pass (training/schema.py): a word for a number, values out of range, unknown keys.
    ("nesterov without momentum", ["optimizer=sgd", "optimizer.momentum=0"], "good",
     "optimizer.momentum=0: Nesterov momentum needs a momentum > 0; set optimizer.nesterov=false"),
    ("a word for a number", ["model.depth_mult=abc"], "good", "model.depth_mult=abc: must be a number > 0"),
    ("a word for an integer", ["trainer.epochs=ten"], "good", "trainer.epochs=ten: must be an integer >= 1"),
    ("negative weight decay", ["optimizer.weight_decay=-0.1"], "good", "optimizer.weight_decay=-0.1: must be a number >= 0"),
    ("negative gradient clip", ["trainer.grad_clip=-1.0"], "good", "trainer.grad_clip=-1.0: must be a number > 0, or null"),
    ("label smoothing above 1", ["trainer.label_smoothing=1.5"], "good",
     "trainer.label_smoothing=1.5: must be a number in [0, 1)"),
    ("zero classes", ["model.num_classes=0"], "good", "model.num_classes=0: must be an integer >= 1"),
    ("unwritable checkpoint folder", ["trainer.checkpoint_dir=/proc/checkpoints"], "good",
     "trainer.checkpoint_dir=/proc/checkpoints: must be a folder this process can create and write to"),
    ("a file as checkpoint folder", ["trainer.checkpoint_dir=/etc/hostname/ckpt"], "good", "/etc/hostname is not a folder"),
    ("betas of the wrong length", ["optimizer.betas=[0.9]"], "good", "optimizer.betas=[0.9]: must be a list of 2 numbers"),
    ("unknown key", ["+trainer.foo=1"], "good", "trainer.foo=1: not a config key; trainer has epochs, batch_size"),
    ("unresolvable interpolation", ["data.root=${oc.env:NO_SUCH_VARIABLE_9137}"], "good",
     "data.root: cannot be resolved: "),
]


@pytest.mark.parametrize("overrides, dataset, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_stops_before_training_and_writes_nothing(overrides, dataset, message, data, tmp_path,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)  # where default checkpoints would go
    store = tmp_path / "mlflow.db"
    cfg = compose_cfg(["model=tiny", *data_overrides(data[dataset]), f"mlflow.tracking_uri=sqlite:///{store}",
                       "trainer.epochs=1", *overrides])
    with pytest.raises(UserError) as caught:
        app.run(cfg)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not store.exists()  # no store, so no run in it
    assert not (tmp_path / "checkpoints").exists()


def test_unreachable_tracking_server_fails_in_seconds(data):
    port = free_port()  # bound and released: nothing listens there
    cfg = compose_cfg(["model=tiny", *data_overrides(data["missing"]), f"mlflow.tracking_uri=http://127.0.0.1:{port}"])
    started = time.perf_counter()
    with pytest.raises(TrackingError, match=f"http://127.0.0.1:{port} cannot be reached"):
        app.run(cfg)  # the dataset is missing too: the store is checked first, before any data
    assert time.perf_counter() - started < 5


SUBPROCESS_CASES = {  # id: (arguments, exit code, text on stderr)
    "unknown stem group option": (["stem=foo"], 1, "Could not find 'stem/foo'"),
    "unknown block": (["model.layers.layer1.block=foo"], 2,
                      "error: model.layers.layer1.block=foo: use one of basic, bottleneck"),
    "negative weight decay": (["optimizer.weight_decay=-0.1"], 2,
                              "error: optimizer.weight_decay=-0.1: must be a number >= 0"),
    "a word for a number": (["model.depth_mult=abc"], 2, "error: model.depth_mult=abc: must be a number > 0"),
    "corrupted dataset": (["data.root={corrupt}"], 2, "error: cannot read "),
    "unreachable tracking server": (["data.root={missing}", "mlflow.tracking_uri=http://127.0.0.1:{port}"], 2,
                                    "error: MLflow tracking server http://127.0.0.1:{port} cannot be reached"),
}


@pytest.fixture(scope="module")
def subprocess_results(data, tmp_path_factory):
    """Start every train.py at once (imports dominate), then collect them."""
    port = free_port()
    jobs = {}
    for name, (args, _, _) in SUBPROCESS_CASES.items():
        cwd = tmp_path_factory.mktemp("job")
        args = [a.format(port=port, **data) for a in args]
        base = ["model=tiny", *data_overrides(data["good"]), f"mlflow.tracking_uri=sqlite:///{cwd}/mlflow.db"]
        jobs[name] = (cwd, subprocess.Popen([sys.executable, str(REPO / "train.py"), *base, *args], cwd=cwd,
                                            env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True))
    results = {}
    for name, (cwd, job) in jobs.items():
        out, err = job.communicate(timeout=240)
        results[name] = (job.returncode, out, err, cwd, port)
    return results


@pytest.mark.parametrize("name", list(SUBPROCESS_CASES))
def test_train_py_exits_cleanly_on_bad_input(name, subprocess_results):
    code, out, err, cwd, port = subprocess_results[name]
    _, want_code, want_text = SUBPROCESS_CASES[name]
    assert code == want_code, err
    assert want_text.format(port=port) in err
    assert "Traceback" not in err and "Traceback" not in out
    if want_code == 2:  # ours: exactly one line
        assert len(err.strip().splitlines()) == 1, err
    else:  # Hydra's: the problem first, then the options to pick from
        assert err.strip().splitlines()[0].startswith("In 'config': Could not find") and "Available options" in err
    assert not (cwd / "mlflow.db").exists() and not (cwd / "checkpoints").exists()


def test_a_plain_multirun_names_the_jobs_that_stopped_and_runs_the_others(data, tmp_path):
    """`-m a=1,2` with Hydra's own sweeper: an over-budget job is one line and trains nothing, a diverging one is
    one line, the others train, and train.py exits 2 after the last, naming the stopped jobs (before: the first
    diverged job ended the multirun with exit 1; a bad one, Hydra's traceback after the last job)."""
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "-m", "model=tiny", "optimizer=sgd",
                             "scheduler=constant", "model.width_mult=1.0,30", "optimizer.lr=0.01,1e12",
                             *data_overrides(data["good"]), "trainer.epochs=1",
                             f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                             f"hydra.sweep.dir={tmp_path / 'multirun'}"],
                            cwd=tmp_path, env=train_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 4, lines  # jobs #1 (diverged), #2 and #3 (over budget), then the summary
    # one step at lr 1e12: its training loss was finite, the weights after it were not
    assert lines[0] == "error: validation loss became nan after epoch 1"
    assert all("over the budget of 5,000,000" in line for line in lines[1:3])
    assert lines[3].startswith("error: 3 job(s) of this multirun did not finish: #1 (model=tiny optimizer=sgd ")
    assert "): diverged; #2 (" in lines[3] and lines[3].endswith("): bad input, before training; the others ran")
    assert result.stdout.count("test loss ") == 1  # job #0 trained and was tested
