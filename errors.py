"""Every error a user can fix by changing the config, the command or the environment.

The entry point catches `UserError` and prints one line, `error: <message>`, then exits 2; anything
else is a bug and keeps its traceback. Each subclass says where the problem is, so tests and the
sweeper can tell them apart; the messages name the key, the value and what is allowed.
"""


class UserError(Exception):
    """Base: a problem the user fixes (config value, missing file, unreachable server)."""


class ConfigError(UserError, ValueError):
    """A config value outside what is allowed."""


class BudgetError(ConfigError):
    """The model has more parameters (or training FLOPs) than the budget allows."""


class ModelConfigError(ConfigError):
    """A model that cannot be built: unknown block, shapes that do not line up, ..."""


class OptimConfigError(ConfigError):
    """An optimizer, schedule or LR-range setting that cannot be used."""


class DatasetError(UserError, RuntimeError):
    """The dataset is missing or damaged; the message says where and how to fix it."""


class TrackingError(UserError, RuntimeError):
    """The MLflow store cannot be opened or reached."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be resumed from."""


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite: a result of the run, not a bug and not a bad config.
    A single run reports it and fails; a sweep records the trial as failed and goes on."""


class UsageError(UserError):
    """A sweep that cannot start (a hydra.sweeper setting, a _target_ that cannot be built, a study that
    cannot be opened); printed as one line `error: ...`, exit status 2, nothing written."""


class SweepError(UserError, RuntimeError):
    """A sweep that cannot go on (too many crashes, too many refused proposals in a row); the message says
    why and what to change. Printed as one line `error: ...`, exit status 2."""
