"""Writing a file so that a reader only ever sees a whole one: checkpoints, weights files, summaries.

The object goes to a temporary file of its own in the target's folder (`<name>.<random>.tmp`, unique per
save, so two processes saving one path at once each rename a whole file of their own), is synced to disk,
renamed over the target (os.replace is atomic) and the folder synced, so the rename itself survives a power
cut. A save interrupted by an exception removes its temporary file; SIGKILL leaves it, and nothing reads it.
"""
import os
import tempfile
from pathlib import Path

import torch


def save_atomically(obj, path):
    """torch.save(obj) to `path`, whole or not at all; returns the file's size in bytes."""
    return write_atomically(path, lambda f: torch.save(obj, f))


def write_text_atomically(path, text):
    """`text` (UTF-8) to `path`, whole or not at all: summaries and JSON records that a reader may open any time."""
    return write_atomically(path, lambda f: f.write(text.encode()))


def write_atomically(path, write):
    """write(binary file) into a temporary file of its own beside `path`, then renamed over it; returns the size."""
    path = Path(path)
    for attempt in range(2):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
            break
        except FileNotFoundError:  # another run of this config finished and removed the folder just now
            if attempt:
                raise
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)
    return path.stat().st_size


def _sync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename is still atomic
    finally:
        os.close(fd)
