"""The benchmark command runs end to end on tiny settings, and the budget check it measures is fast.

(That the count is exact, against the built model, is tests/test_models.py's.)"""
import json
import tracemalloc

import pytest
import torch

from models import build_model, param_report
from tests.conftest import compose_cfg
from tests.faultkit import fastest_of_three


def test_bench_quick_runs_and_writes_json(tmp_path, cifar_root, capsys):
    """`python -m benchmarks --quick` in-process; the per-trial overhead section (two `train.py -m`
    sweeps in subprocesses, a minute) runs in `make bench` only."""
    from benchmarks.__main__ import main
    out = tmp_path / "bench.json"
    main(["--quick", "--only", "budget", "data", "train", "--root", str(cifar_root), "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["machine"]["cpu"] and results["machine"]["torch_threads"] >= 1
    assert results["images"].startswith("500 images")  # the synthetic files were read, not random ones
    assert {row["config"] for row in results["budget_check"]} == {"final", "50M"}
    assert {row["policy"] for row in results["data_pipeline"]} == {"simple", "autoaugment"}
    assert all(row["ratio"] > 0 for row in results["data_pipeline"] + results["train_step"])
    printed = capsys.readouterr().out
    assert "data pipeline" in printed and "train step" in printed and f"wrote {out}" in printed


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_gpu_flag_without_gpu_is_a_clear_error(tmp_path, capsys):
    from benchmarks.__main__ import main
    with pytest.raises(SystemExit) as exit_info:
        main(["--gpu", "--quick", "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2 and "--gpu needs a CUDA GPU" in capsys.readouterr().err


def test_gpu_switch_loops_build_on_cpu(cifar_root):
    """The GPU half's code path, minus CUDA: every variant's loop builds and steps (compile aside)."""
    from benchmarks.common import dataset_images
    from benchmarks.train_step import GPU_VARIANTS, ProjectLoop, make_loader
    from data.datasets import CIFAR10
    images, labels, _ = dataset_images(CIFAR10, str(cifar_root))
    cfg = compose_cfg(["model=tiny"])
    device = torch.device("cpu")
    for name, (precision, channels_last, fused, compile_model, graphs) in GPU_VARIANTS.items():
        if compile_model:
            continue
        model = build_model(cfg, device=device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        loop = ProjectLoop(cfg, model, make_loader(images, labels, device, 4, 1, channels_last), device,
                           precision, fused=False, graphs=graphs)
        assert loop() == 4, name


def test_gpu_graph_comparison_rows_on_cpu(cifar_root):
    """The CUDA-graph section's table, minus CUDA (graphs are a no-op on the CPU): one row per variant and model."""
    from benchmarks.common import dataset_images
    from benchmarks.train_step import GRAPH_VARIANTS, bench_gpu_switches
    from data.datasets import CIFAR10
    images, labels, _ = dataset_images(CIFAR10, str(cifar_root))
    variants = {k: ("fp32",) + v[1:] for k, v in GRAPH_VARIANTS.items()}  # no bf16 on this CPU
    rows = bench_gpu_switches(compose_cfg(["model=tiny", "stem=conv3x3"]), images, labels, 4, 2, 1, variants=variants,
                              device="cpu")
    assert [r["variant"] for r in rows] == list(GRAPH_VARIANTS) and all(r["images_per_sec"] > 0 for r in rows)
    assert rows[0]["speedup_vs_fp32"] == 1.0 and rows[0]["stem"] == "conv3x3" and rows[-1]["cuda_graphs"] == ""


@pytest.mark.parametrize("overrides", [["model=final"], ["model=final", "model.width_mult=3.2"]])
def test_budget_check_is_fast_and_allocates_no_weights(overrides):
    cfg = compose_cfg(overrides)
    param_report(cfg)
    elapsed = fastest_of_three(param_report, cfg)  # untraced: one traced call took 0.47 s beside a second worker
    tracemalloc.start()
    report = param_report(cfg)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert report.total in (4_997_194, 50_465_334)
    assert elapsed < 0.25  # 50 ms budget measured by `make bench`; generous here for a loaded CI machine
    assert peak < 1_000_000  # bytes; the weights alone would take 4 bytes per parameter
