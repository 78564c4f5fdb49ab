"""scripts/gpu_eval.sh (docs/gpu.md): the parts that carry its luggage, and its whole path on the CPU
(`make gpu-smoke`), down to re-checking the stored weights with task=evaluate."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import gpu_parts  # noqa: E402


def test_parts_round_trip_and_a_damaged_part_is_named(tmp_path):
    data = tmp_path / "src" / gpu_parts.DATA_FOLDER
    data.mkdir(parents=True)
    for i in range(3):
        (data / f"data_batch_{i}").write_bytes(os.urandom(50_000))  # incompressible: several parts
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "demo-1.0-py3-none-any.whl").write_bytes(b"PK" + os.urandom(1000))
    manifest = gpu_parts.pack(tmp_path / "src", wheels, tmp_path / "parts", part_mib=0.05, preset=1)
    assert len(manifest["parts"]) >= 3 and all(p["bytes"] <= 0.05 * 2**20 for p in manifest["parts"])
    assert gpu_parts.check(tmp_path / "parts")[0]
    gpu_parts.unpack(tmp_path / "parts", tmp_path / "into")
    for i in range(3):
        assert (tmp_path / "into" / "data" / gpu_parts.DATA_FOLDER / f"data_batch_{i}").read_bytes() == \
            (data / f"data_batch_{i}").read_bytes()
    assert (tmp_path / "into" / "wheels" / "demo-1.0-py3-none-any.whl").is_file()
    # The wheels come first: part-1 alone gives them (the first device call installs them).
    only_first = tmp_path / "first"
    only_first.mkdir()
    for name in (gpu_parts.MANIFEST, "part-1"):
        (only_first / name).write_bytes((tmp_path / "parts" / name).read_bytes())
    assert gpu_parts.extract_wheels(only_first, tmp_path / "early") == 1
    assert (tmp_path / "early" / "wheels" / "demo-1.0-py3-none-any.whl").read_bytes() == \
        (wheels / "demo-1.0-py3-none-any.whl").read_bytes()
    assert not (tmp_path / "early" / "data").exists()
    second = tmp_path / "parts" / "part-2"
    second.write_bytes(second.read_bytes()[:-1] + b"x")
    ok, lines = gpu_parts.check(tmp_path / "parts")
    assert not ok and lines[1].startswith("part-2: DAMAGED")
    (tmp_path / "parts" / "part-3").unlink()
    with pytest.raises(SystemExit, match="part-3: not here yet"):
        gpu_parts.unpack(tmp_path / "parts", tmp_path / "again")


def test_a_missing_part_on_the_last_call_is_reported_in_out(tmp_path):
    """The machine was given back between calls, so the parts earlier calls carried are gone: gpu_eval.sh stops at
    unpacking, and since $OUT is all a call returns, the error (which part, what to rerun) must be there."""
    data = tmp_path / "src" / gpu_parts.DATA_FOLDER
    data.mkdir(parents=True)
    for i in range(2):
        (data / f"data_batch_{i}").write_bytes(os.urandom(50_000))
    gpu_parts.pack(tmp_path / "src", None, tmp_path / "parts", part_mib=0.05, preset=1)
    (tmp_path / "parts" / "part-1").unlink()
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, GPU_EVAL_PARTS=str(tmp_path / "parts"), OUT=str(out))
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_eval.sh")], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    log = (out / "gpu_eval.log").read_text()
    assert "part-1: not here yet" in log and "part-2: ok" in log and "carry part-1 again" in log
    details = json.loads((out / "summary.json").read_text())["details"]
    assert details["complete"] is False and "part-1: not here yet" in details["steps"]["setup"]["error"]


def run_gpu_eval(args, timeout=300):
    """scripts/gpu_eval.py itself (its own clock: no GPU_EVAL_STARTED); (result, wall seconds)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("GPU_EVAL_STARTED", None)
    started = time.time()
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_eval.py"), *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=timeout)
    return result, time.time() - started


def test_a_failed_step_still_leaves_a_summary_that_records_it(tmp_path):
    """The data step raises (no CIFAR-10 where --data points): summary.json and summary.md are there anyway,
    naming the step and its error, and the run is not called complete."""
    out = tmp_path / "out"
    result, _ = run_gpu_eval(["--data", str(tmp_path / "nothing"), "--out", str(out), "--results", str(tmp_path / "r")])
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    details = json.loads((out / "summary.json").read_text())["details"]
    assert details["complete"] is False and details["steps"]["data"]["status"] == "failed"
    assert "lacks data_batch_1" in details["steps"]["data"]["error"]
    assert "data failed" in (out / "summary.md").read_text() and (out / "gpu_eval.log").is_file()


def test_a_deadline_stops_the_step_and_the_summary_says_so(tmp_path):
    """--budget 35: every step must end by 35 - 25 (the reserve) = 10 s; the throughput step (12 to 14 s here,
    alone) starts and is stopped at its deadline (a fifth of the budget, 7 s), the later ones are skipped or
    stopped, and the run ends within its budget with all that recorded."""
    out = tmp_path / "out"
    result, _ = run_gpu_eval(["--smoke", "--budget", "35", "--out", str(out)])
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    details = json.loads((out / "summary.json").read_text())["details"]
    steps = details["steps"]
    assert steps["data"]["status"] == "ok" and steps["throughput"]["status"] == "stopped at its deadline", steps
    # the sweep's slot ending it is its plan ("ok", stopped_at_slot_end); the final runs find no time left
    assert steps["sweep"]["status"] == "ok" or steps["sweep"]["status"].startswith("skipped"), steps
    assert all(steps[name]["status"].startswith(("skipped", "stopped at its deadline"))
               for name in ("best", "paper_final")), steps
    assert details["complete"] is False and details["budget_s"] == 35 and details["total_seconds"] <= 35
    assert "throughput stopped at its deadline" in (out / "summary.md").read_text()
    assert (out / "mlflow_store.tar.gz").is_file()


def test_a_failed_graph_check_does_not_stop_the_preflight_and_the_runs_go_eager(tmp_path, monkeypatch):
    """Only failed imports stop the first call: a capture or a check that raises is recorded, and the decision
    carried to the last call is trainer.cuda_graphs=false."""
    import torch

    import training.graphs
    import gpu_eval

    def refuses(*args, **kwargs):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(training.graphs, "compare_with_eager", refuses)
    lines = []
    code = gpu_eval.preflight(lines.append, torch.device("cuda"), tmp_path / "out", tmp_path / "keep",
                              deadline=__import__("time").time() + 60)
    assert code == 0
    record = json.loads((tmp_path / "keep" / gpu_eval.PREFLIGHT).read_text())
    assert record["cuda_graphs"] is False and "RuntimeError: CUDA error: operation not permitted" in record["why"]
    assert (tmp_path / "out" / gpu_eval.PREFLIGHT).is_file()
    assert any("trainer.cuda_graphs=false" in line for line in lines)


def test_planning_the_second_run_from_the_first_ones_epochs():
    """The first run's real seconds per epoch against its probe give the factor the second run is planned with."""
    import gpu_eval
    plan = gpu_eval.plan_from_measured([5.0, 4.0, 4.0, 4.0], n_train=50_000, rate=20_000)  # 4.25 s vs 2.5 s probed
    assert plan["factor"] == pytest.approx(1.7) and plan["fixed_s"] == 0
    epochs, epoch_s = gpu_eval.plan_epochs(100.0, 50_000, 25_000, plan)
    assert epoch_s == pytest.approx(3.4) and epochs == 29
    # the first run's default plan: the H100 log's 1.53x probe-to-epoch ratio, rounded up
    epochs, epoch_s = gpu_eval.plan_epochs(100.0, 50_000, 25_000, {"factor": gpu_eval.EPOCH_FACTOR,
                                                                   "fixed_s": gpu_eval.EPOCH_FIXED_S})
    assert epoch_s == pytest.approx(1.6 * 2 + 0.5) and epochs == 27


def test_the_runbook_on_the_cpu_preflight_then_smoke_and_evaluate_reproduces_it(tmp_path):
    """The first device call's check, here without a GPU (the packages work; the capture is left for CUDA),
    then `make gpu-smoke` as the last call runs it, reading the first call's record: its throughput rows, not
    measured again; a real sweep on the device pool, both final runs, the summary, the store; then the summary's
    own command re-checks each stored weights file. (The throughput step measuring for itself: the deadline test
    above; the benchmark's rows: tests/test_bench_smoke.py.)"""
    keep = tmp_path / "keep"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", GPU_EVAL_PARTS=str(tmp_path / "no-parts"))
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_eval.sh"), "--preflight", "--out",
                             str(tmp_path / "first"), "--keep", str(keep)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "preflight: MLflow sqlite run ok, Optuna sqlite study ok, model=family recipe=short: 4,904,522 parameters" \
        in result.stdout
    assert "image: torch " in result.stdout  # the image's own versions, before any carried wheel
    record = json.loads((keep / "preflight.json").read_text())  # the record the last call reads
    assert record["cuda_graphs"] is False and record["why"] == "no GPU here"
    assert {r["variant"] for r in record["throughput"]} >= {"fp32", "bf16+channels_last+fused+graphs"}
    assert "trainer.cuda_graphs=false" in result.stdout
    assert (tmp_path / "first" / "preflight.json").is_file()

    out = tmp_path / "out"
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_eval.sh"), "--smoke", "--out", str(out),
                             "--keep", str(keep)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    details = summary["details"]
    assert details["complete"] and all(step["status"] == "ok" for step in details["steps"].values())
    assert details["steps"]["throughput"]["note"] == "measured by the first call (--preflight)"
    assert details["throughput"] == [{k: v for k, v in r.items() if k != "rounds"} for r in record["throughput"]]
    assert list(details["steps"]) == ["data", "throughput", "sweep", "best", "paper_final"]
    assert details["environment"]["mlflow"] and details["environment"]["optuna"]  # the real packages
    assert {r["variant"] for r in details["throughput"]} >= {"fp32", "bf16+channels_last+fused+graphs"}
    assert {r["stem"] for r in details["throughput"]} == {"conv5x5", "conv3x3"}
    sweep = details["sweep"]
    assert sweep["trials"].get("complete", 0) >= 1 and sweep["best_params"]["model.num_layers"] in (2, 3, 4, 5)
    assert sweep["trials_per_device"] >= 2
    for name in ("best", "paper_final"):
        run = summary[name]
        assert set(run) == {"overrides", "params", "epochs", "train_seconds", "images_per_sec", "test_acc", "weights"}
        assert run["epochs"] == 1 and run["params"] <= 5_000_000 and 0 <= run["test_acc"] <= 1
        weights = Path(run["weights"])
        assert weights.is_file() and weights.stat().st_size <= 10 * 2**20  # fp16: at most 10 MiB
        assert (out / weights.name).is_file()
        evaluated = subprocess.run([sys.executable, str(REPO / "train.py"), "task=evaluate", f"evaluate.weights={weights}",
                                    *run["overrides"], f"data.root={details['data']['root']}"],
                                   cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert evaluated.returncode == 0, evaluated.stderr[-2000:]
        last = evaluated.stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"test_acc=0\.\d{4}", last) and abs(float(last.split("=")[1]) - run["test_acc"]) <= 0.002
    assert summary["best"]["overrides"][:2] == ["model=family", "recipe=short"]
    assert summary["paper_final"]["overrides"][:2] == ["model=final", "recipe=short"]
    assert "| `best` |" in (out / "summary.md").read_text()
    import tarfile
    with tarfile.open(out / "mlflow_store.tar.gz") as tar:
        names = tar.getnames()
    assert "store/mlflow.db" in names and "store/optuna.db" in names
    import mlflow
    tar_dir = tmp_path / "store"
    with tarfile.open(out / "mlflow_store.tar.gz") as tar:
        tar.extractall(tar_dir, filter="data")
    client = mlflow.MlflowClient(f"sqlite:///{tar_dir / 'store' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gpu-eval").experiment_id])
    named = {r.info.run_name: r for r in runs}
    assert {"gpu-eval-best", "gpu-eval-paper_final"} <= set(named)
    assert named["gpu-eval-best"].data.metrics["stored_test_acc"] == pytest.approx(summary["best"]["test_acc"], abs=1e-4)
    assert any(r.data.tags.get("mlflow.parentRunId") for r in runs)  # the sweep's trials, under their parent


def test_a_final_run_cut_at_its_deadline_is_evaluated_from_its_last_checkpoint(tmp_path):
    """gpu_eval.evaluate_checkpoint: the weights a stopped run would have kept, from its last epoch checkpoint,
    written as trainer.save_weights writes them and measured by task=evaluate, give the accuracy the finished
    run measured on its own stored weights (the same epoch here: the run keeps its checkpoint)."""
    import torch

    import gpu_eval
    from data import load_dataset
    from data.datasets import CIFAR10
    from tests.faultkit import MICRO_MODEL, fresh_sqlite_store, run_train, train_env, write_cifar
    root = write_cifar(tmp_path / "data")
    setup = [f"data.root={root}", "data.train_images=120", "data.test_images=40", "data.val_size=0",
             "trainer.device=cpu", "trainer.log_every=0", "mlflow.log_model=false", *MICRO_MODEL,
             "trainer.batch_size=40", "trainer.ema_decay=0.9"]
    run = run_train([*setup, "trainer.epochs=2", f"mlflow.tracking_uri={fresh_sqlite_store(tmp_path, 'm.db')}",
                     f"trainer.checkpoint_dir={tmp_path / 'ckpt'}", "trainer.keep_checkpoint=true",
                     f"trainer.save_weights={tmp_path / 'finished.pt'}"], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| val acc none (data.val_size=0) |" in run.stdout  # no validation split (it printed "nan%")
    stored = float(re.search(r"test acc of the stored weights \(fp32, TF32 off\) ([\d.]+)%", run.stdout).group(1))
    images, _ = load_dataset(CIFAR10, root, expected_train=120, expected_test=40)["train"]
    lines = []
    result = gpu_eval.evaluate_checkpoint(tmp_path / "ckpt" / "last.pt", tmp_path / "cut.pt",
                                          [*setup, f"hydra.run.dir={tmp_path / 'evaluate'}"], images, lines.append,
                                          env=train_env())
    assert result["cut"] is True and result["epochs"] == 2 and result["weights"] == str(tmp_path / "cut.pt")
    assert result["test_acc"] == pytest.approx(stored / 100, abs=0.5 / 40), (result, stored, lines)
    saved = torch.load(tmp_path / "cut.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in saved["state_dict"].values() if v.is_floating_point())
    assert any("cut at its deadline after 2 epochs" in line for line in lines)
