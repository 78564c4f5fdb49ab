"""The config schema: every key of the composed config, its type and its allowed range.

`validate(cfg)` walks the whole composed config (without `hydra`) once, before anything else
looks at it, and raises ConfigError for the first value that is not allowed, as one line:

    model.depth_mult=abc: must be a number > 0

It also refuses keys the schema does not know (a typo in a preset, `+trainer.foo=1`). Hydra
itself refuses unknown keys given without `+` and unknown group options. What only makes sense
across several keys (feature-map shapes, bottleneck widths, the budget) is checked after this,
by the code that owns it (models/, training/optim.py, training/gate.py).

Adding a key: add it to its YAML file and here; tests/test_schema.py composes every group option
and validates it, so a key missing here fails the tests, not a user's run.
"""
import math
import os
import tempfile

from omegaconf import DictConfig, ListConfig, OmegaConf

from errors import ConfigError

SEED_MAX = 2 ** 32 - 1  # what every seeded generator here (torch, numpy) accepts


class Rule:
    """One key's rule: `check(value)` returns None when allowed, else the text saying what is."""
    null = False

    def __call__(self, value):
        if value is None:
            return None if self.null else self.allowed()
        return self.check(value)

    def allowed(self):
        raise NotImplementedError

    def check(self, value):
        raise NotImplementedError

    def _or_null(self, text):
        return f"{text}, or null" if self.null else text


class Number(Rule):
    """A number in a range; `integer` refuses fractions. Booleans are never numbers here."""

    def __init__(self, low=None, high=None, low_open=False, high_open=False, integer=False, null=False, hint=""):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        self.integer, self.null, self.hint = integer, null, hint

    def allowed(self):
        kind = "an integer" if self.integer else "a number"
        low, high = _bound(self.low), _bound(self.high)
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"must be {kind} in {left}{low}, {high}{right}"
        elif self.low is not None:
            text = f"must be {kind} {'>' if self.low_open else '>='} {low}"
        elif self.high is not None:
            text = f"must be {kind} {'<' if self.high_open else '<='} {high}"
        else:
            text = f"must be {kind}"
        return self._or_null(text) + (f" ({self.hint})" if self.hint else "")

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self.allowed()
        if self.integer and not isinstance(value, int):
            return self.allowed()
        if isinstance(value, float) and not math.isfinite(value):
            return self.allowed()
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return self.allowed()
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return self.allowed()
        return None


def _bound(value):
    return str(value) if isinstance(value, int) else f"{value:g}" if value is not None else ""


def Int(low=None, high=None, null=False, hint=""):  # noqa: N802 - reads as a type in the schema below
    return Number(low, high, integer=True, null=null, hint=hint)


class Choice(Rule):
    def __init__(self, *options, null=False):
        self.options, self.null = options, null

    def allowed(self):
        return self._or_null("use one of " + ", ".join(str(o).lower() if isinstance(o, bool) else str(o)
                                                      for o in self.options))

    def check(self, value):
        for option in self.options:
            if value == option and isinstance(value, bool) == isinstance(option, bool):
                return None
        return self.allowed()


class Bool(Choice):
    def __init__(self):
        super().__init__(True, False)


class Text(Rule):
    def __init__(self, null=False, nonempty=True):
        self.null, self.nonempty = null, nonempty

    def allowed(self):
        return self._or_null("must be a non-empty string" if self.nonempty else "must be a string")

    def check(self, value):
        if not isinstance(value, str) or (self.nonempty and not value.strip()):
            return self.allowed()
        return None


class Numbers(Rule):
    """A list of `length` numbers, each allowed by `item`."""

    def __init__(self, length, item, null=False):
        self.length, self.item, self.null = length, item, null

    def allowed(self):
        return self._or_null(f"must be a list of {self.length} numbers, each one that "
                             f"{self.item.allowed().replace('must be ', 'is ')}")

    def check(self, value):
        if not isinstance(value, (list, tuple)) or len(value) != self.length or any(self.item(v) for v in value):
            return self.allowed()
        return None


class WritableFolder(Rule):
    """A folder this process can create and write in: the nearest existing folder on its path takes a
    trial sub-folder, removed at once (permission bits alone say nothing when running as root)."""

    def __init__(self, null=False):
        self.null = null

    def allowed(self):
        return self._or_null("must be a folder this process can create and write to")

    def check(self, value):
        if not isinstance(value, str) or not value.strip():
            return self.allowed()
        from hydra.utils import to_absolute_path
        path = to_absolute_path(os.path.expanduser(value)) if _hydra_running() else os.path.abspath(
            os.path.expanduser(value))
        while not os.path.exists(path):
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        if not os.path.isdir(path):
            return f"{self.allowed()}: {path} is not a folder"
        try:
            tempfile.TemporaryDirectory(dir=path).cleanup()
        except OSError as err:
            return f"{self.allowed()}: cannot write in {path} ({err.strerror or err})"
        return None


class WritableFile(Rule):
    """A file path this process can write: not a folder, and its folder writable (created if missing)."""

    def __init__(self, null=False):
        self.null = null

    def allowed(self):
        return self._or_null("must be a file path this process can write (not a folder)")

    def check(self, value):
        if not isinstance(value, str) or not value.strip() or value.endswith(("/", os.sep)):
            return self.allowed()
        from hydra.utils import to_absolute_path
        path = to_absolute_path(os.path.expanduser(value)) if _hydra_running() else os.path.abspath(
            os.path.expanduser(value))
        if os.path.isdir(path):
            return f"{self.allowed()}: {path} is a folder"
        problem = WritableFolder().check(os.path.dirname(path))
        return f"{self.allowed()}{problem[problem.index(':'):]}" if problem else None


class Anything(Rule):
    null = True

    def check(self, value):
        return None


class Each:
    """A mapping whose keys are names (the layers of a model), each value following `schema`;
    every entry must have the `required` keys."""

    def __init__(self, schema, required=()):
        self.schema, self.required = schema, tuple(required)


def _hydra_running():
    from hydra.core.hydra_config import HydraConfig
    return HydraConfig.initialized()


def _names(registry):
    return tuple(sorted(registry))


def schema():
    """The schema, built on demand so the registries (optimizers, blocks, ...) are their current selves."""
    from data.augment import AUGMENTATIONS, AUTOAUGMENT_POLICIES, FLIPS
    from data.datasets import DATASETS
    from models.blocks import BLOCKS
    from models.specs import K2_DESIGNS
    from training.lr_range import RULES
    from training.optim import DECAYS, OPTIMIZERS, SCHEDULERS
    from training.tasks import TASKS
    probability = Number(0, 1, high_open=True)
    dropout = Number(0, 1, high_open=True, null=True)  # null: no dropout layers (the paper's Table 1 row 8)
    positive = Number(0, low_open=True)
    layer = {
        "block": Choice(*BLOCKS), "blocks": Int(1, hint="remove a layer with ~model.layers.NAME"),
        "channels": Int(1), "dropout": dropout, "kernel_size": Int(1),
    }
    return {
        "stem": {"name": Text(), "channels": Int(1), "kernel_size": Int(1), "stride": Int(1), "padding": Int(0),
                 "maxpool": Bool()},
        "blocks": {"name": Text(), "bottleneck_reduction": Int(1), "k2_design": Choice(*K2_DESIGNS)},
        "model": {"name": Text(), "num_classes": Int(1), "num_layers": Int(1, null=True), "width_mult": positive,
                  "depth_mult": positive,
                  "dropout": dropout, "budget_note": Text(null=True, nonempty=False), "layers": Each(layer, required=("block", "blocks", "channels")),
                  "zero_init_residual": Bool(), "bn_momentum": Number(0, 1, low_open=True)},
        "optimizer": {"name": Choice(*OPTIMIZERS), "lr": positive, "weight_decay": Number(0),
                      "betas": Numbers(2, probability), "momentum": probability, "nesterov": Bool(),
                      "decay_norm_and_bias": Bool(), "scale_lr_with_batch": Bool(), "per_1024_images": Bool()},
        "scheduler": {"name": Choice(*SCHEDULERS), "warmup_epochs": Number(0), "min_lr_ratio": Number(0, 1),
                      "warmup_start": Number(0, 1), "decay": Choice(*DECAYS),
                      "max_lr": Number(0, low_open=True, null=True), "pct_start": Number(0, 1, True, True),
                      "anneal_strategy": Choice("linear", "cos"), "div_factor": positive,
                      "final_div_factor": positive, "base_lr": positive, "step_size_up_epochs": positive,
                      "mode": Choice("triangular", "triangular2", "exp_range"),
                      "bounds_from": Text(null=True), "step_epochs": Int(1), "gamma": positive},
        "augmentation": {"name": Choice(*AUGMENTATIONS), "rotation_degrees": Number(0, 180), "crop_padding": Int(0),
                         "flip": Choice(*FLIPS), "cutout": Int(0)},
        "budget": {"max_params": Int(1), "max_gflops": Number(0, low_open=True, null=True)},
        "data": {"name": Choice(*DATASETS), "root": Text(), "download": Bool(), "val_size": Int(0),
                 "subset": Int(2, null=True, hint="BatchNorm needs 2 images in a step"),
                 "split_seed": Int(0, SEED_MAX), "train_images": Int(1), "test_images": Int(1),
                 "num_classes": Int(1), "image_size": Int(1),
                 "mean": Numbers(3, Number(0, 1), null=True), "std": Numbers(3, positive, null=True),
                 "autoaugment_policy": Choice(*AUTOAUGMENT_POLICIES)},
        "trainer": {"epochs": Int(1), "batch_size": Int(1), "eval_batch_size": Int(1),
                    "device": Choice("auto", "cpu", "cuda"), "precision": Choice("fp32", "bf16", "fp16"),
                    "seed": Int(0, SEED_MAX), "label_smoothing": probability, "grad_clip": Number(0, low_open=True, null=True),
                    "channels_last": Choice("auto", True, False), "compile": Bool(),
                    "cuda_graphs": Choice("auto", True, False),
                    "fused_optimizer": Choice("auto", True, False), "tta": Choice("none", "flip", "flip_shift"),
                    "ema_decay": Number(0, 1, True, True, null=True), "log_every": Int(0), "resume": Bool(),
                    "checkpoint_dir": WritableFolder(null=True), "keep_checkpoint": Bool(),
                    "save_weights": WritableFile(null=True)},
        "mlflow": {"tracking_uri": Text(), "experiment": Text(), "run_name": Text(null=True),
                   "log_model": Bool(), "log_datasets": Bool(), "register_best": Text(null=True),
                   "model_format": Choice("pickle", "pt2"),
                   "system_metrics": Choice("auto", True, False), "log_curves": Choice("auto", True, False)},
        "dry_run": Bool(),
        "task": Choice(*TASKS),
        "evaluate": {"weights": Text(null=True)},
        "lr_range": {"min_lr": positive, "max_lr": positive, "steps": Int(10, hint="a few hundred is typical"),
                     "smoothing": probability, "divergence": Number(1, low_open=True), "rule": Choice(*RULES),
                     "min_lr_divisor": Number(1, low_open=True)},
    }


def _show(value):
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def _walk(node, rules, path):
    if isinstance(rules, Rule):
        value = OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node
        problem = rules(value)
        if problem:
            raise ConfigError(f"{path}={_show(value)}: {problem}")
        return
    if isinstance(rules, Each):
        if not isinstance(node, DictConfig) or not len(node):
            raise ConfigError(f"{path}={_show(node)}: must be a mapping of named entries, e.g. model=final")
        for name in node:
            entry = _value(node, name, path)
            missing = [key for key in rules.required if not isinstance(entry, DictConfig) or key not in entry]
            if missing:
                raise ConfigError(f"{path}.{name}.{missing[0]}=(missing): required; each entry of {path} "
                                  f"has {', '.join(rules.required)}")
            _walk(entry, rules.schema, f"{path}.{name}")
        return
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}={_show(node)}: must be a group of keys ({', '.join(rules)})")
    for key in node:
        if key not in rules:
            raise ConfigError(f"{path + '.' if path else ''}{key}={_show(_value(node, key, path))}: not a config "
                              f"key; {path or 'the config'} has {', '.join(rules)}")
        _walk(_value(node, key, path), rules[key], f"{path}.{key}" if path else str(key))


def _value(node, key, path=""):
    try:
        return node[key]
    except Exception as err:  # noqa: BLE001 - an interpolation that cannot resolve (${oc.env:...}, a typo)
        where = f"{path}.{key}" if path else str(key)
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{where}: cannot be resolved: {first_line}") from None


def validate(cfg):
    """Check every key of the composed config against the schema; ConfigError names the first bad one."""
    rules = schema()
    for key in cfg:
        if key == "hydra":
            continue
        if key not in rules:
            raise ConfigError(f"{key}={_show(_value(cfg, key))}: not a config key; the config has "
                              f"{', '.join(rules)}")
        _walk(_value(cfg, key), rules[key], str(key))
    _check_augmentation_sizes(cfg)


def _check_augmentation_sizes(cfg):
    """Cutout and crop padding are sizes in pixels of the dataset's images: past these bounds every
    training image would be mostly (or all) zeros, silently."""
    aug, size = cfg.get("augmentation"), cfg.get("data", {}).get("image_size")
    if aug is None or not isinstance(size, int):
        return
    if aug.get("cutout", 0) > size:
        raise ConfigError(f"augmentation.cutout={aug.cutout}: must be an integer in [0, {size}] "
                          f"(data.image_size; 0 turns cutout off)")
    if aug.get("crop_padding", 0) > size // 2:
        raise ConfigError(f"augmentation.crop_padding={aug.crop_padding}: must be an integer in [0, {size // 2}] "
                          f"(half of data.image_size)")
