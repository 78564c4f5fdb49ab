"""model=family and hydra/sweeper/search=family: the paper's design family as a search space (issue 11, point 3)."""
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


def test_the_family_search_space_fits_the_budget_for_a_good_share():
    """Every key of the preset exists in model=family, no proposal is invalid, and most fit 5M (2,000 proposals:
    65.5%, scripts/search_share.py; 300 here)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import search_share
    space = search_share.load_space("family")
    assert space["model.num_layers"] == ("values", [2, 3, 4, 5])
    assert space["stem"] == ("values", ["conv3x3", "conv5x5"])
    assert {f"model.layers.layer{i}.{key}" for i in range(1, 6) for key in ("block", "blocks", "channels", "dropout")} \
        <= set(space)
    shares = search_share.main(["family", "model=family", "-n", "300", "--seed", "1"])
    assert shares["invalid"] == 0 and 0.5 < shares["within"] < 0.85
