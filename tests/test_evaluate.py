"""trainer.save_weights and task=evaluate: a weights file anyone can re-check (issue 11, point 6)."""
import re

import pytest
import torch

from tests.conftest import compose_cfg, small_data_overrides
from tests.test_train import run_train
from training import app, tasks
from training.tracking import read_records

TINY = ["model=tiny", "trainer.batch_size=50", "optimizer.lr=0.003", "trainer.tta=flip_shift", "trainer.ema_decay=0.9"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cifar_root):
    """One tiny run that saves its weights; (weights path, its records, the overrides, the store)."""
    folder = tmp_path_factory.mktemp("evaluate")
    store = folder / "store"
    store.mkdir()
    weights = folder / "weights" / "tiny.pt"
    overrides = [*TINY, "trainer.epochs=2", f"trainer.save_weights={weights}", "mlflow.log_model=false",
                 *small_data_overrides(cifar_root, store)]
    out = folder / "run"
    original = tasks.output_dir
    tasks.output_dir = lambda: str(out)  # the run's records (metrics.jsonl) land here instead of a temp folder
    try:
        app.run(compose_cfg(overrides))
    finally:
        tasks.output_dir = original
    return weights, read_records(out / "metrics.jsonl"), overrides, store


def test_saved_weights_are_fp16_and_their_accuracy_is_recorded(trained):
    weights, records, _, _ = trained
    state = torch.load(weights, weights_only=True)
    floats = [v for v in state.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert any(k.endswith("num_batches_tracked") and v.dtype == torch.int64 for k, v in state.items())
    final = records[-1]
    assert final["kind"] == "final" and final["weights_bytes"] == weights.stat().st_size
    assert final["stored_test_acc"] > 0.3 and abs(final["stored_test_acc"] - final["test_acc"]) < 0.05
    assert not (weights.parent / "tiny.pt.tmp").exists()


def test_evaluate_prints_the_stored_accuracy_as_its_last_line(trained, train_env, tmp_path):
    weights, records, overrides, store = trained
    args = ["task=evaluate", f"evaluate.weights={weights}",
            *[o for o in overrides if not o.startswith(("trainer.save_weights", "trainer.epochs"))]]
    result = run_train(args, train_env, tmp_path)
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
