"""Conditional search spaces (hydra.sweeper.when): keys drawn only when a condition on earlier keys holds."""
import re

import optuna
import pytest

from errors import UsageError
from sweeper import space as space_mod
from tests.test_sweep_preview import SUMMARY, preview

LAYERS = {"model.num_layers": "range(2, 4)", "model.layers.layer1.blocks": "range(1, 3)",
          "model.layers.layer2.blocks": "range(1, 3)", "model.layers.layer3.blocks": "range(1, 3)",
          "model.layers.layer3.channels": "choice(128, 256)"}


def test_a_key_is_drawn_only_when_its_condition_holds():
    space, fixed = space_mod.parse(LAYERS, [], {"model.layers.layer3.*": "model.num_layers >= 3"})
    assert fixed == [] and list(space.when) == ["model.layers.layer3.blocks", "model.layers.layer3.channels"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    for _ in range(30):
        trial = study.ask()
        drawn.append(space_mod.draw(trial, space))
        assert trial.params == drawn[-1]  # what the trial records is what was drawn, nothing more
    two = [d for d in drawn if d["model.num_layers"] == 2]
    three = [d for d in drawn if d["model.num_layers"] == 3]
    assert two and three
    assert all(len(d) == 3 for d in two) and all(len(d) == 5 for d in three)
    # 2 layers: 2 x 2 cells; 3 layers: 2 x 2 x 2 x 2; every cell's keys are exactly those the space draws for it
    assert space_mod.size(space) == 4 + 16
    assert all(space_mod.in_space(space, cell) for cell in space_mod.cells(space))
    assert not space_mod.in_space(space, dict(two[0], **{"model.layers.layer3.blocks": 1}))  # an undrawn key given
    assert not space_mod.in_space(space, {k: v for k, v in three[0].items() if k != "model.layers.layer3.blocks"})


def test_conditions_join_with_and_or_and_in():
    space, _ = space_mod.parse({"a": "choice(x, y, z)", "n": "range(1, 5)", "b": "choice(0, 1)", "c": "choice(0, 1)"},
                               [], {"b": "a in [x, 'y'] and n > 2 or a == z", "c": "a not in [x]"})
    holds = lambda key, drawn: space_mod.conditions_mod.active(space.when, key, drawn)  # noqa: E731
    assert holds("b", {"a": "y", "n": 3}) and not holds("b", {"a": "y", "n": 2}) and holds("b", {"a": "z", "n": 1})
    assert holds("c", {"a": "y"}) and not holds("c", {"a": "x"}) and not holds("c", {})  # a key not drawn: false


@pytest.mark.parametrize("when, message", [
    ({"model.layers.layer3.*": "model.num_layer >= 3"},
     "hydra.sweeper.when.model.layers.layer3.*=model.num_layer >= 3: model.num_layer is not a search key"),
    ({"model.layers.layer3.*": "model.num_layers => 3"}, "hydra.sweeper.when.model.layers.layer3.*=model.num_layers => 3: "),
    ({"model.num_layers": "model.layers.layer1.blocks > 1"},
     "model.layers.layer1.blocks is drawn after (or is) model.num_layers: a condition reads only keys drawn before"),
    ({"model.layers.layer9.*": "model.num_layers >= 3"}, "model.layers.layer9.* matches no search key"),
    ({"model.layers.layer3.*": "model.num_layers == three"}, "model.num_layers is"),
    ({"model.layers.layer3.*": "model.num_layers >= 3 and"}, "it ends too early"),
])
def test_a_condition_that_cannot_work_is_one_line(when, message):
    with pytest.raises(UsageError) as caught:
        space_mod.parse(LAYERS, [], when)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_grid_refuses_a_conditional_space():
    space, _ = space_mod.parse(LAYERS, [], {"model.layers.layer3.*": "model.num_layers >= 3"})
    with pytest.raises(ValueError, match="without conditions"):
        space_mod.grid(space)


def test_the_family_search_previews_only_the_drawn_layers(tmp_path):
    result = preview(tmp_path, "hydra/sweeper/search=family", "model=family", "hydra.sweeper.n_trials=8",
                     "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=3")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    proposals, feasible, over = map(int, SUMMARY.match(lines[-1]).groups())
    assert proposals == 8 and feasible + over <= 8
    assert re.fullmatch(r"invalid=0 repeats=\d+", lines[-2])
    shown = [line for line in lines if line.startswith("#")]
    layer_counts = set()
    for line in shown:
        layers = int(re.search(r"model\.num_layers=(\d)", line).group(1))
        layer_counts.add(layers)
        drawn = set(re.findall(r"model\.layers\.layer(\d)\.", line))
        assert drawn == {str(i) for i in range(1, layers + 1)}, line
        assert len(re.findall(r" (?:stem|model\.[\w.]+)=", line)) == 2 + 4 * layers
    assert len(layer_counts) > 1


def test_the_family_search_without_model_family_says_to_add_it(tmp_path):
    result = preview(tmp_path, "hydra/sweeper/search=family", "hydra.sweeper.n_trials=2")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: hydra.sweeper.requires.model=family: hydra/sweeper/search=family searches keys of model=family, "
        "but the config has model=final: add model=family to the command line")
