"""model=family and hydra/sweeper/search=family: the paper's design family as a search space."""
import pytest

from errors import ModelConfigError
from models import build_model, param_report
from tests.conftest import compose_cfg


def test_family_preset_counts_and_builds():
    cfg = compose_cfg(["model=family"])
    report = param_report(cfg)
    assert report.total == 4_904_522 and report.feasible
    assert sum(p.numel() for p in build_model(cfg).parameters()) == report.total
    assert list(build_model(cfg).layers) == ["layer1", "layer2", "layer3", "layer4"]  # num_layers: 4 of the 5


@pytest.mark.parametrize("num_layers", [2, 3, 5])
def test_num_layers_uses_the_first_layers_exactly_as_removing_the_rest(num_layers):
    kept = compose_cfg(["model=family", f"model.num_layers={num_layers}"])
    removed = compose_cfg(["model=family", "model.num_layers=null"]
                          + [f"~model.layers.layer{i}" for i in range(num_layers + 1, 6)])
    assert param_report(kept).total == param_report(removed).total
    assert param_report(kept).train_gflops == param_report(removed).train_gflops
    assert len(build_model(kept).layers) == num_layers


@pytest.mark.parametrize("value", [0, 6, "two"])
def test_num_layers_out_of_range_is_one_line(value):
    with pytest.raises(Exception) as caught:
        param_report(compose_cfg(["model=family", f"model.num_layers={value}"]))
    assert "model.num_layers" in str(caught.value) and "\n" not in str(caught.value)
    if value == 6:
        assert isinstance(caught.value, ModelConfigError) and "use an integer from 1 to 5" in str(caught.value)


def test_published_counts_do_not_see_num_layers():
    """Presets without the key use every layer, as before."""
    assert param_report(compose_cfg(["model=final"])).total == 4_997_194


def test_the_family_search_space_fits_the_budget_for_a_good_share(tmp_path):
    """Every key of the preset exists in model=family, no proposal is invalid, and most fit 5M: the preview's
    stats (hydra.sweeper.preview=stats) over random proposals from the sweep's own proposer (300 here)."""
    import re
    from tests.test_sweep_preview import preview
    result = preview(tmp_path, "hydra/sweeper/search=family", "model=family", "hydra.sweeper.preview=stats",
                     "hydra.sweeper.n_trials=300", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=1")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert not any(line.startswith("#") for line in lines)  # stats only, no line per proposal
    assert re.match(r"proposals=300 feasible=\d+ over_budget=\d+$", lines[-1]) and lines[-2] == "invalid=0 repeats=0"
    quartiles = [int(q.replace(",", "")) for q in re.search(
        r"^params of those within: min [\d,]+, quartiles ([\d,]+) / ([\d,]+) / ([\d,]+), max ([\d,]+)$",
        result.stdout, re.M).groups()]
    assert quartiles == sorted(quartiles) and quartiles[-1] <= 5_000_000
    share = float(re.search(r"^share_within_budget=([\d.]+)$", result.stdout, re.M).group(1))
    assert 0.5 < share < 0.85
