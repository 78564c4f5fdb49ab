"""Trained weights as a small file anyone can re-check: save (fp16), load (into fp32), evaluate exactly.

`trainer.save_weights=<path>` writes the evaluated weights (the EMA's when there is one) of a finished run
as a state_dict with every floating tensor in fp16 (half the size: the final model's 5M parameters take
10 MB), atomically. `task=evaluate evaluate.weights=<path>` loads such a file (or an fp32 one) into the
model the config describes and measures the test set with `evaluate_exactly`: fp32 with TF32 off, so a
GPU and a CPU give the same accuracy to within a few images. Training measures the stored file the same
way right after writing it (metric `stored_test_acc`), so the number it reports is the file's.

The file is `{"state_dict": ..., "normalize_mean": [3 floats], "normalize_std": [3 floats], "model": name,
"num_classes": n, "dataset": name}`: the input normalisation is part of what the weights were trained for,
and it is computed from the training split (data.val_size, data.subset, data.split_seed), so without it in
the file a re-check with other split overrides would quietly normalise differently and report another
accuracy. The values are the fp32 statistics as Python floats, so they come back bit for bit. A file
written before this (a bare state_dict) still loads; its normalisation then comes from the config.
"""
import contextlib
from pathlib import Path

import torch

from errors import CheckpointError
from training.engine import evaluate
from training.files import save_atomically


def save_weights(module, path, **meta):
    """The model's state_dict, floating tensors in fp16, with `meta` (normalize_mean, normalize_std, ...: plain
    numbers and strings, what torch.load's weights_only accepts) beside it, written to a temp file and renamed
    over `path`."""
    return save_state(module.state_dict(), path, **meta)


def save_state(state_dict, path, **meta):
    """save_weights for a state_dict at hand (a checkpoint's EMA weights, say)."""
    state = {key: (value.detach().to("cpu", torch.float16) if value.is_floating_point() else value.detach().cpu())
             for key, value in state_dict.items()}
    return save_atomically({"state_dict": state, **meta}, path)


def check_weights_file(setting, key="evaluate.weights"):
    """task=evaluate's setting, for the gate: a path to a file that is there (read later, before any data)."""
    if not setting:
        raise CheckpointError(f"{key}=null: task=evaluate needs the path of a weights file "
                              f"(a run with trainer.save_weights=<path> writes one)")
    from hydra.utils import to_absolute_path
    path = Path(to_absolute_path(str(setting)))
    if not path.is_file():
        raise CheckpointError(f"{key}={setting}: no such file ({path}); trainer.save_weights=<path> writes one")


def read_weights(path, key="evaluate.weights"):
    """(state_dict, meta) from `path` (meta {} for a file that is a bare state_dict, as written before the
    normalisation was stored); CheckpointError (one line) if it is not there or holds no state_dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{key}={path}: no such file (trainer.save_weights=<path> writes one)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged or foreign file: say so in one line
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{key}={path}: cannot be read as a state_dict ({type(err).__name__}: {first[:200]})") \
            from None
    meta = {}
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        meta = {k: v for k, v in state.items() if k != "state_dict"}
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{key}={path}: holds a {type(state).__name__}, not a state_dict of tensors "
                              f"(trainer.save_weights writes one)")
    return state, meta


def stored_normalization(meta, data_cfg, path, key="evaluate.weights"):
    """(mean, std) to evaluate with: the file's when it has them (None, None for an older file: the config's
    data.mean/std or the training split's, as training would). A config that gives data.mean/std other than the
    stored ones is refused in one line: the weights were trained for the stored ones."""
    mean, std = meta.get("normalize_mean"), meta.get("normalize_std")
    if mean is None or std is None:
        return None, None
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    given = data_cfg.get("mean"), data_cfg.get("std")
    if given[0] is not None and given[1] is not None:
        def differs(a, b):
            return any(abs(float(x) - y) > 1e-6 for x, y in zip(a, b))
        if differs(given[0], mean) or differs(given[1], std):
            show = lambda values: "[" + ", ".join(f"{float(v):.6g}" for v in values) + "]"  # noqa: E731
            raise CheckpointError(f"{key}={path}: trained with data.mean={show(mean)} data.std={show(std)} (stored "
                                  f"in the file), not data.mean={show(given[0])} data.std={show(given[1])}: leave "
                                  f"data.mean/data.std unset to use the stored ones")
    return mean, std


def load_into(model, state, path, key="evaluate.weights"):
    """Copy `state` into the model's own (fp32) tensors; a state_dict of another model is one line saying how
    it differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"] if missing \
            else []
        parts += [f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})"] \
            if unexpected else []
        parts += [f"{len(shapes)} of another shape ({', '.join(shapes[:2])}{', ...' if len(shapes) > 2 else ''})"] \
            if shapes else []
        raise CheckpointError(f"{key}={path}: its weights do not fit the model this config describes: "
                              f"{'; '.join(parts)}. Give the overrides the weights were trained with")
    model.load_state_dict(state)
    return model


@contextlib.contextmanager
def exact_fp32():
    """TF32 off for matmuls and convolutions (train.py turns it on for speed on a GPU), restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def evaluate_exactly(model, loader, tta):
    """(loss, accuracy) of `model` on `loader` in fp32, TF32 off, whatever precision training used."""
    with exact_fp32():
        return evaluate(model, loader, contextlib.nullcontext(), tta=tta)
