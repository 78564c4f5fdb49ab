"""One-GPU check in a fixed time budget (scripts/gpu_check.sh runs this; see README "Paper reproduction").

(a) training throughput (images/s) of model=final: fp32 baseline against the fast path
    (bf16 autocast + channels_last, then + torch.compile), the same training step train.py runs;
(b) as many epochs of recipe=fast as fit in what is left of the budget, through train.py itself,
    printing validation accuracy per epoch and the test accuracy (with the recipe's TTA) at the end.

Everything goes to stdout and, under $OUT (or --out), to gpu_check.log and gpu_check.json.
--smoke runs the same path on tiny settings (model=tiny, 1,024 images, 2 epochs) for a CPU.
"""
import argparse
import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from data import channel_stats, dataset_dir, load_dataset  # noqa: E402
from data.datasets import CIFAR10  # noqa: E402  (this check reads CIFAR-10: the md5 tables below are its files)
from models import build_model, param_report  # noqa: E402
from training.optim import build_optimizer  # noqa: E402

FOLDER, TRAIN_FILES, TEST_FILES = CIFAR10.folder, CIFAR10.train_files, CIFAR10.test_files
# md5 of the project's copy (../shared/cifar10) and of the official archive's files (torchvision's list).
PROJECT_MD5 = {"data_batch_1": "bbb76f363417a999763dc51d075cb5cb", "data_batch_2": "1c2815e021ad55cde9cc13a6b6d59abe",
               "data_batch_3": "4e2d9f252efb3f70c772dd414b4bdc60", "data_batch_4": "bf027ff970ebb2b680514b83987cd535",
               "data_batch_5": "2bb926e28105ea4024e51649395063db", "test_batch": "23d1bd17d82bee1341198d11d0305e2b"}
OFFICIAL_MD5 = {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
                "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e"}


class Log:
    def __init__(self, path):
        self.file = open(path, "w")

    def __call__(self, text=""):
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()


def md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_data(root, log):
    """Exactly which files the check reads: path, size, md5 and whose copy that md5 is."""
    directory = dataset_dir(CIFAR10, root).resolve()
    log(f"data: {directory}")
    files = []
    for name in TRAIN_FILES + TEST_FILES:
        path = directory / name
        if not path.is_file():
            files.append({"file": name, "present": False})
            log(f"  {name}: MISSING")
            continue
        digest = md5(path)
        origin = ("the project's copy" if digest == PROJECT_MD5[name] else
                  "the official archive" if digest == OFFICIAL_MD5[name] else "an unknown copy")
        files.append({"file": name, "present": True, "bytes": path.stat().st_size, "md5": digest, "matches": origin})
        log(f"  {name}: {path.stat().st_size:,} bytes, md5 {digest} ({origin})")
    missing = [f["file"] for f in files if not f["present"]]
    if missing:
        raise SystemExit(f"error: {directory} lacks {', '.join(missing)}: carry all of {FOLDER}/ into "
                         f"{root} (or set CIFAR10_ROOT), then run again")
    return files


def write_smoke_data(root, per_file=256, seed=0):
    """Small CIFAR-10 batch files in the real format (class-coloured noise), so --smoke stays fast on a CPU."""
    import pickle

    import numpy as np
    rng = np.random.default_rng(seed)
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    colours = rng.integers(30, 225, size=(10, 3))
    for name in TRAIN_FILES + TEST_FILES:
        labels = rng.integers(0, 10, per_file)
        pixels = colours[labels][:, :, None] + rng.normal(0, 40, (per_file, 3, 1024))
        with open(folder / name, "wb") as f:
            pickle.dump({"data": pixels.clip(0, 255).astype(np.uint8).reshape(per_file, -1),
                         "labels": labels.tolist()}, f)
    return per_file


def config(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        return compose("config", overrides=overrides)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(cfg, images, labels, device, precision, channels_last, compile_model, steps, warmup):
    """Images/s of train.py's training step (forward, loss, backward, optimizer) on real images."""
    torch.manual_seed(0)
    model = build_model(cfg, device=device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(cfg, model, device.type)
    forward = torch.compile(model) if compile_model else model
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=float(cfg.trainer.label_smoothing))
    dtype = torch.bfloat16 if precision == "bf16" else None
    x = images.contiguous(memory_format=memory_format)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = criterion(forward(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    elapsed = time.perf_counter() - started
    return {"images_per_s": steps * len(x) / elapsed, "warmup_s": warm_s, "batch_size": len(x), "steps": steps}


def run_training(overrides, budget_s, log, workdir):
    """train.py recipe=fast as a child process; its lines are echoed (its metrics are read from the
    run's metrics.jsonl afterwards)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    command = [sys.executable, str(ROOT / "train.py"), *overrides]
    log("$ " + " ".join(["python", "train.py", *overrides]))
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in process.stdout:
            line = line.rstrip("\n")
            if "Warning" in line or line.startswith("  warnings.warn") or "version_base" in line:
                continue
            lines.append(line)
            log("  | " + line)
            if time.perf_counter() - started > budget_s:
                log(f"  (stopped: past the {budget_s:.0f} s left in the budget)")
                process.kill()
                break
    finally:
        process.wait()
    return process.returncode, lines, time.perf_counter() - started


def read_epochs(run_dir):
    """Per-epoch rows and the final result from the run's metrics.jsonl (training/tracking.py writes it)."""
    from training.tracking import RECORDS_FILE, read_records
    path = Path(run_dir) / RECORDS_FILE
    if not path.is_file():
        return [], None
    records = read_records(path)
    epochs = [{"epoch": r["epoch"], "train_loss": r["train_loss"], "train_acc": r["train_acc"],
               "val_loss": r.get("val_loss"), "val_acc": r.get("val_acc"), "images_per_s": r["images_per_sec"]}
              for r in records if r["kind"] == "epoch"]
    final = [r for r in records if r["kind"] == "final"]
    test = {"test_loss": final[-1]["test_loss"], "test_acc": final[-1]["test_acc"]} if final else None
    return epochs, test


def read_mlflow_metrics(db_path):
    """Per-epoch metrics and final test accuracy from the check's own sqlite MLflow store."""
    import mlflow
    client = mlflow.tracking.MlflowClient(f"sqlite:///{db_path}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    if not runs:
        return None
    run = runs[0]
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
               for key in ("val_acc", "train_acc", "images_per_sec")}
    return {"run_id": run.info.run_id, "final": run.data.metrics, "history": history}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny settings that run on a CPU in a minute or two")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole check (default 450; smoke 600)")
    parser.add_argument("--max-epochs", type=int, default=30, help="most epochs of recipe=fast (default 30)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile in (b): auto = on when it was faster in (a) (GPU only)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu_check_out"))
    args = parser.parse_args()
    started = time.time()
    budget = args.budget or (600.0 if args.smoke else 450.0)
    deadline = started + budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "gpu_check.log")
    result = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "smoke": args.smoke, "budget_s": budget}

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "none (CPU)"
    result["environment"] = {"gpu": gpu, "torch": torch.__version__, "python": sys.version.split()[0],
                             "cuda": torch.version.cuda, "cpu_count": os.cpu_count()}
    log(f"gpu_check {'(smoke) ' if args.smoke else ''}{result['started']} | GPU: {gpu} | torch {torch.__version__} "
        f"| budget {budget:.0f} s")

    workdir = tempfile.mkdtemp(prefix="gpu_check_")
    data_overrides = []
    if args.smoke:
        root = os.path.join(workdir, "smoke_data")
        per_file = write_smoke_data(root)
        data_overrides = [f"data.train_images={5 * per_file}", f"data.test_images={per_file}", "data.val_size=256"]
        log(f"--smoke: synthetic CIFAR-10-format data ({5 * per_file:,} train / {per_file} test images of "
            f"class-coloured noise), CIFAR10_ROOT is not read")
    else:
        root = os.environ.get("CIFAR10_ROOT", ".gpudata")
    result["data"] = {"root": str(dataset_dir(CIFAR10, root).resolve()), "synthetic": args.smoke,
                      "files": describe_data(root, log)}
    splits = load_dataset(CIFAR10, root, expected_train=len(TRAIN_FILES) * per_file if args.smoke else 50_000,
                          expected_test=per_file if args.smoke else 10_000)
    train_x, train_y = splits["train"]
    log(f"  loaded {len(train_x):,} training and {len(splits['test'][0]):,} test images")

    # (a) throughput of model=final, the paper's model, on real images.
    model_name = "tiny" if args.smoke else "final"
    final = config([f"model={model_name}"])
    report = param_report(final)
    batch = 32 if args.smoke else 512
    steps, warmup = (3, 1) if args.smoke else (30, 5)
    mean, std = channel_stats(train_x[:5000])

    def real_batch(n):
        x = (train_x[:n].float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        return x.to(device), train_y[:n].to(device)

    images, labels = real_batch(batch)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as train.py sets
    variants = [("fp32", "fp32", False, False), ("bf16+channels_last", "bf16", True, False)]
    if device.type == "cuda":
        variants.append(("bf16+channels_last+compile", "bf16", True, True))
    log(f"\n(a) training throughput, model={model_name} ({report.total:,} parameters), {final.optimizer.name}, batch {batch}, "
        f"{steps} timed steps after {warmup} warm-up steps (the compile time is in warm-up)")
    result["throughput"] = {"model": model_name, "params": report.total, "variants": {}}
    for name, precision, channels_last, compiled in variants:
        if time.time() > deadline - budget * 0.5:
            log(f"  {name}: skipped, half the budget is spent")
            continue
        measured = throughput(final, images, labels, device, precision, channels_last, compiled, steps, warmup)
        result["throughput"]["variants"][name] = measured
        log(f"  {name:<28} {measured['images_per_s']:>10,.0f} img/s   (warm-up {measured['warmup_s']:.1f} s)")
    rates = {k: v["images_per_s"] for k, v in result["throughput"]["variants"].items()}
    for name, rate in rates.items():
        if name != "fp32":
            log(f"  {name} / fp32 = {rate / rates['fp32']:.2f}x")

    # (b) recipe=fast through train.py, as many epochs as the rest of the budget holds. The probe runs
    # eager (a second compile here would cost as much as it measures); compiling pays off in (b) only
    # when the speed-up (a) measured on model=final buys more epochs than its compile time costs.
    fast_overrides = ["recipe=fast"] + (["model=tiny", "trainer.batch_size=128", "trainer.ema_decay=0.9"]
                                        + data_overrides if args.smoke else [])
    fast = config(fast_overrides)
    fast_report = param_report(fast)
    probe_precision = "bf16" if device.type == "cuda" else "fp32"  # what train.py will run with below
    probe = throughput(fast, *real_batch(int(fast.trainer.batch_size)), device, probe_precision,
                       device.type == "cuda", False, steps, warmup)
    train_images = (int(fast.data.subset) if fast.data.subset else len(train_x) - int(fast.data.val_size))
    # An epoch = training + validation (no backward: ~1/3 the cost), with 25% slack for augmentation and
    # the EMA; fixed costs: start-up and MLflow (~30 s) and the test pass over 4 TTA views.
    epoch_s = 1.25 * (train_images + int(fast.data.val_size) / 3) / probe["images_per_s"]
    fixed_s = 30 + 4 * len(splits["test"][0]) / 3 / probe["images_per_s"]
    compiled = result["throughput"]["variants"].get("bf16+channels_last+compile")
    speedup = compiled["images_per_s"] / rates["bf16+channels_last"] if compiled else 1.0
    compile_s = compiled["warmup_s"] if compiled else 0.0
    left = deadline - time.time()
    epochs_eager = max(1, min(args.max_epochs, int((left - fixed_s) / epoch_s)))
    epochs_compiled = max(1, min(args.max_epochs, int((left - fixed_s - compile_s) / (epoch_s / speedup))))
    use_compile = {"on": True, "off": False}.get(args.compile, compiled is not None and epochs_compiled > epochs_eager)
    epochs = 2 if args.smoke else (epochs_compiled if use_compile else epochs_eager)
    log(f"\n(b) recipe=fast: {fast.model.name} with stem {fast.stem.name}, {fast_report.total:,} parameters | "
        f"probe {probe['images_per_s']:,.0f} img/s ({probe_precision}, eager) -> ~{epoch_s:.1f} s per epoch; "
        f"compile: x{speedup:.2f} for ~{compile_s:.0f} s -> {'on' if use_compile else 'off'} | {left:.0f} s left: "
        f"{epochs} epochs")
    db = Path(workdir) / "mlflow.db"
    overrides = fast_overrides + [f"trainer.epochs={epochs}", f"trainer.compile={str(use_compile).lower()}",
                                  f"data.root={dataset_dir(CIFAR10, root).resolve()}",
                                  f"mlflow.tracking_uri=sqlite:///{db}",
                                  "mlflow.log_model=false", "trainer.log_every=0", f"hydra.run.dir={workdir}/run"]
    if device.type != "cuda":
        overrides.append("trainer.precision=fp32")  # CPU bf16 autocast is slow without AMX; the smoke checks the path
    rc, lines, wall = run_training(overrides, deadline - time.time() + 30, log, workdir)
    epochs_seen, test = read_epochs(f"{workdir}/run")
    result["recipe_fast"] = {"overrides": overrides, "planned_epochs": epochs, "returncode": rc, "wall_s": wall,
                             "params": fast_report.total, "compile": use_compile, "probe": probe,
                             "epochs": epochs_seen, "test": test}
    if rc == 0:
        result["recipe_fast"]["mlflow"] = read_mlflow_metrics(db)
    log(f"\nsummary: {gpu}")
    for name, rate in rates.items():
        log(f"  throughput model={model_name} {name}: {rate:,.0f} img/s")
    for row in epochs_seen:
        val = f"{100 * row['val_acc']:.2f}%" if row["val_acc"] is not None else "n/a"
        log(f"  recipe=fast epoch {row['epoch']:>2}: val acc {val}, train acc {100 * row['train_acc']:.2f}%, "
            f"{row['images_per_s']:,.0f} img/s")
    if test:
        log(f"  recipe=fast test acc after {len(epochs_seen)} epochs (TTA {fast.trainer.tta}): {100 * test['test_acc']:.2f}%")
    else:
        log(f"  recipe=fast did not finish (train.py exit code {rc})")
    result["total_s"] = time.time() - started
    log(f"  total {result['total_s']:.0f} s")
    with open(out / "gpu_check.json", "w") as f:
        json.dump(result, f, indent=2, default=str)
    return 0 if rc == 0 and test else 1


if __name__ == "__main__":
    sys.exit(main())
