"""The whole GPU evaluation in one run (scripts/gpu_eval.sh runs this; docs/gpu.md).

In order, deciding nothing in between (each step's choices are computed from what the steps before
measured):
  1. the data: every batch file's path, size and md5;
  2. throughput: `python -m benchmarks --gpu --only graphs`, eager fp32 against bf16 + channels_last +
     fused optimizer, eagerly and as a CUDA graph, for model=final (5x5 stem) and recipe=fast's model
     (3x3 stem), batch 512; trials_per_device for the sweep follows from it (choose_trials_per_device);
  3. a real `train.py -m hydra/sweeper=optuna hydra/sweeper/search=family` sweep (Optuna, MLflow, the
     sweeper's device pool with several trials on the GPU at once) at a short fixed schedule with
     recipe=short, within a time slot;
  4. the sweep's best architecture trained with recipe=short on all 50,000 training images for a time
     budget (epochs sized from a measured probe), its weights saved in fp16 and measured as stored;
  5. the paper's final model (model=final) with the same recipe for the same time (its epochs planned from
     the first run's measured epochs);
  6. the summary: summary.json and summary.md (a table), the weights, the MLflow store (with the Optuna
     study) packed, and this log, under --out ($OUT on the GPU machine); summary.json and the weights
     also under --results (results/gpu_eval/ in the repository).
The results (6) are rewritten after every step, and every step runs in a try that records its status, time
and error in summary.json's details.steps, within a deadline taken from --budget less a reserve for stopping
the last child and writing: a step that fails, runs out of time or is cut off by the call's limit still leaves
the steps before it in $OUT.
--smoke runs the same path on a CPU with tiny settings (synthetic CIFAR-format data, tiny schedules).
--preflight (the first device call, once part-1 and its wheels are there) only checks, in seconds, that the
packages import and work and that a training step is captured as a CUDA graph there.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from gpu_data import describe_data, write_smoke_data  # noqa: E402  (scripts/ is this script's folder)
from sweeper.records import INFEASIBLE  # noqa: E402
from training.files import write_atomically, write_text_atomically  # noqa: E402

STUDY = "gpu-eval-family"
PREFLIGHT = "preflight.json"  # the first call's record (kept on the warm machine in --keep): the CUDA-graph decision
# The graph check's bound: the largest relative difference of the per-step losses of 20 steps eager and graphed
# from the same start. Float noise (kernels in another order under capture, bf16 autocast) stays well below it;
# a step that is skipped, repeated or reads a stale value is off by 1e-2 or more within a few steps.
MAX_GRAPH_DIFF = 1e-3
EXPERIMENT = "gpu-eval"
RECIPE = "recipe=short"
# The sweep: the family space within 2 training GFLOP per image (the final model: 1.06; the sweeper's
# constraint gflops_over_budget records a proposal over it as infeasible), so that every trial is short and
# the winner can run many epochs in the final's time; a short fixed schedule.
SWEEP = ["hydra/sweeper=optuna", "hydra/sweeper/search=family", "model=family", RECIPE]
# A device call may run 600 s at most: a budget above this would be cut off by the call's limit.
MAX_BUDGET = 570.0
# A training epoch's seconds from the probe's images/s: epoch_s = EPOCH_FACTOR * n / rate + EPOCH_FIXED_S. The
# probe times the bare step; a real epoch adds the augmentation, the loader and the first epoch's warm-up. On
# the H100 (scripts/results/gpu_check_h100_2026-11-26.log) a 17,540 img/s probe gave epochs of 11,456 img/s on
# average, 1.53x slower; 1.6 leaves a little room. The fixed part is the epoch's checkpoint and MLflow lines.
# The second final run is planned from the first one's measured epochs instead (plan_from_measured).
EPOCH_FACTOR, EPOCH_FIXED_S = 1.6, 0.5
# With the step captured as a CUDA graph the probe is much closer to a real epoch: on the H200 (results/gpu_eval/,
# 2026-12-04) the family winner's epochs ran 1.23x its 139,825 img/s probe and model=final's 1.25x its 52,414
# (the 1.6 above left the first run 100 s of its 178 s slot unused).
EPOCH_FACTOR_GRAPHED = 1.3
# budget: seconds from gpu_eval.sh's start; reserve_s: kept back at the end of it for stopping a step's child
# process at its deadline (SIGINT, then SIGKILL after kill_grace_s) and writing the results; throughput_share:
# the throughput step's deadline, as a share of the budget; min_step_s: a step with less time left than this is
# skipped (and says so) rather than started.
FULL = dict(budget=540.0, sweep_share=0.32, sweep_epochs=3, sweep_trials=16, probe_steps=12, probe_rounds=2,
            final_overhead_s=35.0, reserve_s=25.0, kill_grace_s=15.0, throughput_share=0.2, min_step_s=30.0,
            sweep_overrides=["budget.max_gflops=2"])
SMOKE = dict(sweep_epochs=1, sweep_trials=2, probe_steps=2, probe_rounds=1, min_step_s=5.0,
             overrides=["trainer.precision=fp32", "trainer.batch_size=32", "data.subset=64", "trainer.tta=flip",
                        "trainer.eval_batch_size=256"],
             sweep_overrides=["budget.max_gflops=0.3", "data.val_size=64"], final_epochs=1)


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a call's time limit, or anyone stopping the run): handled like Ctrl-C, so the step that was
    running is recorded and the summary written before the process ends."""


def _on_sigterm(signum, frame):
    raise Interrupted("SIGTERM")


class Log:
    def __init__(self, path):
        self.file = open(path, "w")

    def __call__(self, text=""):
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()


def config(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        return compose("config", overrides=list(overrides))


def run_logged(command, log, deadline=None, env=None, grace=15.0):
    """Run a child process (its own process group), echo its lines; at `deadline` interrupt it like Ctrl-C
    (the sweeper closes its runs as KILLED) and kill it `grace` s later. Returns (exit code, seconds, stopped).
    If this process is interrupted meanwhile, the child's group is killed before the interruption goes on (it
    runs in its own session, so nothing else would stop it)."""
    log("$ " + " ".join(str(c) for c in command))
    started = time.time()
    # SIGINT is the deadline's Ctrl-C: a process started in the background by a shell inherits it ignored (and
    # Python then installs no KeyboardInterrupt), so the child gets it back (measured here: ignored, the
    # sweep ran on to its SIGKILL 15 s later).
    process = subprocess.Popen([str(c) for c in command], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stopped = False

    def watchdog():
        nonlocal stopped
        while process.poll() is None:
            if deadline is not None and time.time() > deadline and not stopped:
                stopped = True
                os.killpg(process.pid, signal.SIGINT)
                kill_at = time.time() + grace
                while process.poll() is None and time.time() < kill_at:
                    time.sleep(0.5)
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
            time.sleep(0.5)

    import threading
    threading.Thread(target=watchdog, daemon=True).start()
    try:
        for line in process.stdout:
            line = line.rstrip("\n")
            if "Warning" in line or line.lstrip().startswith("warnings.warn") or "version_base" in line:
                continue
            log("  | " + line)
        process.wait()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if stopped:
        log(f"  (stopped at the end of its time slot, after {time.time() - started:.0f} s)")
    return process.returncode, time.time() - started, stopped


def choose_trials_per_device(rows, graphs=None):
    """Trials at once on the one GPU, from the throughput step. With the step captured as a CUDA graph the GPU is
    busy while a trial trains, so two trials are enough to keep it fed through each other's start-up,
    validation and logging; if the graph did not win (eager, launch-bound steps leave the GPU idle), as many
    trials as an eager step leaves the GPU idle for, between 2 and 4."""
    graphed = [r for r in rows if r["variant"].endswith("+graphs")]
    if graphs is None:  # not decided elsewhere: from the rows
        graphs = bool(graphed) and all(str(r.get("cuda_graphs", "")).startswith("on") for r in graphed)
    if graphs:
        return 2, "CUDA graphs on: the GPU is busy during a trial's steps"
    eager = {r["model"] + r["stem"]: r["images_per_sec"] for r in rows if r["variant"] == "bf16+channels_last+fused"}
    fp32 = {r["model"] + r["stem"]: r["images_per_sec"] for r in rows if r["variant"] == "fp32"}
    ratios = [eager[k] / fp32[k] for k in eager if k in fp32 and fp32[k]]
    k = max(2, min(4, round(2 / min(ratios)) if ratios else 3))
    return k, "CUDA graphs not on: eager steps leave the GPU idle, so more trials share it"


def best_trial(storage, study_name):
    """(params, value, number, counts) of the study's best trained trial; params None if none trained."""
    import optuna
    try:
        trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    except KeyError:  # the sweep stopped before it made its study
        return None, None, None, {"none": "the sweep made no study"}
    except Exception as err:  # noqa: BLE001 - a store the stopped sweep left half-written: no best, say why
        return None, None, None, {"unreadable": f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}
    counts = {}
    for t in trials:
        kind = "infeasible" if t.user_attrs.get(INFEASIBLE) else t.state.name.lower()
        counts[kind] = counts.get(kind, 0) + 1
    trained = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None
               and not t.user_attrs.get(INFEASIBLE)]
    if not trained:
        return None, None, None, counts
    best = max(trained, key=lambda t: t.value)
    return dict(best.params), best.value, best.number, counts


def probe_images_per_sec(overrides, images, labels, device, steps, rounds):
    """The training step's images/s for this config (its precision, memory format, CUDA graphs), measured
    like the benchmark measures it; the model and its memory are released afterwards."""
    from benchmarks.train_step import bench_gpu_switches
    cfg = config(overrides)
    trainer = cfg.trainer
    channels_last = device.type == "cuda" if trainer.channels_last == "auto" else bool(trainer.channels_last)
    variant = {"as trained": (str(trainer.precision), channels_last, True, bool(trainer.compile),
                              trainer.cuda_graphs if device.type == "cuda" else False)}
    batch = int(trainer.batch_size)
    rate = bench_gpu_switches(cfg, images[:batch * steps], labels[:batch * steps], batch, steps, rounds,
                              variants=variant, device=str(device))[0]["images_per_sec"]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rate


def read_run(run_dir):
    from training.tracking import RECORDS_FILE, read_records
    path = Path(run_dir) / RECORDS_FILE
    if not path.is_file():
        return [], None
    records = read_records(path)
    final = [r for r in records if r["kind"] == "final"]
    return [r for r in records if r["kind"] == "epoch"], (final[-1] if final else None)


def describe(params):
    """The architecture in the paper's notation: [[Block,blocks,channels,dropout], ...] and the stem."""
    if not params:
        return "model=family as given"
    layers = [f"[{params[f'model.layers.layer{i}.block'].capitalize()},{params[f'model.layers.layer{i}.blocks']},"
              f"{params[f'model.layers.layer{i}.channels']},{params[f'model.layers.layer{i}.dropout']}]"
              for i in range(1, int(params["model.num_layers"]) + 1)]
    return f"[{','.join(layers)}], {params['stem']} stem"


def preflight(log, device, out, keep, smoke=False, deadline=None):
    """The first call: (a) the installed packages import and work (an MLflow sqlite store with a run, an Optuna
    sqlite study with a trial, Hydra composing the family and the recipe): only this can fail the call (exit 1,
    an exception); (b) on a GPU, 20 training steps of model=final with the recipe, eager and as a CUDA graph from
    the same start (training.graphs.compare_with_eager), both loss curves and their largest relative difference;
    (c) the throughput benchmark (random images: it needs no data), its rows written as each model finishes;
    (d) the decision on CUDA graphs for every later run, made once here: on when the graph was captured,
    trained as the eager step did (< MAX_GRAPH_DIFF) and was faster in (c). (b) to (d) are recorded in
    keep/preflight.json (kept on the warm machine for the last call; a copy in out), whatever happens in them."""
    import mlflow
    import optuna
    from models import param_report
    folder = Path(tempfile.mkdtemp(prefix="gpu_eval_preflight_"))
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    with mlflow.start_run(experiment_id=mlflow.create_experiment("preflight", artifact_location=str(folder / "a"))):
        mlflow.log_metric("x", 1.0)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{folder / 'optuna.db'}", study_name="preflight")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    family = param_report(config(["model=family", RECIPE]))
    log(f"preflight: MLflow sqlite run ok, Optuna sqlite study ok, model=family {RECIPE}: {family.total:,} parameters")
    record = {"cuda_graphs": False, "why": "no GPU here", "check": None, "throughput": []}

    def save():
        for place in {keep, out}:
            place.mkdir(parents=True, exist_ok=True)
            write_text_atomically(place / PREFLIGHT, json.dumps(record, indent=1) + "\n")

    save()
    if device.type == "cuda":
        try:
            from training.graphs import compare_with_eager
            check = compare_with_eager(config(["model=final", RECIPE]), device, steps=20, batch_size=512)
            record["check"] = check
            log("preflight: 20 steps of model=final, dropout off, from the same start (loss per step):")
            log("  eager   " + " ".join(f"{v:.4f}" for v in check["eager"]))
            log("  graphed " + " ".join(f"{v:.4f}" for v in check["graphed"]))
            log(f"  largest relative difference {check['max_rel_diff']:.2e} | cuda graphs {check['cuda_graphs']}")
            if not str(check["cuda_graphs"]).startswith("on"):
                record["why"] = f"the capture did not hold: {check['cuda_graphs']}"
            elif check["max_rel_diff"] >= MAX_GRAPH_DIFF:
                record["why"] = (f"the graphed step trained differently from the eager one (largest relative loss "
                                 f"difference {check['max_rel_diff']:.2e} >= {MAX_GRAPH_DIFF})")
            else:
                record.update(cuda_graphs=True, why="captured, and trains as the eager step does")
        except Exception as err:  # noqa: BLE001 - recorded: the runs then train eagerly
            import traceback
            record["why"] = f"the check raised {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            log("".join(traceback.format_exception(err)).rstrip())
        save()
        log(f"preflight: graph check: {record['why']}")
    bench_json = keep / "bench.json"
    bench_json.unlink(missing_ok=True)
    bench = [sys.executable, "-m", "benchmarks", "--only", "graphs", "--out", str(bench_json)]
    bench += ["--gpu"] if device.type == "cuda" else ["--quick"]
    rc, seconds, stopped = run_logged(bench, log, deadline=deadline, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    rows = json.loads(bench_json.read_text()).get("gpu_graphs", []) if bench_json.is_file() else []
    record["throughput"] = rows
    record["throughput_status"] = ("ok" if rc == 0 and not stopped else
                                   f"stopped at its deadline after {seconds:.0f} s" if stopped else f"exited with {rc}")
    if bench_json.is_file():
        shutil.copy(bench_json, out / "bench.json")
    if record["cuda_graphs"]:
        graphed = [r for r in rows if r["variant"].endswith("+graphs")]
        faster = [r for r in graphed if str(r.get("cuda_graphs", "")).startswith("on")
                  and r["images_per_sec"] > eager_rate(rows, r)]
        if graphed and not faster:
            record.update(cuda_graphs=False, why="captured and right, but not faster than the eager step: "
                                                 + "; ".join(str(r.get("cuda_graphs")) for r in graphed))
        elif graphed:
            record["why"] += ", and faster: " + "; ".join(
                f"{r['model']} {r['stem']} {r['images_per_sec']:,.0f} vs {eager_rate(rows, r):,.0f} img/s eager"
                for r in faster)
    save()
    log(f"preflight: throughput {record['throughput_status']}, {len(rows)} rows")
    log(f"preflight: decision for every run of the last call: trainer.cuda_graphs={str(record['cuda_graphs']).lower()}"
        f" ({record['why']})")
    return 0


def eager_rate(rows, row):
    """The images/s of the same model's eager row with the same switches (bf16, channels_last, fused)."""
    same = [r["images_per_sec"] for r in rows if r["variant"] == "bf16+channels_last+fused"
            and r["model"] == row["model"] and r["stem"] == row["stem"]]
    return same[0] if same else 0.0


class Results:
    """summary.json, summary.md, the weights and the packed MLflow store, rewritten after every step: whatever
    stops the run later (a step's error, its deadline, the call's time limit) leaves the steps so far in $OUT."""

    def __init__(self, summary, out, results, store, log):
        self.summary, self.out, self.results, self.store, self.log = summary, out, results, store, log

    def write(self):
        summary = self.summary
        summary["total_seconds"] = round(time.time() - summary["started_at"], 1)
        result = {name: {key: run.get(key) for key in ("overrides", "params", "epochs", "train_seconds",
                                                       "images_per_sec", "test_acc", "weights")}
                  for name, run in summary.get("runs", {}).items()}
        document = {**result, "details": summary}
        for folder in {self.out, self.results}:
            for name, text in (("summary.json", json.dumps(document, indent=1, default=str)), ("summary.md", table(summary))):
                write_text_atomically(folder / name, text + "\n")  # a kill mid-write leaves the last whole file
        for name in summary.get("runs", {}):
            weights = self.results / f"{name}.pt"
            if weights.is_file() and self.results != self.out:
                shutil.copy(weights, self.out / weights.name)
        def pack(f):
            with tarfile.open(fileobj=f, mode="w:gz") as tar:
                tar.add(self.store, arcname="store")
        write_atomically(self.out / "mlflow_store.tar.gz", pack)

    def step(self, name, body):
        """Run body(record) as step `name`; record its status ("ok", or what body set: "skipped: ...",
        "stopped at its deadline"), its seconds and any error (the traceback goes to the log); write the results
        whatever happened. Returns body's value (None when it raised)."""
        record = self.summary["steps"][name] = {"status": "running"}
        started = time.time()
        try:
            value = body(record)
            record["status"] = record.get("status", "running").replace("running", "ok")
            return value
        except BaseException as err:  # noqa: BLE001 - recorded (SystemExit too: a step's one-line error, e.g.
            # the data's, is a failure of that step); an interruption still ends the run after the write
            import traceback
            record["status"] = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            record["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            self.log(f"  !! step {name} {record['status']}: {record['error']}")
            self.log("".join(traceback.format_exception(err)).rstrip())
            if device_is_cuda():
                torch.cuda.empty_cache()  # an out-of-memory error in this process must not starve the next step
            if isinstance(err, KeyboardInterrupt):
                raise
            return None
        finally:
            record["seconds"] = round(time.time() - started, 1)
            try:
                self.write()
            except Exception as err:  # noqa: BLE001 - a failed write must not hide the step's own outcome
                self.log(f"  !! writing the results failed: {type(err).__name__}: {err}")


def evaluate_checkpoint(path, weights, overrides, images, log, deadline=None, env=None):
    """A run stopped before its test pass: the weights it would have kept (the EMA's when there is one) from its
    last epoch checkpoint, written as trainer.save_weights writes them (fp16, with the training split's
    normalisation: all the training images here), then `train.py task=evaluate` on them. Returns what the summary
    records: test_acc, marked cut, with the epochs the checkpoint holds (test_acc None if that failed too)."""
    from data.build import channel_stats
    from training.weights import save_state
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("ema") is not None:
        weights_state = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
    else:
        weights_state = state["model"]
    mean, std = channel_stats(images)
    save_state(weights_state, weights, normalize_mean=[float(v) for v in mean], normalize_std=[float(v) for v in std])
    log(f"  cut at its deadline after {state['epoch']} epochs: evaluating that epoch's checkpoint ({path})")
    command = [sys.executable, "train.py", "task=evaluate", f"evaluate.weights={weights}", *overrides]
    result = {"cut": True, "epochs": int(state["epoch"]), "test_acc": None, "weights": None}
    try:
        timeout = None if deadline is None else max(5.0, deadline - time.time())
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log("  the evaluation ran out of time")
        return result
    lines = [line for line in done.stdout.splitlines() if line.startswith("test_acc=")]
    log("  | " + "\n  | ".join((done.stdout + done.stderr).strip().splitlines()[-3:]))
    if done.returncode == 0 and lines:
        result.update(test_acc=round(float(lines[-1].split("=")[1]), 4), weights=str(weights))
    return result


def device_is_cuda():
    return torch.cuda.is_available()


def plan_epochs(train_s, n_train, rate, plan):
    """(epochs, seconds per epoch) that fit train_s, from the probe's images/s and the plan's factor."""
    epoch_s = plan["factor"] * n_train / rate + plan["fixed_s"]
    return max(1, min(200, int(train_s / epoch_s))), epoch_s


def plan_from_measured(epoch_times, n_train, rate):
    """The plan for the next run from one that ran: its real seconds per epoch against its probe's n/rate (the
    warm-up and capture in its first epoch included, as they will be in the next run's)."""
    measured = sum(epoch_times) / len(epoch_times)
    return {"factor": round(measured / (n_train / rate), 3), "fixed_s": 0.0,
            "from": f"the first run: {measured:.2f} s per epoch at a probe of {rate:,.0f} img/s"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the same path on a CPU with tiny settings")
    parser.add_argument("--preflight", action="store_true",
                        help="only check the packages (and on a GPU the CUDA-graph capture), in seconds")
    parser.add_argument("--budget", type=float,
                        help=f"seconds for the whole run from gpu_eval.sh's start (default 540, at most {MAX_BUDGET:.0f}): "
                             "on the last device call, the device tool's budget_left_s less a margin (docs/gpu.md)")
    parser.add_argument("--data", default=os.environ.get("CIFAR10_ROOT", str(ROOT / ".gpu_eval" / "data")),
                        help="the folder holding cifar-10-batches-py/ (default: what gpu_eval.sh unpacked)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu_eval_out"))
    parser.add_argument("--keep", help="where the first call leaves its record for the last one (default .gpu_eval, "
                                       "which stays on a warm machine between calls; --smoke: <out>/keep)")
    parser.add_argument("--results", help="where summary.json and the weights go (default results/gpu_eval; "
                                          "--smoke: <out>/results)")
    args = parser.parse_args(argv)
    settings = {**FULL, **(SMOKE if args.smoke else {})}
    started = float(os.environ.get("GPU_EVAL_STARTED") or time.time())
    budget = min(args.budget or settings["budget"], MAX_BUDGET)
    # Every step ends by `end`: what is left after it is for stopping the last child and writing the results.
    end = started + budget - settings["reserve_s"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Path(args.results) if args.results else (out / "results" if args.smoke else ROOT / "results" / "gpu_eval")
    results.mkdir(parents=True, exist_ok=True)
    log = Log(out / "gpu_eval.log")
    work = Path(tempfile.mkdtemp(prefix="gpu_eval_"))
    store = work / "store"
    store.mkdir()
    tracking = f"sqlite:///{store / 'mlflow.db'}"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    summary = {"started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)) + " UTC", "started_at": started,
               "smoke": args.smoke, "budget_s": budget, "complete": False, "steps": {}, "runs": {}}
    if args.budget and args.budget > MAX_BUDGET:
        summary["budget_note"] = f"--budget {args.budget:.0f} lowered to {MAX_BUDGET:.0f}: a device call runs 600 s at most"
    signal.signal(signal.SIGTERM, _on_sigterm)

    # 0. where this runs, with which packages (the real ones, installed from the carried wheels)
    import alembic
    import hydra
    import mlflow
    import optuna
    import sqlalchemy
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "none (CPU)"
    summary["environment"] = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
                              "python": sys.version.split()[0], "mlflow": mlflow.__version__,
                              "optuna": optuna.__version__, "hydra": hydra.__version__,
                              "sqlalchemy": sqlalchemy.__version__, "alembic": alembic.__version__}
    log(f"gpu_eval {'(smoke) ' if args.smoke else ''}{summary['started']} | {gpu} | budget {budget:.0f} s"
        f" (steps end by {end - started:.0f} s) | "
        + " ".join(f"{k} {v}" for k, v in summary["environment"].items() if k not in ("gpu",)))
    keep = Path(args.keep) if args.keep else (out / "keep" if args.smoke else ROOT / ".gpu_eval")
    if args.preflight:
        return preflight(log, device, out, keep, smoke=args.smoke, deadline=end)
    saved = Results(summary, out, results, store, log)
    saved.write()
    ctx = {}  # what the steps hand on to the later ones

    def time_left(record):
        """Seconds to `end`; None (and the step recorded as skipped) when too few are left to start it."""
        left = end - time.time()
        if left < settings["min_step_s"]:
            record["status"] = f"skipped: {max(0.0, left):.0f} s left before the deadline"
            log(f"  -> skipped: {max(0.0, left):.0f} s left")
            return None
        return left

    # 1. the data
    def data_step(record):
        if args.smoke:
            root = work / "smoke_data"
            per_file = write_smoke_data(root)
            ctx["data_overrides"] = [f"data.train_images={5 * per_file}", f"data.test_images={per_file}"]
            log(f"--smoke: synthetic CIFAR-10-format data ({5 * per_file:,} train / {per_file} test images)")
        else:
            root, per_file, ctx["data_overrides"] = Path(args.data), 10_000, []
        summary["data"] = {"root": str(Path(root).resolve()), "files": describe_data(root, log)}
        from data import load_dataset
        from data.datasets import CIFAR10
        splits = load_dataset(CIFAR10, root, expected_train=5 * per_file, expected_test=per_file)
        ctx["root"] = root
        ctx["images"], ctx["labels"] = splits["train"]

    saved.step("data", data_step)
    if "images" not in ctx:  # nothing after this can run without the data; the summary says why
        log(f"the data step failed: {summary['steps']['data'].get('error')}; summary written to {out}")
        return 1
    root, images, labels = ctx["root"], ctx["images"], ctx["labels"]
    data_root = f"data.root={Path(root).resolve()}"
    common = [*ctx["data_overrides"], *settings.get("overrides", [])]  # what every run here adds (smoke: tiny settings)
    env = dict(os.environ, PYTHONUNBUFFERED="1", CIFAR10_ROOT=str(Path(root).resolve()))
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow.set_tracking_uri(tracking)
    mlflow.create_experiment(EXPERIMENT, artifact_location=str(store / "artifacts"))
    tracked = [f"mlflow.tracking_uri={tracking}", f"mlflow.experiment={EXPERIMENT}", "mlflow.log_model=false",
               "trainer.log_every=0"]
    grace = settings["kill_grace_s"]

    # 2. throughput: eager vs CUDA graphs, both stems
    def throughput_step(record):
        log("\n(1) training throughput: eager fp32 against bf16 + channels_last + fused optimizer, eagerly and as a "
            "CUDA graph (warm-up and capture timed apart)")
        if time_left(record) is None:
            return []
        bench_json = out / "bench.json"
        bench = [sys.executable, "-m", "benchmarks", "--only", "graphs", "--root", str(root), "--out", str(bench_json)]
        bench += ["--gpu"] if device.type == "cuda" else []
        bench += ["--quick"] if args.smoke else []
        deadline = min(end, time.time() + settings["throughput_share"] * budget)
        rc, seconds, stopped = run_logged(bench, log, deadline=deadline, env=env, grace=grace)
        record["exit_code"] = rc
        if stopped:
            record["status"] = "stopped at its deadline"
        elif rc != 0:
            record.update(status="failed", error=f"python -m benchmarks exited with {rc} (its lines are in the log)")
        return json.loads(bench_json.read_text()).get("gpu_graphs", []) if rc == 0 and bench_json.is_file() else []

    first_call = json.loads((keep / PREFLIGHT).read_text()) if (keep / PREFLIGHT).is_file() else None
    if first_call is not None and first_call.get("throughput"):  # measured by the first call: not again
        rows = first_call["throughput"]
        summary["steps"]["throughput"] = {"status": "ok", "seconds": 0.0, "note": "measured by the first call (--preflight)"}
        log(f"\n(1) training throughput: {len(rows)} rows measured by the first call ({keep / PREFLIGHT})")
    else:
        rows = saved.step("throughput", throughput_step) or []
    # CUDA graphs for every run here, decided once: by the first call's check when there was one (captured, trains
    # as the eager step does, faster), else from this call's throughput rows (captured and faster); never per run
    # with `auto`, whose timing is noisy when two trials share the GPU.
    if first_call is not None and device.type == "cuda":
        graphs, graphs_why = bool(first_call["cuda_graphs"]), f"the first call: {first_call['why']}"
    elif rows and device.type == "cuda":
        graphed = [r for r in rows if r["variant"].endswith("+graphs")]
        graphs = bool(graphed) and all(str(r.get("cuda_graphs", "")).startswith("on") for r in graphed)
        graphs_why = "this call's throughput rows (no first-call check): " + "; ".join(str(r.get("cuda_graphs")) for r in graphed)
    else:
        graphs, graphs_why = False, "no GPU" if device.type != "cuda" else "nothing measured: eager, the safe choice"
    common.append(f"trainer.cuda_graphs={str(graphs).lower()}")
    summary["cuda_graphs"] = {"on": graphs, "why": graphs_why,
                              "check": (first_call or {}).get("check")}
    log(f"  -> trainer.cuda_graphs={str(graphs).lower()} for every run ({graphs_why})")
    summary["throughput"] = [{k: v for k, v in r.items() if k != "rounds"} for r in rows]
    k, why = choose_trials_per_device(rows, graphs) if rows else (2, "no throughput rows: 2 trials at once")
    summary["sweep"] = {"trials_per_device": k, "why": why}
    log(f"  -> trials_per_device={k} ({why})")

    # 3. the sweep, within its slot
    def sweep_step(record):
        log(f"\n(2) the family sweep: {settings['sweep_trials']} trials of {settings['sweep_epochs']} epochs, {k} at once")
        left = time_left(record)
        if left is None:
            return None
        slot = left * settings["sweep_share"] if not args.smoke else left
        sweep = [sys.executable, "train.py", "-m", *SWEEP, *settings.get("sweep_overrides", []), *common, data_root,
                 *tracked,
                 f"trainer.epochs={settings['sweep_epochs']}", f"hydra.sweeper.n_trials={settings['sweep_trials']}",
                 "hydra.sweeper.devices=[0]", f"hydra.sweeper.trials_per_device={k}",
                 f"hydra.sweeper.storage=sqlite:///{store / 'optuna.db'}", f"hydra.sweeper.study_name={STUDY}",
                 f"hydra.sweep.dir={work / 'sweep'}"]
        log(f"  within {slot:.0f} s")
        rc, seconds, stopped = run_logged(sweep, log, deadline=time.time() + slot, env=env, grace=grace)
        params, value, number, counts = best_trial(f"sqlite:///{store / 'optuna.db'}", STUDY)
        summary["sweep"].update(command=" ".join(["python train.py", *sweep[2:]]), seconds=round(seconds, 1),
                                stopped_at_slot_end=stopped, exit_code=rc, trials=counts,
                                epochs=settings["sweep_epochs"], best_trial=number, best_val_acc=value,
                                best_params=params)
        log(f"  -> best trial #{number}: val acc {value} | {describe(params)} | trials: {counts}")
        if stopped:  # the slot's end is the plan, not a failure (trials cut short are KILLED; those done count)
            record["stopped_at_slot_end"] = True
        elif rc != 0:
            record.update(status="failed", error=f"the sweep exited with {rc} (its lines are in the log)")
        return params

    params = saved.step("sweep", sweep_step)

    # 4 and 5. the best architecture and the paper's final model, the same recipe, the same time
    finals = {"best": ["model=family", RECIPE] + [f"{key}={val}" for key, val in (params or {}).items()],
              "paper_final": ["model=final", RECIPE]}
    eval_overrides = ["data.val_size=0", *common]  # all 50,000 training images
    log(f"\n(3) the best architecture and the paper's final model with {RECIPE}, the same training time each")
    plan = ({"factor": EPOCH_FACTOR_GRAPHED, "fixed_s": EPOCH_FIXED_S,
             "from": "the probe, times the H200 run's probe-to-epoch ratio with CUDA graphs"} if graphs else
            {"factor": EPOCH_FACTOR, "fixed_s": EPOCH_FIXED_S,
             "from": "the probe, times the H100 log's probe-to-epoch ratio"})
    timing = {"train_s": None, "overhead_s": settings["final_overhead_s"]}
    from models import param_report

    def final_step(name, overrides, runs_left):
        def body(record):
            nonlocal plan
            full = [*overrides, *eval_overrides]
            left = time_left(record)
            if left is None:
                return
            share = left / runs_left  # this run's slot: start-up, training, test pass, weights
            train_s = share - timing["overhead_s"]
            if timing["train_s"] is not None:  # the second run: the first one's time if it still fits
                train_s = min(train_s, timing["train_s"])
            if train_s < settings["min_step_s"] and not args.smoke:
                record["status"] = f"skipped: {train_s:.0f} s of training would be left"
                log(f"  {name}: skipped, {train_s:.0f} s of training left")
                return
            cfg = config([*full, data_root])
            n_train = len(images) if cfg.data.subset is None else int(cfg.data.subset)
            run = summary["runs"][name] = {
                "overrides": full, "architecture": describe(params) if name == "best" else "model=final (Table 1 row 3)",
                "params": param_report(cfg).total, "epochs": 0, "train_seconds": None, "images_per_sec": None,
                "test_acc": None, "weights": None, "planned_train_seconds": round(train_s, 1)}
            probe_started = time.time()
            if args.smoke:
                epochs, rate, epoch_s = settings["final_epochs"], None, None
            else:
                rate = probe_images_per_sec([*full, data_root], images, labels, device, settings["probe_steps"],
                                            settings["probe_rounds"])
                epochs, epoch_s = plan_epochs(train_s, n_train, rate, plan)
                run.update(probe_images_per_sec=rate, planned_epoch_s=round(epoch_s, 2), planned_from=plan["from"])
                log(f"  {name}: probe {rate:,.0f} img/s -> ~{epoch_s:.1f} s per epoch ({plan['from']}) -> "
                    f"{epochs} epochs in ~{train_s:.0f} s")
            probe_ended = time.time()
            # The run's hard stop: its slot with room to overrun by half, but never into the next run's minimum.
            deadline = min(end - (runs_left - 1) * (timing["overhead_s"] + settings["min_step_s"]),
                           time.time() + 1.5 * share)
            weights = results / f"{name}.pt"
            weights.unlink(missing_ok=True)  # a file from an earlier run must not pass for this run's
            run_dir = work / "runs" / name
            checkpoint = run_dir / "checkpoint"  # kept by a run that is stopped: its last epoch is evaluated then
            command = [sys.executable, "train.py", *full, data_root, *tracked, f"trainer.epochs={epochs}",
                       f"trainer.save_weights={weights}", f"mlflow.run_name=gpu-eval-{name}", f"hydra.run.dir={run_dir}",
                       f"trainer.checkpoint_dir={checkpoint}"]
            saved.write()
            rc, seconds, stopped = run_logged(command, log, deadline=deadline, env=env, grace=grace)
            epochs_seen, final = read_run(run_dir)
            # images/s over the epochs (no validation split here, so an epoch's time is its training);
            # train_seconds: the wall time from the first step to the last epoch's checkpoint, test pass excluded
            trained = sum(r["images_per_sec"] * r["epoch_time"] for r in epochs_seen)
            train_time = sum(r["epoch_time"] for r in epochs_seen)
            weights_path = str(weights.relative_to(ROOT)) if weights.is_relative_to(ROOT) else str(weights)
            run.update({
                "epochs": len(epochs_seen), "planned_epochs": epochs,
                "train_seconds": round(final["train_time"] - final["test_time"], 1) if final else None,
                "images_per_sec": round(trained / train_time, 1) if train_time else None,
                "test_acc": round(final["stored_test_acc"], 4) if final else None,
                "test_acc_in_training": round(final["test_acc"], 4) if final else None,
                "weights": weights_path if weights.is_file() else None,
                "weights_bytes": final.get("weights_bytes") if final else None,
                "exit_code": rc, "wall_seconds": round(seconds, 1), "stopped_at_deadline": stopped})
            if final is None and (checkpoint / "last.pt").is_file():  # cut before its test pass: its last epoch's
                run.update(evaluate_checkpoint(checkpoint / "last.pt", weights, [*full, data_root], images, log,
                                               deadline=end, env=env))
                if run.get("weights"):
                    run["weights"] = str(weights.relative_to(ROOT)) if weights.is_relative_to(ROOT) else str(weights)
            log(f"  -> {name}: " + json.dumps({k: v for k, v in run.items() if k != "overrides"}))
            if timing["train_s"] is None:
                timing["train_s"] = train_s
            if final:  # the next run is planned from this one's real epochs and probe, start-up, test and save time
                timing["overhead_s"] = max(10.0, seconds - run["train_seconds"] + (probe_ended - probe_started))
            if epochs_seen and rate:
                plan = plan_from_measured([r["epoch_time"] for r in epochs_seen], n_train, rate)
            if stopped:
                record.update(status="stopped at its deadline")
            elif rc != 0 or final is None:
                record.update(status="failed", error=f"train.py exited with {rc} (its lines are in the log)")
        return body

    for i, (name, overrides) in enumerate(finals.items()):
        saved.step(name, final_step(name, overrides, runs_left=len(finals) - i))

    # 6. the summary, the weights and the store (written after every step; once more, complete)
    summary["complete"] = all(step["status"] == "ok" for step in summary["steps"].values())
    saved.write()
    log("\n" + table(summary))
    log(f"total {summary['total_seconds']:.0f} s; in {out}: " + ", ".join(sorted(p.name for p in out.iterdir()
                                                                               if p.is_file())))
    ok = summary["complete"] and all(run["test_acc"] is not None for run in summary["runs"].values())
    return 0 if ok else 1


def table(summary):
    lines = ["| run | architecture | parameters | epochs | training time | images/s | test acc (stored fp16 weights) |",
             "|---|---|---|---|---|---|---|"]
    for name, run in summary.get("runs", {}).items():
        acc = f"{100 * run['test_acc']:.2f}%" if run.get("test_acc") is not None else "did not finish"
        seconds = f"{run['train_seconds']:.0f} s" if run.get("train_seconds") is not None else "-"
        rate = f"{run['images_per_sec']:,.0f}" if run.get("images_per_sec") else "-"
        lines.append(f"| `{name}` | {run['architecture']} | {run['params']:,} | {run['epochs']} | {seconds} | {rate} | "
                     f"**{acc}** |")
    lines += ["", "| model | stem | variant | images/s | vs fp32 | warm-up s | capture s | CUDA graphs |",
              "|---|---|---|---|---|---|---|---|"]
    for r in summary.get("throughput", []):
        lines.append(f"| {r['model']} | {r['stem']} | {r['variant']} | {r['images_per_sec']:,.0f} | "
                     f"{r['speedup_vs_fp32']} | {r['warmup_s']} | {r['capture_s']} | {r['cuda_graphs']} |")
    sweep = summary.get("sweep", {})
    environment = summary.get("environment", {})
    ran = (f"sweep: {sweep.get('trials')} in {sweep.get('seconds')} s, {sweep.get('trials_per_device')} at once, "
           f"{sweep.get('epochs')} epochs each; best trial #{sweep.get('best_trial')} (val acc {sweep.get('best_val_acc')})"
           if "seconds" in sweep else "sweep: did not run")
    lines += ["", f"{ran}; {environment.get('gpu')}, torch {environment.get('torch')}"]
    steps = summary.get("steps", {})
    lines += ["", "steps: " + "; ".join(
        f"{name} {step['status']}" + (f" ({step['seconds']:.0f} s)" if "seconds" in step else "")
        + (f": {step['error']}" if step.get("error") else "") for name, step in steps.items())
        + ("" if summary.get("complete") else " | NOT COMPLETE")]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
