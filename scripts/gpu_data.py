"""The data side of the GPU evaluation (scripts/gpu_eval.py): which CIFAR-10 files it reads, and small
files in the same format for --smoke."""
import hashlib
from pathlib import Path

from data import dataset_dir
from data.datasets import CIFAR10

FOLDER, TRAIN_FILES, TEST_FILES = CIFAR10.folder, CIFAR10.train_files, CIFAR10.test_files
# md5 of the project's copy (../shared/cifar10) and of the official archive's files (torchvision's list).
PROJECT_MD5 = {"data_batch_1": "bbb76f363417a999763dc51d075cb5cb", "data_batch_2": "1c2815e021ad55cde9cc13a6b6d59abe",
               "data_batch_3": "4e2d9f252efb3f70c772dd414b4bdc60", "data_batch_4": "bf027ff970ebb2b680514b83987cd535",
               "data_batch_5": "2bb926e28105ea4024e51649395063db", "test_batch": "23d1bd17d82bee1341198d11d0305e2b"}
OFFICIAL_MD5 = {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
                "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e"}


def md5(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def describe_data(root, log):
    """Exactly which files the evaluation reads: path, size, md5 and whose copy that md5 is."""
    directory = dataset_dir(CIFAR10, root).resolve()
    log(f"data: {directory}")
    files = []
    for name in TRAIN_FILES + TEST_FILES:
        path = directory / name
        if not path.is_file():
            files.append({"file": name, "present": False})
            log(f"  {name}: MISSING")
            continue
        digest = md5(path)
        origin = ("the project's copy" if digest == PROJECT_MD5[name] else
                  "the official archive" if digest == OFFICIAL_MD5[name] else "an unknown copy")
        files.append({"file": name, "present": True, "bytes": path.stat().st_size, "md5": digest, "matches": origin})
        log(f"  {name}: {path.stat().st_size:,} bytes, md5 {digest} ({origin})")
    missing = [f["file"] for f in files if not f["present"]]
    if missing:
        raise SystemExit(f"error: {directory} lacks {', '.join(missing)}: carry all of {FOLDER}/ into "
                         f"{root} (or set CIFAR10_ROOT), then run again")
    return files


def write_smoke_data(root, per_file=256, seed=0):
    """Small CIFAR-10 batch files in the real format (class-coloured noise), so --smoke stays fast on a CPU."""
    import pickle

    import numpy as np
    rng = np.random.default_rng(seed)
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    colours = rng.integers(30, 225, size=(10, 3))
    for name in TRAIN_FILES + TEST_FILES:
        labels = rng.integers(0, 10, per_file)
        pixels = colours[labels][:, :, None] + rng.normal(0, 40, (per_file, 3, 1024))
        with open(folder / name, "wb") as f:
            pickle.dump({"data": pixels.clip(0, 255).astype(np.uint8).reshape(per_file, -1),
                         "labels": labels.tolist()}, f)
    return per_file
