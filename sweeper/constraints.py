"""Constraints: pluggable callables that see a proposal's composed job config and say how far over budget it is.

    hydra:
      sweeper:
        constraints:
          params: {_target_: training.gate.params_over_budget}     # a function: called with the job config
          memory: {_target_: my_app.limits.gpu_memory, limit_gb: 40}  # extra keys become keyword arguments

A constraint returns the amount over its budget (<= 0: within it), None (does not apply to this
config), or a pair (amount over budget, measured value), e.g. (-2806, 4997194): the measured value is
recorded on the trial as user attr `<name>` and printed by the preview as `<name>=<value>`. If it
raises, the proposal is invalid, with the exception's message as the reason. A target that builds the
callable (a class with __call__) says `_partial_: false`.
"""
import math
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from sweeper.targets import build

INVALID_AMOUNT = 1.0  # what an invalid proposal records for every constraint: over, by a token amount


@dataclass
class Verdict:
    amounts: dict = field(default_factory=dict)   # name -> amount over budget
    measured: dict = field(default_factory=dict)  # name -> measured value
    invalid: str | None = None                    # why the config cannot run at all

    @property
    def feasible(self):
        return self.invalid is None and all(amount <= 0 for amount in self.amounts.values())

    def over(self):
        return {name: amount for name, amount in self.amounts.items() if amount > 0}


class Constraints:
    def __init__(self, specs, execution_whitelist=None):
        self.functions = {}
        for name, spec in (specs or {}).items():
            if spec is None:
                continue
            spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
            spec.setdefault("_partial_", True)
            self.functions[name] = build(f"hydra.sweeper.constraints.{name}._target_", spec, execution_whitelist)

    @property
    def names(self):
        return list(self.functions)

    def __call__(self, job_cfg):
        verdict = Verdict()
        for name, function in self.functions.items():
            try:
                result = function(job_cfg)
            except Exception as err:  # noqa: BLE001 - whatever the check refuses makes the proposal invalid
                message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                return Verdict(amounts={n: INVALID_AMOUNT for n in self.functions}, invalid=message)
            if result is None:
                continue
            amount, measured = result if isinstance(result, (tuple, list)) else (result, None)
            amount = float(amount)
            if math.isnan(amount):
                return Verdict(amounts={n: INVALID_AMOUNT for n in self.functions},
                               invalid=f"constraint {name} returned NaN")
            verdict.amounts[name] = amount
            if measured is not None:
                verdict.measured[name] = measured
        return verdict
