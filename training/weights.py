"""Trained weights as a small file anyone can re-check: save (fp16), load (into fp32), evaluate exactly.

`trainer.save_weights=<path>` writes the evaluated weights (the EMA's when there is one) of a finished run
as a state_dict with every floating tensor in fp16 (half the size: the final model's 5M parameters take
10 MB), atomically. `task=evaluate evaluate.weights=<path>` loads such a file (or an fp32 one) into the
model the config describes and measures the test set with `evaluate_exactly`: fp32 with TF32 off, so a
GPU and a CPU give the same accuracy to within a few images. Training measures the stored file the same
way right after writing it (metric `stored_test_acc`), so the number it reports is the file's.
"""
import contextlib
import os
from pathlib import Path

import torch

from errors import CheckpointError
from training.engine import evaluate


def save_weights(model, path):
    """The model's state_dict, floating tensors in fp16, written to a temp file and renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: (value.detach().to("cpu", torch.float16) if value.is_floating_point() else value.detach().cpu())
             for key, value in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path.stat().st_size


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
    """The state_dict in `path`; CheckpointError (one line) if it is not there or not a state_dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{key}={path}: no such file (trainer.save_weights=<path> writes one)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged or foreign file: say so in one line
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{key}={path}: cannot be read as a state_dict ({type(err).__name__}: {first[:200]})") \
            from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{key}={path}: holds a {type(state).__name__}, not a state_dict of tensors "
                              f"(trainer.save_weights writes one)")
    return state


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
