"""The config schema, written once: one dataclass per config group, each field with its type and its rule.

`validate(cfg)` checks the whole composed config (without `hydra`) before anything else looks at it, and
raises ConfigError for the first value that is not allowed, as one line naming the key, the value and what
is allowed:

    model.depth_mult=abc: must be a number > 0

Keys and types come from OmegaConf: the composed config is merged into `OmegaConf.structured(Config)`, which
refuses a key the dataclass does not have (a typo in a preset, `+trainer.foo=1`), a value of the wrong type
and a layer without its required keys. Ranges come from each field's rule (training/rules.py), checked on
the value as given; then the rules across keys that need nothing but the config (`_check_across`: sizes
against data.image_size, model.num_layers against model.layers). What needs more than the config is checked
after this by the code that owns it: the dataset's facts (data/), the feature-map shapes and bottleneck
widths of the blocks a spec chains (models/), the budgets and the machine (training/gate.py).

Code that reads the config without the gate in front of it (models/ counting or building from any composed
config: tests, benchmarks, scripts) goes through `checked(cfg, groups)`: the same rules, the same one line;
a config the gate already checked passes through it untouched. So models/ only converts.

Why here and not as the groups' bases in Hydra's defaults lists: Hydra checks a structured base while it
composes, before the task runs, and reports a bad value as a multi-line composition error with exit code 1;
every bad value must instead end in one `error: <key>=<value>: ...` line with exit code 2 (the README's
"Bad input" table). So the same dataclasses are applied at entry, by the gate.

Adding a key: add it to its YAML file and to its dataclass here; tests/test_schema.py composes every group
option and validates it, so a key missing here fails the tests, not a user's run.
"""
import weakref
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from errors import ConfigError, ModelConfigError, OptimConfigError
from training.rules import (SEED_MAX, Anything, Bool, Choice, Int, KernelSize, Number, Numbers, Rule, Text,
                            WritableFile, WritableFolder)


def ruled(check, default=None):
    """A field whose values `check` allows (a Rule, or a function returning one: registries are read when
    checked, so a block registered after import is known)."""
    return field(default=default, metadata={"rule": check})


def _registry(module, name):
    def choice():
        import importlib
        return Choice(*getattr(importlib.import_module(module), name))
    return choice


PROBABILITY = Number(0, 1, high_open=True)
DROPOUT = Number(0, 1, high_open=True, null=True)  # null: no dropout layers (the paper's Table 1 row 8)
POSITIVE = Number(0, low_open=True)
AUTO_TRUE_FALSE = Choice("auto", True, False)


@dataclass
class StemConf:
    name: Optional[str] = ruled(Text())
    channels: Optional[int] = ruled(Int(1))
    kernel_size: Optional[int] = ruled(Int(1))
    stride: Optional[int] = ruled(Int(1))
    padding: Optional[int] = ruled(Int(0))
    maxpool: Optional[bool] = ruled(Bool())


@dataclass
class BlocksConf:
    name: Optional[str] = ruled(Text())
    bottleneck_reduction: Optional[int] = ruled(Int(1))
    k2_design: Optional[str] = ruled(_registry("models.specs", "K2_DESIGNS"))


@dataclass
class LayerConf:  # one entry of model.layers: block, blocks and channels are required
    block: str = ruled(_registry("models.blocks", "BLOCKS"), MISSING)
    blocks: int = ruled(Int(1, hint="remove a layer with ~model.layers.NAME"), MISSING)
    channels: int = ruled(Int(1), MISSING)
    dropout: Optional[float] = ruled(DROPOUT)
    kernel_size: Optional[int] = ruled(KernelSize())


@dataclass
class ModelConf:
    name: Optional[str] = ruled(Text())
    num_classes: Optional[int] = ruled(Int(1))
    num_layers: Optional[int] = ruled(Int(1, null=True))
    width_mult: Optional[float] = ruled(POSITIVE)
    depth_mult: Optional[float] = ruled(POSITIVE)
    dropout: Optional[float] = ruled(DROPOUT)
    budget_note: Optional[str] = ruled(Text(null=True, nonempty=False))
    layers: Dict[str, LayerConf] = field(default_factory=dict)
    zero_init_residual: Optional[bool] = ruled(Bool())
    bn_momentum: Optional[float] = ruled(Number(0, 1, low_open=True))


@dataclass
class OptimizerConf:
    name: Optional[str] = ruled(_registry("training.optim", "OPTIMIZERS"))
    lr: Optional[float] = ruled(POSITIVE)
    weight_decay: Optional[float] = ruled(Number(0))
    betas: Optional[List[float]] = ruled(Numbers(2, PROBABILITY))
    momentum: Optional[float] = ruled(PROBABILITY)
    nesterov: Optional[bool] = ruled(Bool())
    decay_norm_and_bias: Optional[bool] = ruled(Bool())
    scale_lr_with_batch: Optional[bool] = ruled(Bool())
    per_1024_images: Optional[bool] = ruled(Bool())


@dataclass
class SchedulerConf:
    name: Optional[str] = ruled(_registry("training.optim", "SCHEDULERS"))
    warmup_epochs: Optional[float] = ruled(Number(0))
    min_lr_ratio: Optional[float] = ruled(Number(0, 1))
    warmup_start: Optional[float] = ruled(Number(0, 1))
    decay: Optional[str] = ruled(_registry("training.optim", "DECAYS"))
    max_lr: Optional[float] = ruled(Number(0, low_open=True, null=True))
    pct_start: Optional[float] = ruled(Number(0, 1, True, True))
    anneal_strategy: Optional[str] = ruled(Choice("linear", "cos"))
    div_factor: Optional[float] = ruled(POSITIVE)
    final_div_factor: Optional[float] = ruled(POSITIVE)
    base_lr: Optional[float] = ruled(POSITIVE)
    step_size_up_epochs: Optional[float] = ruled(POSITIVE)
    mode: Optional[str] = ruled(Choice("triangular", "triangular2", "exp_range"))
    bounds_from: Optional[str] = ruled(Text(null=True))
    step_epochs: Optional[int] = ruled(Int(1))
    gamma: Optional[float] = ruled(POSITIVE)


@dataclass
class AugmentationConf:
    name: Optional[str] = ruled(_registry("data.augment", "AUGMENTATIONS"))
    rotation_degrees: Optional[float] = ruled(Number(0, 180))
    crop_padding: Optional[int] = ruled(Int(0))
    flip: Any = ruled(_registry("data.augment", "FLIPS"))  # true, false or alternate
    cutout: Optional[int] = ruled(Int(0))


@dataclass
class BudgetConf:
    max_params: Optional[int] = ruled(Int(1))
    max_gflops: Optional[float] = ruled(Number(0, low_open=True, null=True))


@dataclass
class DataConf:
    name: Optional[str] = ruled(_registry("data.datasets", "DATASETS"))
    root: Optional[str] = ruled(Text())
    download: Optional[bool] = ruled(Bool())
    val_size: Optional[int] = ruled(Int(0))
    subset: Optional[int] = ruled(Int(2, null=True, hint="BatchNorm needs 2 images in a step"))
    split_seed: Optional[int] = ruled(Int(0, SEED_MAX))
    train_images: Optional[int] = ruled(Int(1))
    test_images: Optional[int] = ruled(Int(1))
    num_classes: Optional[int] = ruled(Int(1))
    image_size: Optional[int] = ruled(Int(1))
    mean: Optional[List[float]] = ruled(Numbers(3, Number(0, 1), null=True))
    std: Optional[List[float]] = ruled(Numbers(3, POSITIVE, null=True))
    autoaugment_policy: Optional[str] = ruled(_registry("data.augment", "AUTOAUGMENT_POLICIES"))


@dataclass
class TrainerConf:
    epochs: Optional[int] = ruled(Int(1))
    batch_size: Optional[int] = ruled(Int(1))
    eval_batch_size: Optional[int] = ruled(Int(1))
    device: Optional[str] = ruled(Choice("auto", "cpu", "cuda"))
    precision: Optional[str] = ruled(Choice("fp32", "bf16", "fp16"))
    seed: Optional[int] = ruled(Int(0, SEED_MAX))
    label_smoothing: Optional[float] = ruled(PROBABILITY)
    grad_clip: Optional[float] = ruled(Number(0, low_open=True, null=True))
    channels_last: Any = ruled(AUTO_TRUE_FALSE)
    compile: Optional[bool] = ruled(Bool())
    cuda_graphs: Any = ruled(AUTO_TRUE_FALSE)
    fused_optimizer: Any = ruled(AUTO_TRUE_FALSE)
    tta: Optional[str] = ruled(Choice("none", "flip", "flip_shift"))
    ema_decay: Optional[float] = ruled(Number(0, 1, True, True, null=True))
    log_every: Optional[int] = ruled(Int(0))
    resume: Optional[bool] = ruled(Bool())
    checkpoint_dir: Optional[str] = ruled(WritableFolder(null=True))
    keep_checkpoint: Optional[bool] = ruled(Bool())
    save_weights: Optional[str] = ruled(WritableFile(null=True))


@dataclass
class MlflowConf:
    tracking_uri: Optional[str] = ruled(Text())
    experiment: Optional[str] = ruled(Text())
    run_name: Optional[str] = ruled(Text(null=True))
    log_model: Optional[bool] = ruled(Bool())
    log_datasets: Optional[bool] = ruled(Bool())
    register_best: Optional[str] = ruled(Text(null=True))
    model_format: Optional[str] = ruled(Choice("pickle", "pt2"))
    system_metrics: Any = ruled(AUTO_TRUE_FALSE)
    log_curves: Any = ruled(AUTO_TRUE_FALSE)


@dataclass
class EvaluateConf:
    weights: Optional[str] = ruled(Text(null=True))


@dataclass
class LrRangeConf:
    min_lr: Optional[float] = ruled(POSITIVE)
    max_lr: Optional[float] = ruled(POSITIVE)
    steps: Optional[int] = ruled(Int(10, hint="a few hundred is typical"))
    smoothing: Optional[float] = ruled(PROBABILITY)
    divergence: Optional[float] = ruled(Number(1, low_open=True))
    rule: Optional[str] = ruled(_registry("training.lr_range", "RULES"))
    min_lr_divisor: Optional[float] = ruled(Number(1, low_open=True))


@dataclass
class Config:
    stem: StemConf = field(default_factory=StemConf)
    blocks: BlocksConf = field(default_factory=BlocksConf)
    model: ModelConf = field(default_factory=ModelConf)
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    scheduler: SchedulerConf = field(default_factory=SchedulerConf)
    augmentation: AugmentationConf = field(default_factory=AugmentationConf)
    budget: BudgetConf = field(default_factory=BudgetConf)
    data: DataConf = field(default_factory=DataConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    mlflow: MlflowConf = field(default_factory=MlflowConf)
    dry_run: Optional[bool] = ruled(Bool())
    task: Optional[str] = ruled(_registry("training.tasks", "TASKS"))
    evaluate: EvaluateConf = field(default_factory=EvaluateConf)
    lr_range: LrRangeConf = field(default_factory=LrRangeConf)


_LAYER_KEYS = "each entry of model.layers has " + ", ".join(f.name for f in fields(LayerConf) if f.default is MISSING)
_STRUCTURED = []  # OmegaConf.structured(Config), made once (merging copies it)
# The error class says which part of the config a bad value is in (errors.py); ConfigError for the rest.
_GROUP_ERRORS = {"stem": ModelConfigError, "blocks": ModelConfigError, "model": ModelConfigError,
                 "optimizer": OptimConfigError, "scheduler": OptimConfigError, "lr_range": OptimConfigError}
MODEL_GROUPS = ("stem", "blocks", "model", "data", "budget")  # what models/ reads: the model, its input, its budget


def validate(cfg, groups=None):
    """Check every key of the composed config (or of its `groups` only) against the schema, then the rules
    that span several keys; the first bad value raises ConfigError (or its ModelConfigError/OptimConfigError
    subclass, by group) as one line. Returns the checked config: a read-only copy with every field of the
    schema (None where not given) that `checked` recognises, so it is not checked a second time."""
    if not _STRUCTURED:
        _STRUCTURED.append(OmegaConf.structured(Config))
    keys = [key for key in cfg if key != "hydra" and (groups is None or key in groups)]
    given = cfg if len(keys) == len(cfg) else OmegaConf.masked_copy(cfg, keys)
    layers = given.model.get("layers") if isinstance(given.get("model"), DictConfig) else None
    if layers is not None and (not isinstance(layers, DictConfig) or not len(layers)):
        raise _error("model.layers", f"model.layers={show_value(_at(given, 'model.layers'))}: must be a mapping of "
                                     f"named entries, e.g. model=final")
    try:
        merged = OmegaConf.merge(_STRUCTURED[0], given)
    except ConfigKeyError as err:  # a key the schema does not have
        raise _error(str(err.full_key), _unknown_key(given, str(err.full_key))) from None
    except (OmegaConfBaseException, TypeError) as err:  # a value of the wrong type
        # The rules are stricter than the types (a Number refuses a string, a group refuses a value), so the walk
        # over the rules names the key with the line that says what is allowed; OmegaConf's key is the fallback.
        _check_ranges(given, Config, "")
        key = str(getattr(err, "full_key", "") or "")
        raise _error(key, f"{key or 'the config'}: {str(err).splitlines()[0]}") from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        key = missing[0]
        if key.startswith("model.layers."):
            raise _error(key, f"{key}=(missing): required; {_LAYER_KEYS}")
        raise _error(key, f"{key}=(missing): required")
    _check_ranges(given, Config, "")
    _check_across(given)
    OmegaConf.set_readonly(merged, True)
    _returned[id(merged)] = (weakref.ref(merged, lambda _, key=id(merged): _returned.pop(key, None)),
                             None if groups is None else frozenset(groups))
    return merged


def checked(cfg, groups=None):
    """`cfg` as validate returns it: itself when validate already returned it (covering `groups`), else
    validate(cfg, groups). The one entry for code that reads the config without the gate before it (models/
    builds and counts from any composed config: tests, benchmarks, scripts), so a bad value there is the
    same one line as at the entry, and a config the gate checked is not checked again: for model=final, side by
    side on a loaded 2-core machine, param_report takes 18-20 ms from the composed config (the check is most of
    it) and 1.5 ms from the copy validate returned."""
    known = _returned.get(id(cfg))
    if known is not None and known[0]() is cfg and OmegaConf.is_readonly(cfg):
        covered = known[1]
        if covered is None or (groups is not None and set(groups) <= covered):
            return cfg
    return validate(cfg, groups)


_returned = {}  # id of a config validate returned -> (weak reference to it, the groups it covers; None: all)


def _error(key, message):
    return _GROUP_ERRORS.get(key.split(".")[0], ConfigError)(message)


def _check_ranges(node, schema, path):
    """Each key given, against its field's rule (only keys that are there: a group's YAML has its own keys)."""
    known = {f.name: f for f in fields(schema)}
    for key in node:
        where = f"{path}.{key}" if path else str(key)
        value = _value(node, key, path)
        spec = known[key]
        if key == "layers" and schema is ModelConf:
            for name in value:
                entry = _value(value, name, where)
                if not isinstance(entry, DictConfig):
                    raise _error(where, f"{where}.{name}.block=(missing): required; {_LAYER_KEYS}")
                _check_ranges(entry, LayerConf, f"{where}.{name}")
            continue
        inner = getattr(spec.type, "__dataclass_fields__", None) if isinstance(spec.type, type) else None
        if inner is not None:
            if not isinstance(value, DictConfig):
                raise _error(where, f"{where}={show_value(value)}: must be a group of keys ({', '.join(inner)})")
            _check_ranges(value, spec.type, where)
            continue
        check = _rule(spec)
        plain = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
        problem = check(plain)
        if problem:
            raise _error(where, f"{where}={show_value(plain)}: {problem}")


def _rule(spec):
    check = spec.metadata.get("rule", Anything())
    return check if isinstance(check, Rule) else check()


def _unknown_key(given, key):
    parent, _, name = key.rpartition(".")
    if parent.startswith("model.layers.") and parent.count(".") == 2:
        siblings = [f.name for f in fields(LayerConf)]
    else:
        schema = Config
        for part in parent.split(".") if parent else []:
            spec = {f.name: f for f in fields(schema)}[part]
            schema = spec.type
        siblings = [f.name for f in fields(schema)]
    owner = parent or "the config"
    return f"{key}={show_value(_at(given, key))}: not a config key; {owner} has {', '.join(siblings)}"


def _at(node, key):
    for part in key.split("."):
        node = _value(node, part)
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def show_value(value):
    """A value as it is typed on the command line (true, null, [0.9,0.99]): how every error line shows one."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(show_value(v) for v in value) + "]"
    return str(value)


def _value(node, key, path=""):
    try:
        return node[key]
    except Exception as err:  # noqa: BLE001 - an interpolation that cannot resolve (${oc.env:...}, a typo)
        where = f"{path}.{key}" if path else str(key)
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _error(where, f"{where}: cannot be resolved: {first_line}") from None


def _check_across(cfg):
    """The rules that span several keys of the config and need nothing but the config: sizes against the
    dataset's image size, a layer count against the layers there are. (Rules that need the dataset's files,
    the machine or the built model's shapes are their owners': data/, training/gate.py, models/.)"""
    _check_augmentation_sizes(cfg)
    _check_num_layers(cfg)


def _check_num_layers(cfg):
    model = cfg.get("model")
    num_layers = model.get("num_layers") if model is not None else None
    if num_layers is None or not model.get("layers"):
        return
    names = list(model.layers)
    if num_layers > len(names):
        raise ModelConfigError(f"model.num_layers={num_layers}: use an integer from 1 to {len(names)} (the first "
                               f"that many of model.layers: {', '.join(names)}), or null for all")


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
