"""Train one ResNet on CIFAR-10, or run a sweep of them with `-m`.

    python train.py                                  # the paper's final model, AdamW
    python train.py model=tiny trainer.epochs=1      # a quick run on the CPU
    python train.py model=final dry_run=true         # parameter table and budget check only
    python train.py model=final task=lr_range_test   # LR range test: plot, CSV, suggested cyclic bounds
    python train.py -m hydra/sweeper=optuna          # Optuna search (hydra/sweeper=constrained_optuna, sweeper/)

The parameter budget and every other config check run before data is loaded or an MLflow
run is opened. The job returns the final validation accuracy, which sweeps maximise.
"""
import gc

if __name__ == "__main__":
    gc.disable()  # while the imports run: __main__ below says why
import os  # noqa: E402
import sys  # noqa: E402

import hydra  # noqa: E402

from training import app  # noqa: E402

# Targets Hydra 1.4 may instantiate from config (the sweeper's samplers and constraints, the launchers).
EXECUTION_WHITELIST = [
    "training.gate.*",  # the sweeper's constraints and preflight (conf/hydra/sweeper/optuna.yaml)
    "hydra_plugins.hydra_optuna_sweeper.*",
    "hydra_plugins.hydra_joblib_launcher.*",
    "hydra_plugins.hydra_submitit_launcher.*",  # SLURM, when installed (README: across machines)
    "optuna.samplers.*",
]


@hydra.main(config_path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf"), config_name="config",
            execution_whitelist=EXECUTION_WHITELIST)
def main(cfg):
    return app.main(cfg)


if __name__ == "__main__":
    # Run this file's importable copy rather than __main__, so that parallel launchers (joblib)
    # pickle the task function by reference instead of by value.
    import train

    # What the imports made (torch's, Hydra's objects) lives as long as the process. Collecting while they
    # ran traversed it again and again: `train.py model=final dry_run=true` took 2.07 s with it, 1.85 s without
    # (three runs each, alternating). Frozen, it stays out of later collections; collecting goes on as usual.
    gc.freeze()
    # Collect less often than Python's default (700, 10, 10): a sweep's later imports (Optuna's storage, MLflow's
    # store, torch._dynamo with the first optimizer) grew the heap from 45k to 420k objects and set off 8 full
    # collections, 1.0 s of a 10-trial sweep of model=tiny (1.3 s collecting in all, 0.3-0.5 s with these).
    gc.set_threshold(50_000, 20, 20)
    gc.enable()
    try:
        train.main()
        if app.stopped_jobs:  # a plain multirun (`-m a=1,2`): each said why in its own line when it stopped
            jobs = "; ".join(f"#{num} ({' '.join(overrides)}): {why}" for num, overrides, why, _ in app.stopped_jobs)
            print(f"error: {len(app.stopped_jobs)} job(s) of this multirun did not finish: {jobs}; the others ran",
                  file=sys.stderr, flush=True)
            sys.exit(max(code for *_, code in app.stopped_jobs))
    finally:
        # Python's exit frees every object one by one and collects cycles among torch's, MLflow's and Optuna's
        # modules: 1.5 s here after a sweep's imports. Frozen objects are left to the OS, as they are at any
        # exit; files, runs and studies are closed by then (atexit still runs). `python -c "import torch, mlflow,
        # optuna, matplotlib.pyplot; ..."`: exit 1.52 s, 0.29 s with gc.freeze(), side by side.
        gc.freeze()
