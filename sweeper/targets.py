"""Building what a config key names by `_target_` (sampler, pruner, constraints, preflight, custom search space).

A target that cannot be found, is not allowed by the execution whitelist, or refuses its arguments is a
config the user fixes, so it is one line naming the key and the target, not Hydra's
InstantiationException with its chained traceback.
"""


def build(key, spec, whitelist=None):
    """`instantiate(spec)`; `key` is the config key that holds the target's path (for the message)."""
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    try:
        return instantiate(spec, _execution_whitelist_=whitelist)
    except (HydraException, ImportError, TypeError, ValueError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__  # Hydra's messages run over several lines
        allowed = f"; allowed here: {', '.join(whitelist)}" if isinstance(whitelist, (list, tuple)) else ""
        raise ValueError(f"{key}={spec.get('_target_')}: cannot be built ({reason}): give the import path of a "
                         f"callable that takes these arguments{allowed}") from err
