"""The gate: everything a run refuses before it reads data, checked in milliseconds.

One function, `check_config`, is the whole single-run check (the parameter budget included); a
single run, the dry run, the LR range test and every sweep proposal go through it. The sweeper
sees it through the constraint callables at the end of this module: a config that fails the
check is an invalid proposal, one that passes is measured against its budgets.
"""
import torch

from data import Augmentation
from errors import BudgetError, ConfigError, DatasetError
from models import param_report
from training.lr_range import check_settings
from training.optim import build_optimizer, build_scheduler, fused_kernels

TASKS = ("train", "lr_range_test")


def check_config(cfg):
    """Everything that can be wrong with a config, checked in milliseconds. Returns the param report."""
    report = param_report(cfg)
    trainer = cfg.trainer
    for key in ("epochs", "batch_size", "eval_batch_size"):
        value = trainer[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"trainer.{key}={value!r} must be a positive integer")
    if trainer.precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"trainer.precision='{trainer.precision}' is unknown: use fp32, bf16 or fp16")
    if trainer.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"trainer.device='{trainer.device}' is unknown: use auto, cpu or cuda")
    if trainer.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA GPU is visible: use trainer.device=auto or cpu")
    if trainer.tta not in ("none", "flip", "flip_shift"):
        raise ConfigError(f"trainer.tta='{trainer.tta}' is unknown: use none, flip or flip_shift")
    if trainer.ema_decay is not None and not 0 < trainer.ema_decay < 1:
        raise ConfigError(f"trainer.ema_decay={trainer.ema_decay} must be in (0, 1), or null for no EMA")
    if cfg.task not in TASKS:
        raise ConfigError(f"task='{cfg.task}' is unknown: use {' or '.join(TASKS)}")
    if cfg.task == "lr_range_test":
        check_settings(cfg.lr_range)
    try:
        Augmentation(cfg.augmentation)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    fused_kernels(cfg, "cpu")
    stand_in = torch.nn.Linear(1, 1)  # the names and numbers are what can be wrong, not the model
    build_scheduler(cfg, build_optimizer(cfg, stand_in, "cpu", fused=False), steps_per_epoch=1, epochs=trainer.epochs)
    return report


def check_budget(cfg):
    """check_config, then refuse an over-budget model. Returns the param report."""
    report = check_config(cfg)
    if not report.feasible:
        raise BudgetError(report.over_budget_message())
    return report


# --- for the sweeper (hydra.sweeper.constraints and hydra.sweeper.preflight) ---------------------
# A constraint takes a proposal's composed job config and returns how far it is over its budget
# (<= 0: within it) with the measured value. A config the single-run check refuses raises its
# UserError: the sweeper records the proposal as invalid, with that message, and never launches it.
def params_over_budget(cfg):
    """(parameters over budget.max_params, parameters), after the whole single-run check."""
    report = check_config(cfg)
    return float(report.total - report.budget), report.total


def preflight(cfg):
    """What a sweep checks once before its first trial: the dataset files are there (without reading
    them) and an http(s) tracking server answers. Raises DatasetError / TrackingError."""
    from training.tracking import check_reachable
    if not cfg.data.get("download", False):
        _check_dataset_files(cfg.data)
    check_reachable(cfg.mlflow.tracking_uri)


def _check_dataset_files(data_cfg):
    import data
    if hasattr(data, "check_available"):  # the data package's own check, where it has one
        return data.check_available(data_cfg)
    from data.cifar10 import FOLDER, TEST_FILES, TRAIN_FILES, dataset_dir
    directory = dataset_dir(data_cfg.root)
    missing = [name for name in TRAIN_FILES + TEST_FILES if not (directory / name).is_file()]
    if missing:
        raise DatasetError(
            f"CIFAR-10 not found: {directory} lacks {', '.join(missing)}. Set data.root (or the CIFAR10_ROOT "
            f"environment variable) to the folder holding {FOLDER}/, or add data.download=true to fetch it")
