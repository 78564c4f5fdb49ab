"""The gate: everything a run refuses before it reads data, checked in milliseconds.

One function, `check_config`, is the whole single-run check (the parameter budget included); a
single run, the dry run, the LR range test and every sweep proposal go through it. The sweeper
sees it through the constraint callables at the end of this module: a config that fails the
check is an invalid proposal, one that passes is measured against its budgets.
"""
import torch

from data import check_data_config
from errors import BudgetError, ConfigError
from models import param_report
from training.lr_range import check_settings
from training.optim import check_plans
from training.schema import validate
from training.weights import check_weights_file


def check_config(cfg):
    """Everything that can be wrong with a config, checked in milliseconds. Returns the param report."""
    valid = validate(cfg)  # every key's type and range first: one line naming the key, the value and what is allowed
    check_data_config(cfg)  # then the dataset: the model's head and image size come from it
    report = param_report(valid)  # the shapes the blocks chain, the counts (the checked copy: not checked again)
    # Each key's type and range is validate()'s alone; what is left here spans several keys, files or the machine.
    if cfg.trainer.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA GPU is visible: use trainer.device=auto or cpu")
    if cfg.task == "lr_range_test":
        check_settings(cfg.lr_range)
    if cfg.task == "evaluate":
        check_weights_file(cfg.evaluate.weights)
    # The optimizer's and the schedule's rules across keys (Nesterov without momentum, two lr scalings, a
    # cyclic range upside down, scheduler.bounds_from's file or run) are theirs, met by planning them as the
    # build does (training/optim.py), without building them.
    check_plans(cfg)
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
    report = _checked(cfg)
    return float(report.total - report.budget), report.total


def gflops_over_budget(cfg):
    """(training GFLOP per image over budget.max_gflops, training GFLOP per image); None when
    budget.max_gflops is null (no FLOPs budget)."""
    report = _checked(cfg)
    if report.max_gflops is None:
        return None
    return report.train_gflops - report.max_gflops, round(report.train_gflops, 4)


def preflight(cfg):
    """What a sweep checks once before its first trial: it has validation images to rank its trials by, the
    dataset files are there (names only, nothing read; data.download=true passes) and an http(s) tracking server
    answers. Raises ConfigError / DatasetError / TrackingError."""
    if cfg.data.val_size == 0:  # a single run then returns its test accuracy: a sweep would select on the test set
        raise ConfigError("data.val_size=0: a sweep ranks its trials by validation accuracy, and without validation "
                          "images it would rank them on the test set: use data.val_size >= 1 (5,000 by default)")
    from data import check_available
    from training.tracking import check_reachable
    check_available(cfg.data)
    check_reachable(cfg.mlflow.tracking_uri)


_last_checked = [None, None]  # (config, report): the sweeper hands one proposal's config to every constraint


def _checked(cfg):
    if _last_checked[0] is not cfg:
        _last_checked[:] = [cfg, check_config(cfg)]
    return _last_checked[1]
