"""trainer.save_weights and task=evaluate: a weights file anyone can re-check."""
import re

import pytest
import torch

from tests.conftest import compose_cfg
from tests.test_train import run_train


@pytest.fixture(scope="module")
def trained(tiny_run):
    """The shared tiny run (tests/conftest.py), which saved its weights: (weights path, its records, the overrides,
    the store)."""
    return tiny_run.weights, tiny_run.records, tiny_run.overrides, tiny_run.store


def test_saved_weights_are_fp16_and_their_accuracy_is_recorded(trained):
    weights, records, overrides, _ = trained
    stored = torch.load(weights, weights_only=True)
    state = stored["state_dict"]
    floats = [v for v in state.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert any(k.endswith("num_batches_tracked") and v.dtype == torch.int64 for k, v in state.items())
    final = records[-1]
    assert final["kind"] == "final" and final["weights_bytes"] == weights.stat().st_size
    assert final["stored_test_acc"] > 0.3 and abs(final["stored_test_acc"] - final["test_acc"]) < 0.05
    assert not (weights.parent / "tiny.pt.tmp").exists()
    # the normalisation the model was trained with, exactly (fp32 values as Python floats): the training split's
    from data import make_loaders
    loader = make_loaders(compose_cfg(overrides), torch.device("cpu"), False)[0]
    assert stored["normalize_mean"] == loader.mean.tolist() and stored["normalize_std"] == loader.std.tolist()
    assert stored["model"] == "tiny" and stored["num_classes"] == 10


def evaluate_args(weights, overrides, *extra):
    return ["task=evaluate", f"evaluate.weights={weights}",
            *[o for o in overrides if not o.startswith(("trainer.save_weights", "trainer.epochs"))], *extra]


@pytest.mark.parametrize("split", ["another validation split", "an old weights file without its normalisation"])
def test_evaluate_normalises_as_training_did_whatever_the_split_overrides(split, trained, train_env, tmp_path):
    """The weights file carries the training split's mean/std: evaluating with another data.val_size (whose training
    split has other statistics) gives the stored accuracy. A file written before it carried them still works,
    normalising from the config's training split as before (so it needs the run's split settings)."""
    weights, records, overrides, _ = trained
    extra = ["data.val_size=450"] if split == "another validation split" else []
    if split != "another validation split":
        old = tmp_path / "old.pt"
        torch.save(torch.load(weights, weights_only=True)["state_dict"], old)
        weights = old
    result = run_train(evaluate_args(weights, overrides, *extra), train_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"test_acc={records[-1]['stored_test_acc']:.4f}"
    assert ("normalisation stored with the weights" if extra else "normalisation from the training split") \
        in result.stdout


def test_evaluate_refuses_a_normalisation_that_disagrees_with_the_stored_one(trained, train_env, tmp_path):
    weights, _, overrides, _ = trained
    train_env["CIFAR10_ROOT"] = str(tmp_path / "no-data-here")  # refused before any data
    result = run_train(evaluate_args(weights, overrides, "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"),
                       train_env, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: evaluate.weights={weights}: trained with data.mean=[") and "Traceback" not in \
        result.stderr and "data.mean=[0.5, 0.5, 0.5]" in last


def test_evaluate_prints_the_stored_accuracy_as_its_last_line(trained, train_env, tmp_path):
    weights, records, overrides, store = trained
    result = run_train(evaluate_args(weights, overrides), train_env, tmp_path)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"test_acc=0\.\d{4}", last), last
    assert last == f"test_acc={records[-1]['stored_test_acc']:.4f}"
    assert not (tmp_path / "mlflow.db").exists()  # evaluate opens no MLflow run


@pytest.mark.parametrize("case", ["missing", "not a state_dict", "another model", "unset"])
def test_bad_weights_are_one_line_before_any_data(case, trained, train_env, tmp_path):
    weights, _, _, _ = trained
    train_env["CIFAR10_ROOT"] = str(tmp_path / "no-data-here")  # proves the data is never read
    path = {"missing": tmp_path / "nope.pt", "not a state_dict": tmp_path / "notes.txt",
            "another model": weights, "unset": None}[case]
    (tmp_path / "notes.txt").write_text("not weights")
    model = "model=final" if case == "another model" else "model=tiny"
    result = run_train(["task=evaluate", model] + ([f"evaluate.weights={path}"] if path else []), train_env, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: evaluate.weights=") and "Traceback" not in result.stderr
    expected = {"missing": "no such file", "not a state_dict": "cannot be read as a state_dict",
                "another model": "its weights do not fit the model this config describes", "unset": "needs the path"}
    assert expected[case] in lines[-1]


@pytest.mark.parametrize("tta", ["none", "flip", "flip_shift"])
def test_a_confidently_wrong_prediction_has_a_finite_test_loss(tta):
    """The loss is the log of the views' mean probability: a logit gap of 200 (probabilities below float32's
    smallest) gives a loss of about 200, not inf."""
    from data import DeviceLoader
    from training.engine import evaluate

    class Confident(torch.nn.Module):
        def forward(self, x):
            logits = torch.zeros(len(x), 10)
            logits[:, 0] = 200.0  # every image: class 0, with near certainty
            return logits

    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    loader = DeviceLoader(images, torch.tensor([0, 1, 1, 1]), batch_size=2, mean=torch.full((3,), 0.5),
                          std=torch.full((3,), 0.25))
    loss, acc = evaluate(Confident(), loader, torch.autocast("cpu", enabled=False), tta=tta)
    assert acc == pytest.approx(0.25) and loss == pytest.approx(3 * 200 / 4, rel=1e-5)
