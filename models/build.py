"""Turn the Hydra config into a ResNet, and count it before anything expensive happens.

Both take the config through the schema's `checked` (training/schema.py: every key's rule, once) and go
through the same spec (models/specs.py: model_spec), so a bad config fails with the same one line on either
path, and the same line as at the entry.
"""
import torch

from models.report import ParamReport, count
from models.resnet import ResNet
from models.specs import model_spec
from training.schema import MODEL_GROUPS, checked


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
    cfg = checked(cfg, MODEL_GROUPS)
    return count(model_spec(cfg), cfg.budget.max_params, max_gflops(cfg), budget_note(cfg))


def max_gflops(cfg):
    """budget.max_gflops: training GFLOP per image, or None (absent or null) for no FLOPs budget."""
    value = cfg.budget.get("max_gflops")
    return None if value is None else float(value)


def budget_note(cfg) -> str:
    """model.budget_note (optional): why a preset is over budget on purpose, one line."""
    return " ".join(str(cfg.model.get("budget_note") or "").split())
