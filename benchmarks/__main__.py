"""python -m benchmarks [--quick] [--gpu] [--only SECTION ...]: print a table, write JSON.

    make bench                         # everything, CPU, a few minutes
    python -m benchmarks --gpu         # plus the GPU half (train step with each speed switch, CUDA graphs)
    python -m benchmarks --gpu --only graphs   # eager fp32 vs CUDA graphs, model=final and recipe=fast, batch 512
    python -m benchmarks --quick       # seconds: tiny sizes, for the smoke test
    python -m benchmarks --data cifar100 --only data train   # another dataset (default: the config's)

Ratios are measured side by side in one run (alternating rounds); absolute numbers only hold for
the machine recorded in the JSON's "machine" field.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from benchmarks import budget_check, data_pipeline, train_step, trial_overhead
from benchmarks.common import dataset_images, machine
from data import DATASETS, get_dataset
from training.files import write_text_atomically

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("budget", "data", "train", "graphs", "overhead")
# graphs (--gpu only): the CUDA-graph comparison, eager fp32 vs graphed, for these models at batch 512.
GRAPH_MODELS = {"model=final (5x5 stem)": ["model=final"], "recipe=fast (3x3 stem)": ["recipe=fast"]}

FULL = dict(data=dict(batch_size=256, conventional_images=4096, ours_images=50_000, rounds=5),
            # Many short rounds: single rounds scatter by +-15% on a shared machine; their median holds.
            train={"tiny": dict(batch_size=64, steps=4), "final": dict(batch_size=32, steps=1)}, train_rounds=25,
            gpu=dict(batch_size=256, steps=20, rounds=5), graphs=dict(batch_size=512, steps=20, rounds=5),
            overhead=dict(trials=8, train_per_file=10_000, test=1_000), budget_repeats=20, budget_control=True)
QUICK = dict(data=dict(batch_size=32, conventional_images=64, ours_images=256, rounds=1, workers=0),
             train={"tiny": dict(batch_size=8, steps=2)}, train_rounds=1,
             gpu=dict(batch_size=8, steps=2, rounds=1), graphs=dict(batch_size=4, steps=2, rounds=1),
             overhead=dict(trials=2, train_per_file=100, test=100, subset=64, val_size=64), budget_repeats=2,
             budget_control=False)


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf")):
        return compose("config", overrides=list(overrides))


def table(title, rows, columns):
    widths = [max(len(c), *(len(f"{r.get(c, '')}") for r in rows)) for c in columns]
    lines = [title, "  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(f"{r.get(c, '')}".rjust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def write_json(path, results):
    """The results so far, replacing the file whole (a temporary file renamed over it)."""
    write_text_atomically(path, json.dumps(results, indent=2) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds); numbers mean nothing")
    parser.add_argument("--gpu", action="store_true", help="also the GPU half: model=final with each speed switch")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=SECTIONS,
                        help="sections to run (graphs: with --gpu, or when named here)")
    parser.add_argument("--data", choices=sorted(DATASETS), help="dataset (default: the config's data group)")
    parser.add_argument("--root", help="dataset folder (default: data.root of the config; random images of the "
                                       "same shape when absent)")
    parser.add_argument("--out", default=str(REPO / "bench_results" / "latest.json"))
    args = parser.parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA GPU, and none is visible (torch.cuda.is_available() is False)")
    settings = QUICK if args.quick else FULL
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"machine": machine(), "device": device, "quick": args.quick, "command": " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)]),
               "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"machine: {results['machine']}", flush=True)
    out = []

    if "budget" in args.only:  # first, before anything else grows the process's memory
        rows = budget_check.bench(compose_cfg, settings["budget_repeats"], settings["budget_control"])
        results["budget_check"] = rows
        out.append(table("budget check: validate + param_report latency (count_ms: param_report alone), memory",
                         rows,
                         ["config", "params", "first_ms", "median_ms", "max_ms", "count_ms", "python_peak_kb",
                          "rss_growth_mb", "weights_would_be_mb", "real_build_rss_growth_mb"]))
        print(out[-1], flush=True)

    # The graphs section runs with --gpu, or on whatever device there is when asked for by name (--only graphs:
    # scripts/gpu_eval.sh --smoke runs it on the CPU, where CUDA graphs are a no-op and the numbers mean little).
    run_graphs = "graphs" in args.only and (args.gpu or args.only is not SECTIONS)
    needs_images = {"data", "train"} & set(args.only) or run_graphs
    data_overrides = [f"data={args.data}"] if args.data else []
    images = labels = source = data_cfg = None
    if needs_images:
        data_cfg = compose_cfg(data_overrides).data
        root = Path(args.root) if args.root else REPO / data_cfg.root  # the config's default, from the repo
        images, labels, source = dataset_images(get_dataset(data_cfg.name), root, None if not args.quick else 512)
        results["dataset"] = data_cfg.name
    results["images"] = source

    if "data" in args.only:
        rows = data_pipeline.bench(images, labels, device, data_cfg.autoaugment_policy, **settings["data"])
        results["data_pipeline"] = rows
        out.append(table(f"data pipeline ({device}, {source} images): images/s, ours vs conventional", rows,
                         ["policy", "batch_size", "workers", "ours_images_per_sec", "conventional_images_per_sec",
                          "ratio"]))
        print(out[-1], flush=True)

    if "train" in args.only:
        rows = [train_step.bench_loop(compose_cfg([f"model={name}", *data_overrides]), images, labels, device,
                                      rounds=settings["train_rounds"], **sizes)
                for name, sizes in settings["train"].items()]
        results["train_step"] = rows
        out.append(table(f"train step ({device}, fp32): images/s, project loop vs plain loop", rows,
                         ["model", "batch_size", "steps", "rounds_timed", "threads", "project_images_per_sec",
                          "project_unfused_images_per_sec", "plain_images_per_sec", "ratio", "ratio_quartiles", "ratio_unfused",
                          "project_1_thread_images_per_sec", "one_thread_vs_default"]))
        print(out[-1], flush=True)
        if args.gpu:
            gpu = settings["gpu"]
            rows = train_step.bench_gpu_switches(compose_cfg(["model=final", *data_overrides]), images, labels,
                                                 gpu["batch_size"], gpu["steps"], gpu["rounds"])
            results["gpu_switches"] = rows
            out.append(table(f"GPU switches ({results['machine'].get('gpu')}): model=final, project loop", rows,
                             ["variant", "batch_size", "images_per_sec", "speedup_vs_fp32"]))
            print(out[-1], flush=True)

    if run_graphs:
        gpu = settings["graphs"]
        variants = train_step.GRAPH_VARIANTS
        if device == "cpu":  # bf16 autocast is slow on most CPUs (and a CPU run only checks the path): fp32
            variants = {name: ("fp32",) + switches[1:] for name, switches in variants.items()}
        rows = []
        for label, overrides in GRAPH_MODELS.items():
            rows += train_step.bench_gpu_switches(compose_cfg([*overrides, *data_overrides]), images, labels,
                                                  gpu["batch_size"], gpu["steps"], gpu["rounds"],
                                                  variants=variants, device=device)
            results["gpu_graphs"] = rows
            write_json(args.out, results)  # each model's rows as soon as they are measured: a run cut off keeps them
        results["gpu_graphs"] = rows
        out.append(table(f"CUDA graphs ({results['machine'].get('gpu', 'no GPU: ' + device)}): project loop, batch {gpu['batch_size']}; "
                         f"warm-up (incl. capture) apart", rows,
                         ["model", "stem", "variant", "images_per_sec", "speedup_vs_fp32", "warmup_s", "capture_s",
                          "cuda_graphs"]))
        print(out[-1], flush=True)

    if "overhead" in args.only:
        with tempfile.TemporaryDirectory() as workdir:
            row = trial_overhead.bench(workdir, **settings["overhead"])
        results["trial_overhead"] = row
        out.append(table("per-trial overhead of `train.py -m hydra/sweeper=optuna` (tiny trials, seconds)", [row],
                         [key for key in row if key != "overheads_s"]))
        print(out[-1], flush=True)

    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json(args.out, results)
    print(f"\n{chr(10).join(out)}\n\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
