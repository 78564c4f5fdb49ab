"""The budget check's short path to a trial's config gives what Hydra's full composition gives."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from sweeper.compose import JobConfigs
from tests.conftest import CONF_DIR
from tests.faultkit import fastest_of_three

PROPOSALS = [  # as the plugin writes them: sampled values, then the command line's fixed overrides
    ["model.depth_mult=0.75", "model.width_mult=1.125", "model.dropout=0.1234", "model=final"],
    ["model.depth_mult=1.5", "model.width_mult=0.5", "model.dropout=0.0", "model=final"],
    ["model.layers.layer3.blocks=12", "model.layers.layer1.channels=96", "model=final", "trainer.epochs=3"],
    ["optimizer=sgd", "optimizer.lr=0.05", "scheduler=onecycle", "trainer.label_smoothing=0.1", "model=tiny"],
    ["optimizer=adamw", "optimizer.lr=0.002", "scheduler=cosine", "trainer.label_smoothing=0.0", "model=tiny"],
    ["model.dropout=0.2", "+extra.note=hello", "model=tiny"],   # an add: composed in full
    ["model.dropout=0.3", "budget.max_params=1000000", "model=tiny", "stem=conv3x3"],
]


@pytest.fixture()
def job_configs():
    with initialize_config_dir(config_dir=CONF_DIR):
        master = compose("config", overrides=["hydra/sweeper=optuna"], return_hydra_config=True)
        yield JobConfigs(GlobalHydra.instance().config_loader(), master)


def job_part(cfg):
    """The job's keys, resolved; Hydra's own node left out."""
    return {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
            for key in cfg if key != "hydra"}


@pytest.mark.parametrize("overrides", PROPOSALS, ids=[p[0] for p in PROPOSALS])
def test_short_path_equals_full_composition(job_configs, overrides):
    assert job_part(job_configs(overrides)) == job_part(job_configs.full(overrides))


def test_proposals_share_compositions_and_cost_milliseconds(job_configs):
    first = job_configs(PROPOSALS[0])
    second = job_configs(PROPOSALS[1])
    # measured side by side: machine load hits both
    assert fastest_of_three(job_configs, PROPOSALS[1]) < fastest_of_three(job_configs.full, PROPOSALS[1]) / 2
    assert len(job_configs.compositions) == 1  # both are model=final plus plain values
    assert first.model.dropout == 0.1234 and second.model.dropout == 0.0  # copies, not one shared config


def test_a_bad_key_gets_hydras_own_error(job_configs):
    with pytest.raises(Exception, match="Could not override 'model.dropuot'"):
        job_configs(["model.dropuot=0.1", "model=tiny"])
