"""The range rules of config values: `rule(value)` is None when the value is allowed, else the text saying
what is ("must be an integer >= 1", "use one of basic, bottleneck"). training/schema.py attaches one to each
field of the config's dataclasses; OmegaConf checks the types and keys, these the ranges.
"""
import math
import os
import tempfile

SEED_MAX = 2 ** 32 - 1  # what every seeded generator here (torch, numpy) accepts


class Rule:
    """One key's rule: `check(value)` returns None when allowed, else the text saying what is."""
    null = False

    def __call__(self, value):
        if value is None:
            return None if self.null else self.allowed()
        return self.check(value)

    def allowed(self):
        raise NotImplementedError

    def check(self, value):
        raise NotImplementedError

    def _or_null(self, text):
        return f"{text}, or null" if self.null else text


class Number(Rule):
    """A number in a range; `integer` refuses fractions. Booleans are never numbers here."""

    def __init__(self, low=None, high=None, low_open=False, high_open=False, integer=False, null=False, hint=""):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        self.integer, self.null, self.hint = integer, null, hint

    def allowed(self):
        kind = "an integer" if self.integer else "a number"
        low, high = _bound(self.low), _bound(self.high)
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"must be {kind} in {left}{low}, {high}{right}"
        elif self.low is not None:
            text = f"must be {kind} {'>' if self.low_open else '>='} {low}"
        elif self.high is not None:
            text = f"must be {kind} {'<' if self.high_open else '<='} {high}"
        else:
            text = f"must be {kind}"
        return self._or_null(text) + (f" ({self.hint})" if self.hint else "")

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self.allowed()
        if self.integer and not isinstance(value, int):
            return self.allowed()
        if isinstance(value, float) and not math.isfinite(value):
            return self.allowed()
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return self.allowed()
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return self.allowed()
        return None


def _bound(value):
    return str(value) if isinstance(value, int) else f"{value:g}" if value is not None else ""


def Int(low=None, high=None, null=False, hint=""):  # noqa: N802 - reads as a type in the schema below
    return Number(low, high, integer=True, null=null, hint=hint)


class KernelSize(Number):
    """A residual layer's kernel: odd (a centred "same" padding of k // 2 keeps the map's size) or 2 (the
    paper's kernel-2 designs, blocks.k2_design). An even kernel other than 2 has neither."""

    def __init__(self):
        super().__init__(1, integer=True)

    def allowed(self):
        return "must be an integer >= 1, odd (1, 3, 5, ...) or 2"

    def check(self, value):
        return super().check(value) or (None if value == 2 or value % 2 == 1 else self.allowed())


class Choice(Rule):
    def __init__(self, *options, null=False):
        self.options, self.null = options, null

    def allowed(self):
        return self._or_null("use one of " + ", ".join(str(o).lower() if isinstance(o, bool) else str(o)
                                                      for o in self.options))

    def check(self, value):
        for option in self.options:
            if value == option and isinstance(value, bool) == isinstance(option, bool):
                return None
        return self.allowed()


class Bool(Choice):
    def __init__(self):
        super().__init__(True, False)


class Text(Rule):
    def __init__(self, null=False, nonempty=True):
        self.null, self.nonempty = null, nonempty

    def allowed(self):
        return self._or_null("must be a non-empty string" if self.nonempty else "must be a string")

    def check(self, value):
        if not isinstance(value, str) or (self.nonempty and not value.strip()):
            return self.allowed()
        return None


class Numbers(Rule):
    """A list of `length` numbers, each allowed by `item`."""

    def __init__(self, length, item, null=False):
        self.length, self.item, self.null = length, item, null

    def allowed(self):
        return self._or_null(f"must be a list of {self.length} numbers, each one that "
                             f"{self.item.allowed().replace('must be ', 'is ')}")

    def check(self, value):
        if not isinstance(value, (list, tuple)) or len(value) != self.length or any(self.item(v) for v in value):
            return self.allowed()
        return None


class WritableFolder(Rule):
    """A folder this process can create and write in: the nearest existing folder on its path takes a
    trial sub-folder, removed at once (permission bits alone say nothing when running as root)."""

    def __init__(self, null=False):
        self.null = null

    def allowed(self):
        return self._or_null("must be a folder this process can create and write to")

    def check(self, value):
        if not isinstance(value, str) or not value.strip():
            return self.allowed()
        from hydra.utils import to_absolute_path
        path = to_absolute_path(os.path.expanduser(value)) if _hydra_running() else os.path.abspath(
            os.path.expanduser(value))
        while not os.path.exists(path):
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        if not os.path.isdir(path):
            return f"{self.allowed()}: {path} is not a folder"
        try:
            tempfile.TemporaryDirectory(dir=path).cleanup()
        except OSError as err:
            return f"{self.allowed()}: cannot write in {path} ({err.strerror or err})"
        return None


class WritableFile(Rule):
    """A file path this process can write: not a folder, and its folder writable (created if missing)."""

    def __init__(self, null=False):
        self.null = null

    def allowed(self):
        return self._or_null("must be a file path this process can write (not a folder)")

    def check(self, value):
        if not isinstance(value, str) or not value.strip() or value.endswith(("/", os.sep)):
            return self.allowed()
        from hydra.utils import to_absolute_path
        path = to_absolute_path(os.path.expanduser(value)) if _hydra_running() else os.path.abspath(
            os.path.expanduser(value))
        if os.path.isdir(path):
            return f"{self.allowed()}: {path} is a folder"
        problem = WritableFolder().check(os.path.dirname(path))
        return f"{self.allowed()}{problem[problem.index(':'):]}" if problem else None


class Anything(Rule):
    null = True

    def check(self, value):
        return None


def _hydra_running():
    from hydra.core.hydra_config import HydraConfig
    return HydraConfig.initialized()
