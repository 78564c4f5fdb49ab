"""What a proposal builds and trains: its composed job config, resolved, without the keys that change nothing.

Two proposals are one configuration when they reduce to the same thing, whatever their override strings
(`model.dropout=0.1` and `model.dropout=0.10`; a key the app ignores, such as where it logs). The sweeper is
general, so the keys that change nothing are the app's to declare: hydra.sweeper.ignored_keys, a list of
globs (`mlflow.*`, `dry_run`) matched against each dotted key path (a glob that matches a node drops all of it).
A conditional key that was not drawn is simply absent from the proposal, so its default is the same for all.

The reduced config is kept as a digest (`digest`): stored on each judged trial, it lets every worker of the
study (RUNNING trials included) see that a proposal is already trained or in flight.
"""
import fnmatch
import hashlib
import json

from omegaconf import OmegaConf

from sweeper.records import CONFIG_DIGEST

DIGEST_ATTR = CONFIG_DIGEST  # its older name here, which tests/test_search_repeats.py reads


def _flatten(node, prefix, out):
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
    if items is None:
        out[prefix] = node
        return
    if not node:
        out[prefix] = node  # an empty mapping or list is a value too
    for key, value in items:
        _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)


def _ignored(path, globs):
    parts = path.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(p, glob) for glob in globs for p in prefixes)


def _canonical(value):
    if isinstance(value, float):
        return round(value, 12)  # 0.30000000000000004 is 0.3, as search values are compared (space.params_key)
    return value


def reduced(cfg, ignored=()):
    """{dotted key: value} of the job config, interpolations resolved, ignored keys left out."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    except Exception:  # noqa: BLE001 - an interpolation that cannot resolve here (a missing env var): as written
        container = OmegaConf.to_container(cfg, resolve=False)
    flat = {}
    _flatten(container, "", flat)
    globs = [str(g) for g in (ignored or ())]
    return {path: _canonical(value) for path, value in flat.items() if not _ignored(path, globs)}


def digest(cfg, ignored=()):
    """A short, stable identity of what the config builds and trains (sha256 of the reduced config)."""
    text = json.dumps(reduced(cfg, ignored), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def of_trial(trial):
    """The digest a trial was judged with, or None (a trial from before digests, or never composed)."""
    return trial.system_attrs.get(CONFIG_DIGEST) or trial.user_attrs.get(CONFIG_DIGEST)
