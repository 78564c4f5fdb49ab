"""Turn the Hydra config into a ResNet, and count it before anything expensive happens.

Both go through the same spec (models/specs.py: model_spec), so a bad config fails with the same
one-line ModelConfigError on either path.
"""
import torch

from errors import ConfigError
from models.report import ParamReport, count
from models.resnet import ResNet
from models.specs import model_spec


def build_model(cfg, device=None) -> ResNet:
    """Build the model the config describes; device='meta' allocates no weights.

    The spec is counted first (well under a millisecond), so shapes that cannot line up are refused with
    the same message as param_report instead of failing in the first forward pass."""
    spec = model_spec(cfg)
    count(spec, budget=0)
    with torch.device(device or "cpu"):
        return ResNet(spec)


def param_report(cfg) -> ParamReport:
    """Count parameters and training FLOPs and check shapes from the config alone: no modules, no weights."""
    return count(model_spec(cfg), cfg.budget.max_params, max_gflops(cfg), budget_note(cfg))


def max_gflops(cfg):
    """budget.max_gflops: training GFLOP per image, or None (absent or null) for no FLOPs budget."""
    value = cfg.budget.get("max_gflops")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"budget.max_gflops={value!r}: use a number > 0 (training GFLOP per image) "
                          f"or null for no FLOPs budget")
    return float(value)


def budget_note(cfg) -> str:
    """model.budget_note (optional): why a preset is over budget on purpose, one line."""
    return " ".join(str(cfg.model.get("budget_note") or "").split())
