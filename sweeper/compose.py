"""A trial's job config for the constraints, without a full Hydra composition per proposal.

Composing with Hydra takes ~0.2 s (YAML files, defaults lists, Hydra's own config), which every
proposal paid before its constraints were checked. Proposals mostly differ in plain values
(model.dropout=0.12, model.width_mult=0.75), so they share one composition per set of their other
overrides (config-group choices such as optimizer=sgd, +/~ edits) and have their values set on a
copy, as Hydra itself sets value overrides after composing (OmegaConf.update with merge=True).
Anything else, or anything that fails on the short path, is composed in full. The result is the
config the job's task function receives: Hydra's own node is left out.
"""
import copy

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType, ValueType
from omegaconf import OmegaConf, open_dict


class JobConfigs:
    def __init__(self, config_loader, master_config):
        self.loader, self.master = config_loader, master_config
        self.parser = OverridesParser.create()
        self.compositions = {}
        self._groups = {}

    def is_group(self, key):
        """Is `key` (model, hydra/sweeper/search, optimizer.lr) a config group? Cached: ~1 ms a look-up."""
        if key not in self._groups:
            self._groups[key] = bool(self.loader.get_group_options(key.replace(".", "/")))
        return self._groups[key]

    def is_plain_value(self, override):
        key = override.key_or_group
        return (override.type == OverrideType.CHANGE and override.package is None
                and override.value_type == ValueType.ELEMENT and not key.startswith("hydra")
                and not self.is_group(key))

    def full(self, overrides):
        cfg = self.loader.load_sweep_config(self.master, list(overrides))
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    def __call__(self, overrides):
        plain, other = [], []
        for override in self.parser.parse_overrides(list(overrides)):
            (plain if self.is_plain_value(override) else other).append(override)
        rest = tuple(o.input_line for o in other)
        try:
            if rest not in self.compositions:
                self.compositions[rest] = self.full(rest)
            cfg = copy.deepcopy(self.compositions[rest])
            for override in plain:
                OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
            return cfg
        except Exception:  # noqa: BLE001 - Hydra's own composition gives the error, or the right answer
            return self.full(overrides)
