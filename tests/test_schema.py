"""The config schema (training/schema.py): every shipped option passes it, and bad values are one line."""
from pathlib import Path

import pytest

from errors import ConfigError
from tests.conftest import CONF_DIR, compose_cfg
from training.schema import validate

GROUPS = sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir() and p.name != "hydra")


def options(group):
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("override", [f"{g}={o}" for g in GROUPS for o in options(g)])
def test_every_shipped_option_passes_the_schema(override):
    """A key added to a YAML file but not to the schema fails here, not in a user's run."""
    validate(compose_cfg([override]))


def test_the_lr_range_task_and_every_scheduler_with_every_optimizer_pass():
    for optimizer in options("optimizer"):
        for scheduler in options("scheduler"):
            validate(compose_cfg([f"optimizer={optimizer}", f"scheduler={scheduler}", "task=lr_range_test"]))


@pytest.mark.parametrize("override, message", [
    ("model.width_mult=0", "model.width_mult=0: must be a number > 0"),
    ("model.width_mult=true", "model.width_mult=true: must be a number > 0"),
    ("optimizer.lr=nan", "optimizer.lr=nan: must be a number > 0"),
    ("trainer.ema_decay=1.0", "trainer.ema_decay=1.0: must be a number in (0, 1), or null"),
    ("trainer.channels_last=maybe", "trainer.channels_last=maybe: use one of auto, true, false"),
    ("trainer.seed=-1", "trainer.seed=-1: must be an integer in [0, 4294967295]"),
    ("trainer.seed=99999999999999999999", "trainer.seed=99999999999999999999: must be an integer in [0, 4294967295]"),
    ("data.split_seed=4294967296", "data.split_seed=4294967296: must be an integer in [0, 4294967295]"),
    ("scheduler=onecycle scheduler.pct_start=1.5", "scheduler.pct_start=1.5: must be a number in (0, 1)"),
    ("data.subset=0", "data.subset=0: must be an integer >= 2, or null"),
    ("data.subset=1", "data.subset=1: must be an integer >= 2, or null (BatchNorm needs 2 images in a step)"),
    ("augmentation.cutout=33", "augmentation.cutout=33: must be an integer in [0, 32]"),
    ("augmentation.crop_padding=17", "augmentation.crop_padding=17: must be an integer in [0, 16]"),
    ("+model.layers.layer5={block:basic,blocks:1}",
     "model.layers.layer5.channels=(missing): required; each entry of model.layers has block, blocks, channels"),
    ("~model.layers.layer1.block", "model.layers.layer1.block=(missing): required"),
    ("mlflow.experiment=''", "mlflow.experiment=: must be a non-empty string"),
    ("model.layers.layer1.kernel_size=1.5", "model.layers.layer1.kernel_size=1.5: must be an integer >= 1"),
    ("+model.layers.layer1.width=3", "model.layers.layer1.width=3: not a config key; model.layers.layer1 has block"),
    ("+extra=1", "extra=1: not a config key; the config has stem, blocks, model"),
])
def test_bad_values_name_the_key_the_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as caught:
        validate(compose_cfg(["model=tiny", *override.split()]))
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_a_writable_checkpoint_folder_is_not_created_by_the_check(tmp_path):
    folder = tmp_path / "not" / "yet"
    validate(compose_cfg([f"trainer.checkpoint_dir={folder}"]))
    assert not (tmp_path / "not").exists() and list(tmp_path.iterdir()) == []


def test_weights_go_to_a_writable_file_not_a_folder(tmp_path):
    (tmp_path / "results").mkdir()
    with pytest.raises(ConfigError, match=r"^trainer.save_weights=.*results: must be a file path .* is a folder$"):
        validate(compose_cfg([f"trainer.save_weights={tmp_path / 'results'}"]))
    with pytest.raises(ConfigError, match=r"^trainer.save_weights=/proc/w.pt: must be a file path .*cannot write in /proc"):
        validate(compose_cfg(["trainer.save_weights=/proc/w.pt"]))
    validate(compose_cfg([f"trainer.save_weights={tmp_path / 'new' / 'w.pt'}"]))
    assert not (tmp_path / "new").exists()
