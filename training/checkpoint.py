"""Per-epoch checkpoints: everything a killed run needs to go on exactly where it stopped.

One file per run, `last.pt`, replaced after every epoch through training/files.py (a temporary file
of its own per save, synced, renamed over the old one), so a process killed while writing leaves the
previous checkpoint whole, a half-written file is never loaded, and two runs of the same command at
once (same folder) each rename a whole file of their own, never one the other wrote into.

Where: `trainer.checkpoint_dir`, or by default `checkpoints/<model>-<config key>` under the
directory train.py was started from (a sweep trial: its Hydra job folder). The key is a hash of
the resolved config without the keys that do not change what is trained (resume, log_every, ...),
so running the same command again, with trainer.resume=true, finds the same directory; Hydra's
timestamped output directory would not.
"""
import hashlib
import json
import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

from errors import CheckpointError
from sweeper import signals
from sweeper.secrets import mask_url
from training.files import save_atomically

FILE = "last.pt"
# trainer keys that do not change the training itself, so they do not change the checkpoint's key.
NOT_IN_KEY = ("resume", "checkpoint_dir", "keep_checkpoint", "log_every")


def _keyed(cfg) -> dict:
    """The resolved config as the key sees it: without hydra, dry_run and NOT_IN_KEY."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    resolved.pop("dry_run", None)
    for key in NOT_IN_KEY:
        resolved.get("trainer", {}).pop(key, None)
    return resolved


def config_key(cfg) -> str:
    return hashlib.sha256(json.dumps(_keyed(cfg), sort_keys=True, default=str).encode()).hexdigest()[:12]


def recorded_config(cfg) -> dict:
    """{dotted key: value as JSON text} of the keyed config, URLs masked (a checkpoint keeps no password): what a
    checkpoint records, so that a resume with another config is told which keys differ."""
    return _flat(_keyed(cfg))


def _flat(node, prefix=""):
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: mask_url(json.dumps(node, default=str))}


def _differences(then, now, most=3):
    """'key: <value> there, <value> here' for the keys whose values differ (a checkpoint of an older version
    recorded no config: empty)."""
    if not then:
        return ""
    keys = sorted(key for key in set(then) | set(now) if then.get(key) != now.get(key))
    shown = [f"{key}: {then.get(key, '(none)')} there, {now.get(key, '(none)')} here" for key in keys[:most]]
    return " (" + "; ".join(shown) + (f"; {len(keys) - most} more" if len(keys) > most else "") + ")"


def checkpoint_path(cfg) -> Path:
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import to_absolute_path  # the launch directory, even with hydra.job.chdir=true
    from sweeper.job import current_trial
    trial = current_trial()
    if trial is not None and trial.resume_from:
        # This trial replaces an interrupted one (sweeper/resume.py): it goes on from that one's file, and keeps it.
        return Path(trial.resume_from)
    folder = cfg.trainer.get("checkpoint_dir")
    if not folder and trial is not None and HydraConfig.initialized():
        # A sweep trial's checkpoint is in its job folder; the study records where (user attr `checkpoint`).
        folder = os.path.join(HydraConfig.get().runtime.output_dir, "checkpoint")
    folder = folder or os.path.join("checkpoints", f"{cfg.model.name}-{config_key(cfg)}")
    return Path(to_absolute_path(str(folder))) / FILE


def save(path: Path, state: dict):
    with signals.held():  # a SIGTERM now waits for the rename: the file is the last epoch's, whole
        save_atomically(state, path)


def load(path: Path, cfg, tracker, trial=None):
    """The last whole checkpoint for this config, or None. Temp files from a killed save are ignored.

    A sweep trial (`trial`, sweeper.job.SweepTrial) loads only its own checkpoint (a requeued job: same study and
    trial number) or the one it was told to go on from (trial.resume_from); a file another sweep's trial left in a
    reused job folder is not its own and is replaced. Call after the MLflow store is open: the checkpoint's run
    must be in it.
    """
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); delete it "
                              f"or set trainer.resume=false to start over") from err
    if trial is not None and not trial.resume_from and state.get("sweep_trial") != trial.key:
        return None
    if state.get("config_key") != config_key(cfg):
        differ = _differences(state.get("config"), recorded_config(cfg))
        raise CheckpointError(f"checkpoint {path} was written for a different config{differ}: set "
                              f"trainer.checkpoint_dir to another folder, or trainer.resume=false to start over")
    if not tracker.has_run(state["mlflow_run_id"]):
        raise CheckpointError(f"checkpoint {path} logs to MLflow run {state['mlflow_run_id']}, which "
                              f"{mask_url(str(cfg.mlflow.tracking_uri))} does not have: use the store it was started with, "
                              f"or trainer.resume=false to start over")
    return state


def remove(path: Path):
    """Drop a finished run's checkpoint (its weights are in MLflow); the folder too if nothing else is there."""
    path.unlink(missing_ok=True)
    for leftover in path.parent.glob(path.name + ".tmp"):  # the fixed name earlier versions used
        leftover.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass


def capture(cfg, *, model, optimizer, scheduler, scaler, ema, train_loader, history, run_id, elapsed, trial=None):
    """The state after a finished epoch (len(history) epochs done)."""
    return {
        "config_key": config_key(cfg),
        "config": recorded_config(cfg),
        "sweep_trial": trial.key if trial is not None else None,
        "epoch": len(history),
        "history": history,
        "mlflow_run_id": run_id,
        "elapsed": elapsed,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "rng_loader": train_loader.generator.get_state(),
    }


def restore(state, *, model, optimizer, scheduler, scaler, ema, train_loader):
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:  # a CUDA-graphed run keeps its LR in tensors; every step here takes a float
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    train_loader.generator.set_state(state["rng_loader"])
    train_loader.epoch = state["epoch"]  # one pass of the loader per epoch (the alternating flip reads its parity)
