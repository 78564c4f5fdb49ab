"""Every key a user can set has its rule in one place (training/schema.py), met at the one entry.

A table holds a bad value for every key of every group; each goes through training.app.main, the function
train.py's Hydra task calls, and must end in exactly one line `error: <key>=<value>: ...` on stderr with
exit status 2. The table is checked against the schema, so a key added without a row fails here. A few
rows run as real `python train.py` processes; the code paths that count or build a model without the gate
(models/: param_report, build_model) give the same line for the same value.
"""
import os
import subprocess
import sys
from dataclasses import fields

import pytest
from hydra import compose, initialize_config_dir

from errors import ConfigError
from models import build_model, param_report
from tests.conftest import CONF_DIR
from tests.faultkit import REPO, train_env
from training import app
from training.gate import gflops_over_budget, params_over_budget
from training.schema import Config, LayerConf

BASE = ["model=tiny"]

ROWS = [  # (overrides after BASE, key, the value as the line shows it)
    # stem
    (["stem.name=''"], "stem.name", ""),
    (["stem.channels=0"], "stem.channels", "0"),
    (["stem.kernel_size=0"], "stem.kernel_size", "0"),
    (["stem.stride=0"], "stem.stride", "0"),
    (["stem.padding=-1"], "stem.padding", "-1"),
    (["stem.maxpool=maybe"], "stem.maxpool", "maybe"),
    # blocks
    (["blocks.name=''"], "blocks.name", ""),
    (["blocks.bottleneck_reduction=0"], "blocks.bottleneck_reduction", "0"),
    (["blocks.k2_design=mirror"], "blocks.k2_design", "mirror"),
    # model
    (["model.name=''"], "model.name", ""),
    (["model.num_classes=0"], "model.num_classes", "0"),
    (["model=family", "model.num_layers=0"], "model.num_layers", "0"),
    (["model=family", "model.num_layers=6"], "model.num_layers", "6"),  # more than model.layers has
    (["model.width_mult=-1"], "model.width_mult", "-1"),
    (["model.depth_mult=0"], "model.depth_mult", "0"),
    (["model.dropout=1.0"], "model.dropout", "1.0"),
    (["+model.budget_note=5"], "model.budget_note", "5"),
    (["model.layers=5"], "model.layers", "5"),
    (["model.zero_init_residual=maybe"], "model.zero_init_residual", "maybe"),
    (["model.bn_momentum=0"], "model.bn_momentum", "0"),
    (["model.layers.layer1.block=wide"], "model.layers.layer1.block", "wide"),
    (["model.layers.layer2.blocks=0"], "model.layers.layer2.blocks", "0"),
    (["model.layers.layer1.channels=-8"], "model.layers.layer1.channels", "-8"),
    (["model.layers.layer2.dropout=-0.1"], "model.layers.layer2.dropout", "-0.1"),
    (["model.layers.layer1.kernel_size=4"], "model.layers.layer1.kernel_size", "4"),
    # optimizer
    (["optimizer.name=lamb"], "optimizer.name", "lamb"),
    (["optimizer.lr=0"], "optimizer.lr", "0"),
    (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay", "-0.1"),
    (["optimizer.betas=[0.9]"], "optimizer.betas", "[0.9]"),
    (["optimizer=sgd", "optimizer.momentum=1.0"], "optimizer.momentum", "1.0"),
    (["optimizer=sgd", "optimizer.nesterov=maybe"], "optimizer.nesterov", "maybe"),
    (["optimizer.decay_norm_and_bias=maybe"], "optimizer.decay_norm_and_bias", "maybe"),
    (["optimizer=sgd", "optimizer.scale_lr_with_batch=2"], "optimizer.scale_lr_with_batch", "2"),
    (["optimizer.per_1024_images=maybe"], "optimizer.per_1024_images", "maybe"),
    # scheduler
    (["scheduler.name=warm"], "scheduler.name", "warm"),
    (["scheduler.warmup_epochs=-1"], "scheduler.warmup_epochs", "-1"),
    (["scheduler.min_lr_ratio=2"], "scheduler.min_lr_ratio", "2"),
    (["scheduler.warmup_start=-0.5"], "scheduler.warmup_start", "-0.5"),
    (["scheduler.decay=exp"], "scheduler.decay", "exp"),
    (["scheduler=onecycle", "scheduler.max_lr=0"], "scheduler.max_lr", "0"),
    (["scheduler=onecycle", "scheduler.pct_start=0"], "scheduler.pct_start", "0"),
    (["scheduler=onecycle", "scheduler.anneal_strategy=cubic"], "scheduler.anneal_strategy", "cubic"),
    (["scheduler=onecycle", "scheduler.div_factor=0"], "scheduler.div_factor", "0"),
    (["scheduler=onecycle", "scheduler.final_div_factor=-1"], "scheduler.final_div_factor", "-1"),
    (["scheduler=cyclic", "scheduler.base_lr=0"], "scheduler.base_lr", "0"),
    (["scheduler=cyclic", "scheduler.step_size_up_epochs=0"], "scheduler.step_size_up_epochs", "0"),
    (["scheduler=cyclic", "scheduler.mode=sawtooth"], "scheduler.mode", "sawtooth"),
    (["scheduler=cyclic", "scheduler.bounds_from=''"], "scheduler.bounds_from", ""),
    (["scheduler=step", "scheduler.step_epochs=0"], "scheduler.step_epochs", "0"),
    (["scheduler=step", "scheduler.gamma=0"], "scheduler.gamma", "0"),
    # augmentation
    (["augmentation.name=mixup"], "augmentation.name", "mixup"),
    (["augmentation.rotation_degrees=200"], "augmentation.rotation_degrees", "200"),
    (["augmentation.crop_padding=-1"], "augmentation.crop_padding", "-1"),
    (["augmentation.crop_padding=17"], "augmentation.crop_padding", "17"),  # more than half of data.image_size
    (["augmentation.flip=sometimes"], "augmentation.flip", "sometimes"),
    (["augmentation.cutout=-1"], "augmentation.cutout", "-1"),
    # budget
    (["budget.max_params=0"], "budget.max_params", "0"),
    (["budget.max_gflops=0"], "budget.max_gflops", "0"),
    # data
    (["data.name=imagenet"], "data.name", "imagenet"),
    (["data.root=''"], "data.root", ""),
    (["data.download=maybe"], "data.download", "maybe"),
    (["data.val_size=-1"], "data.val_size", "-1"),
    (["data.subset=1"], "data.subset", "1"),
    (["data.split_seed=-1"], "data.split_seed", "-1"),
    (["data.train_images=0"], "data.train_images", "0"),
    (["data.test_images=0"], "data.test_images", "0"),
    (["data.num_classes=0"], "data.num_classes", "0"),
    (["data.image_size=0"], "data.image_size", "0"),
    (["data.mean=[0.5,0.5]"], "data.mean", "[0.5,0.5]"),
    (["data.std=[0.2,0,0.2]"], "data.std", "[0.2,0,0.2]"),
    (["data.autoaugment_policy=cifar100"], "data.autoaugment_policy", "cifar100"),
    # trainer
    (["trainer.epochs=0"], "trainer.epochs", "0"),
    (["trainer.batch_size=-32"], "trainer.batch_size", "-32"),
    (["trainer.eval_batch_size=0"], "trainer.eval_batch_size", "0"),
    (["trainer.device=tpu"], "trainer.device", "tpu"),
    (["trainer.precision=fp64"], "trainer.precision", "fp64"),
    (["trainer.seed=-1"], "trainer.seed", "-1"),
    (["trainer.label_smoothing=1.0"], "trainer.label_smoothing", "1.0"),
    (["trainer.grad_clip=0"], "trainer.grad_clip", "0"),
    (["trainer.channels_last=maybe"], "trainer.channels_last", "maybe"),
    (["trainer.compile=maybe"], "trainer.compile", "maybe"),
    (["trainer.cuda_graphs=maybe"], "trainer.cuda_graphs", "maybe"),
    (["trainer.fused_optimizer=maybe"], "trainer.fused_optimizer", "maybe"),
    (["trainer.tta=rotate"], "trainer.tta", "rotate"),
    (["trainer.ema_decay=1.0"], "trainer.ema_decay", "1.0"),
    (["trainer.log_every=-1"], "trainer.log_every", "-1"),
    (["trainer.resume=maybe"], "trainer.resume", "maybe"),
    (["trainer.checkpoint_dir=/proc/checkpoints"], "trainer.checkpoint_dir", "/proc/checkpoints"),
    (["trainer.keep_checkpoint=maybe"], "trainer.keep_checkpoint", "maybe"),
    (["trainer.save_weights=weights/"], "trainer.save_weights", "weights/"),
    # mlflow
    (["mlflow.tracking_uri=''"], "mlflow.tracking_uri", ""),
    (["mlflow.experiment=''"], "mlflow.experiment", ""),
    (["mlflow.run_name=''"], "mlflow.run_name", ""),
    (["mlflow.log_model=maybe"], "mlflow.log_model", "maybe"),
    (["mlflow.log_datasets=maybe"], "mlflow.log_datasets", "maybe"),
    (["mlflow.register_best=''"], "mlflow.register_best", ""),
    (["mlflow.model_format=onnx"], "mlflow.model_format", "onnx"),
    (["mlflow.system_metrics=maybe"], "mlflow.system_metrics", "maybe"),
    (["mlflow.log_curves=maybe"], "mlflow.log_curves", "maybe"),
    # the top level, evaluate, lr_range
    (["dry_run=maybe"], "dry_run", "maybe"),
    (["task=fly"], "task", "fly"),
    (["evaluate.weights=''"], "evaluate.weights", ""),
    (["lr_range.min_lr=0"], "lr_range.min_lr", "0"),
    (["lr_range.max_lr=-1"], "lr_range.max_lr", "-1"),
    (["lr_range.steps=5"], "lr_range.steps", "5"),
    (["lr_range.smoothing=1.0"], "lr_range.smoothing", "1.0"),
    (["lr_range.divergence=1"], "lr_range.divergence", "1"),
    (["lr_range.rule=fastest"], "lr_range.rule", "fastest"),
    (["lr_range.min_lr_divisor=1"], "lr_range.min_lr_divisor", "1"),
]

ONE_LINE_CASES = [  # (overrides after BASE, the line's start): a key the schema lacks, a value of the wrong type,
    # a key the chosen optimizer or schedule does not read (ignored before, without a word), a name whose keys the
    # group lacks (a traceback before: ConfigAttributeError from the build's plan)
    (["optimizer.name=sgd"], "error: optimizer.name=sgd: needs optimizer.momentum, optimizer.nesterov, which this "
                             "config does not set: choose it with optimizer=sgd"),
    (["scheduler.name=step"], "error: scheduler.name=step: needs scheduler.step_epochs, scheduler.gamma"),
    (["+optimizer.momentum=0.9"], "error: optimizer.momentum=0.9: adamw does not use it (it is for optimizer=sgd); "
                                  "optimizer=adamw takes lr, betas, weight_decay"),
    (["optimizer=sgd", "+optimizer.betas=[0.9,0.99]"], "error: optimizer.betas=[0.9,0.99]: sgd does not use it (it "
                                                       "is for optimizer=adam or optimizer=adamw)"),
    (["scheduler=step", "+scheduler.max_lr=0.1"], "error: scheduler.max_lr=0.1: step does not use it (it is for "
                                                  "scheduler=onecycle or scheduler=cyclic); scheduler=step takes "
                                                  "step_epochs, gamma"),
    (["recipe=short", "optimizer=adamw"], "error: optimizer.momentum=0.9: adamw does not use it"),  # the recipe's SGD keys
    (["+trainer.foo=1"], "error: trainer.foo=1: not a config key; trainer has epochs, batch_size"),
    (["+model.layers.layer1.width=3"], "error: model.layers.layer1.width=3: not a config key; model.layers.layer1 "
                                       "has block, blocks, channels"),
    (["+extra=1"], "error: extra=1: not a config key; the config has stem, blocks, model"),
    (["trainer.epochs=ten"], "error: trainer.epochs=ten: must be an integer >= 1"),
    (["trainer.epochs=2.5"], "error: trainer.epochs=2.5: must be an integer >= 1"),
    (["model.width_mult=true"], "error: model.width_mult=true: must be a number > 0"),
    (["optimizer.betas=0.9"], "error: optimizer.betas=0.9: must be a list of 2 numbers"),
    (["data.mean=abc"], "error: data.mean=abc: must be a list of 3 numbers"),
    (["trainer=5"], "error: trainer=5: must be a group of keys (epochs, batch_size"),
]


@pytest.fixture(scope="module")
def compose_here():
    """compose() inside one initialised Hydra for the whole module, each list of overrides once (composing
    is most of a case's time; nothing here changes a config)."""
    composed = {}
    with initialize_config_dir(config_dir=CONF_DIR):
        def get(overrides):
            if tuple(overrides) not in composed:
                composed[tuple(overrides)] = compose("config", overrides=list(overrides))
            return composed[tuple(overrides)]
        yield get


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One empty working folder for the module's cases (a relative path in a row stays there)."""
    folder, before = tmp_path_factory.mktemp("cwd"), os.getcwd()
    os.chdir(folder)
    yield folder
    os.chdir(before)


def entry_line(cfg, capsys):
    """What train.py's task function prints for cfg, and its exit status."""
    with pytest.raises(SystemExit) as stopped:
        app.main(cfg)
    return capsys.readouterr().err, stopped.value.code


def leaf_keys():
    """Every key of the schema, with model.layers.* for the keys of each layer."""
    def walk(schema, prefix):
        for spec in fields(schema):
            inner = spec.type if isinstance(spec.type, type) and hasattr(spec.type, "__dataclass_fields__") else None
            if inner is not None:
                yield from walk(inner, f"{prefix}{spec.name}.")
            else:
                yield f"{prefix}{spec.name}"
    yield from walk(Config, "")
    yield from (f"model.layers.*.{spec.name}" for spec in fields(LayerConf))


def generic(key):
    parts = key.split(".")
    return ".".join(parts[:2] + ["*"] + parts[3:]) if key.startswith("model.layers.") else key


def test_the_table_has_a_bad_value_for_every_key_of_the_schema():
    covered = {generic(key) for _, key, _ in ROWS}
    assert set(leaf_keys()) - covered == set()


@pytest.mark.parametrize("overrides, key, value", ROWS, ids=[" ".join(row[0]) for row in ROWS])
def test_a_bad_value_of_every_key_is_one_line_and_exit_2(overrides, key, value, compose_here, capsys, workdir):
    err, code = entry_line(compose_here([*BASE, *overrides]), capsys)
    assert code == 2
    assert err.startswith(f"error: {key}={value}: ") and err.count("\n") == 1, err
    assert list(workdir.iterdir()) == []  # nothing written


@pytest.mark.parametrize("overrides, start", ONE_LINE_CASES, ids=[" ".join(c[0]) for c in ONE_LINE_CASES])
def test_an_unknown_key_or_a_wrong_type_is_one_line(overrides, start, compose_here, capsys):
    err, code = entry_line(compose_here([*BASE, *overrides]), capsys)
    assert code == 2 and err.startswith(start) and err.count("\n") == 1, err


MODEL_ROWS = [row for row in ROWS if row[1].split(".")[0] in ("stem", "blocks", "model")
              or row[1] in ("budget.max_params", "budget.max_gflops", "data.image_size")]


@pytest.mark.parametrize("overrides, key, value", MODEL_ROWS, ids=[" ".join(row[0]) for row in MODEL_ROWS])
def test_building_or_counting_without_the_gate_gives_the_same_line(overrides, key, value, compose_here):
    """models/ only converts; from any composed config it goes through the schema's rules first."""
    cfg = compose_here([*BASE, *overrides])
    for path in (param_report, lambda c: build_model(c, device="meta")):  # (both through model_spec)
        with pytest.raises(ConfigError) as caught:
            path(cfg)
        assert str(caught.value).startswith(f"{key}={value}: ") and "\n" not in str(caught.value)


@pytest.mark.parametrize("overrides, key, value", [row for row in ROWS if row[1] in (
    "stem.channels", "model.layers.layer1.kernel_size", "trainer.precision", "lr_range.min_lr")], ids=str)
def test_the_sweepers_constraints_give_the_same_line(overrides, key, value, compose_here):
    """hydra.sweeper.constraints call the gate on each proposal's composed job config: the same rules."""
    cfg = compose_here([*BASE, *overrides])
    for constraint in (params_over_budget, gflops_over_budget):
        with pytest.raises(ConfigError) as caught:
            constraint(cfg)
        assert str(caught.value).startswith(f"{key}={value}: ") and "\n" not in str(caught.value)


def test_a_config_the_gate_checked_is_not_checked_again(compose_here, monkeypatch):
    """The gate hands models/ the copy validate returned: read-only, so still what was checked."""
    from omegaconf.errors import ReadonlyConfigError
    from training import schema
    cfg = compose_here(BASE)
    valid, calls, real = schema.validate(cfg), [], schema.validate
    monkeypatch.setattr(schema, "validate", lambda *args, **kwargs: calls.append(args) or real(*args, **kwargs))
    assert param_report(valid).total == param_report(cfg).total == 135_370
    assert len(calls) == 1 and calls[0][0] is cfg  # the composed config is checked; the checked copy is not
    with pytest.raises(ReadonlyConfigError):
        valid.model.width_mult = -1.0


SUBPROCESS_ROWS = [  # real train.py processes, both started at once (imports dominate)
    (["stem.kernel_size=0"], "error: stem.kernel_size=0: must be an integer >= 1"),
    (["+budget.max_flops=1"], "error: budget.max_flops=1: not a config key; budget has max_params, max_gflops"),
]


def test_train_py_prints_the_same_one_line_and_exits_2(tmp_path):
    jobs = [(want, subprocess.Popen([sys.executable, str(REPO / "train.py"), *BASE, *args], cwd=tmp_path,
                                    env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            for args, want in SUBPROCESS_ROWS]
    for want, job in jobs:
        out, err = job.communicate(timeout=240)
        assert job.returncode == 2, err
        assert err.startswith(want) and err.count("\n") == 1 and "Traceback" not in out, err
    assert {path.name for path in tmp_path.iterdir()} <= {"outputs"}  # Hydra's run folder only: no store, no checkpoint



def test_the_gate_checks_every_optimizer_and_schedule_without_building_one():
    """The gate meets the optimizer's and the schedule's rules by planning them (training/optim.py): building a
    torch optimizer imports torch._dynamo, ~1.2 s of every dry run and of every sweep's parent process."""
    script = ("import sys, itertools\n"
              "from tests.conftest import compose_cfg\n"
              "from training.gate import check_config\n"
              "from training.optim import OPTIMIZERS, SCHEDULERS\n"
              "for name, schedule in itertools.product(OPTIMIZERS, SCHEDULERS):\n"
              "    check_config(compose_cfg(['model=tiny', f'optimizer={name}', f'scheduler={schedule}']))\n"
              "try:\n"
              "    check_config(compose_cfg(['model=tiny', 'optimizer=sgd', 'optimizer.momentum=0']))\n"
              "except Exception as err:\n"
              "    print(err)\n"
              "print('torch._dynamo' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=train_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["optimizer.momentum=0: Nesterov momentum needs a momentum > 0; set "
                                          "optimizer.nesterov=false for plain SGD", "False"]

README_ROWS = [  # docs/faults.md "Bad input" (the README links it): each config row's line, as the table gives it
    (["model.layers.layer1.block=inverted"], "model.layers.layer1.block=inverted: use one of basic, bottleneck"),
    (["model.depth_mult=abc"], "model.depth_mult=abc: must be a number > 0"),
    (["trainer.epochs=ten"], "trainer.epochs=ten: must be an integer >= 1"),
    (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay=-0.1: must be a number >= 0"),
    (["trainer.grad_clip=-1.0"], "trainer.grad_clip=-1.0: must be a number > 0, or null"),
    (["trainer.label_smoothing=1.5"], "trainer.label_smoothing=1.5: must be a number in [0, 1)"),
    (["model.num_classes=0"], "model.num_classes=0: must be an integer >= 1"),
    (["optimizer=sgd", "optimizer.momentum=0"], "optimizer.momentum=0: Nesterov momentum needs a momentum > 0; set "
                                                "optimizer.nesterov=false for plain SGD"),
    (["optimizer.betas=[0.9]"], "optimizer.betas=[0.9]: must be a list of 2 numbers, each one that is a number in "
                                "[0, 1)"),
    (["trainer.checkpoint_dir=/proc/checkpoints"], "trainer.checkpoint_dir=/proc/checkpoints: must be a folder this "
     "process can create and write to, or null: cannot write in /proc (No such file or directory)"),
    (["trainer.seed=99999999999999999999"], "trainer.seed=99999999999999999999: must be an integer in "
                                            "[0, 4294967295]"),
    (["data.split_seed=99999999999999999999"], "data.split_seed=99999999999999999999: must be an integer in "
                                               "[0, 4294967295]"),
    (["augmentation.cutout=100"], "augmentation.cutout=100: must be an integer in [0, 32] (data.image_size; 0 turns "
                                  "cutout off)"),
    (["augmentation.crop_padding=1000"], "augmentation.crop_padding=1000: must be an integer in [0, 16] (half of "
                                         "data.image_size)"),
    (["data.subset=1"], "data.subset=1: must be an integer >= 2, or null (BatchNorm needs 2 images in a step)"),
    (["~model.layers.layer1.channels"], "model.layers.layer1.channels=(missing): required; each entry of "
                                        "model.layers has block, blocks, channels"),
    (["+model.layers.layer5={block:basic,blocks:1}"], "model.layers.layer5.channels=(missing): required; each entry "
                                                      "of model.layers has block, blocks, channels"),
    (["+trainer.foo=1"], "trainer.foo=1: not a config key; trainer has epochs, batch_size, ..."),
    (["data.root=${oc.env:NO_SUCH_VARIABLE}"], "data.root: cannot be resolved: KeyError raised while resolving "
                                               "interpolation: \"Environment variable 'NO_SUCH_VARIABLE' not found\""),
    (["optimizer.name=lamb"], "optimizer.name=lamb: use one of adam, adamw, sgd"),
    (["scheduler.name=warm"], "scheduler.name=warm: use one of constant, cosine, onecycle, cyclic, step"),
    (["augmentation.name=mixup"], "augmentation.name=mixup: use one of none, simple, autoaugment"),
    (["model.layers.layer2.blocks=-2"], "model.layers.layer2.blocks=-2: must be an integer >= 1 (remove a layer with "
                                        "~model.layers.NAME)"),
    (["model.layers.layer1.channels=-64"], "model.layers.layer1.channels=-64: must be an integer >= 1"),
    (["stem.channels=0"], "stem.channels=0: must be an integer >= 1"),
    (["model.layers.layer2.dropout=-0.1"], "model.layers.layer2.dropout=-0.1: must be a number in [0, 1), or null"),
    (["model.layers.layer3.channels=130"], "model.layers.layer3: bottleneck channels 130 are not divisible by "
                                           "blocks.bottleneck_reduction=4: pick a multiple of 4"),
    (["model=resnet18_k2_pad", "stem=conv5x5"], "model.layers.layer2 block 0 cannot take the 15x15 feature map that "
     "stem 'conv5x5' and the layers before it produce (body gives 7x7, shortcut 8x8). Kernel-2 blocks need even "
     "feature maps at each stride-2 block: use stem=conv3x3."),
    (["trainer.batch_size=-32"], "trainer.batch_size=-32: must be an integer >= 1"),
    (["data=cifar100", "data.num_classes=10"], "data.num_classes=10: cifar100 has 100; remove the override (it is a "
                                               "property of the dataset, set by data=cifar100)"),
    (["model.num_classes=5"], "model.num_classes=5: must equal data.num_classes=10 for cifar10 (presets use "
                              "num_classes: ${data.num_classes})"),
    (["data.val_size=50000"], "data.val_size=50000: must be an integer in [0, data.train_images=50000)"),
    (["data.autoaugment_policy=cifar100"], "data.autoaugment_policy=cifar100: use one of cifar10, imagenet, svhn"),
    (["model=resnet18"], "model has 11,172,170 parameters, over the budget of 5,000,000 by 6,172,170 (largest: ..."),
    (["stem=conv3x3", "budget.max_gflops=2"], "model needs 4.401 training GFLOP per image, over the FLOPs budget "
                                              "(budget.max_gflops=2) by 2.401 (largest: ..."),
    (["optimizer=sgd", "optimizer.per_1024_images=true", "optimizer.scale_lr_with_batch=true"],
     "optimizer.per_1024_images=true and optimizer.scale_lr_with_batch=true both scale the lr with the batch: set "
     "one of them to false"),
    (["model=family", "model.num_layers=6"], "model.num_layers=6: use an integer from 1 to 5 (the first that many of "
                                             "model.layers: layer1, layer2, layer3, layer4, layer5), or null for all"),
    (["model.bn_momentum=2"], "model.bn_momentum=2: must be a number in (0, 1]"),
]


@pytest.mark.parametrize("overrides, line", README_ROWS, ids=[" ".join(row[0]) for row in README_ROWS])
def test_the_bad_input_table_still_holds(overrides, line, compose_here, capsys):
    """On the default config (model=final), as the table's commands run; `...` ends a line the table cuts."""
    err, code = entry_line(compose_here(overrides), capsys)
    assert code == 2 and err.count("\n") == 1, err
    shown = err.rstrip("\n")
    assert shown.startswith("error: " + line[:-3]) if line.endswith("...") else shown == "error: " + line
