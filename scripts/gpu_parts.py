"""The GPU evaluation's luggage: CIFAR-10 and the missing wheels, packed into parts small enough to carry.

A GPU machine is reached through calls that each carry at most 64 MiB of the checkout (docs/gpu.md),
and it has PyTorch but not Hydra, Optuna, MLflow or SQLAlchemy. `pack` (here, after downloading the wheels)
writes one xz-compressed tar of the wheels and the dataset folder (wheels first), cut into parts of at most
--part-mib, and a manifest with each part's size and sha256; `check` (there, after each call) says which
parts have arrived intact; `wheels` extracts the wheels from the parts here so far (part-1 holds them: the
first call's preflight installs them); `unpack` (there, in scripts/gpu_eval.sh) verifies all parts and
extracts the whole tar.
Standard library only: it runs on the GPU machine before anything is installed.

    python scripts/gpu_parts.py pack --data ../shared/cifar10 --wheels .gpu_eval/wheels --out .gpu_eval/parts
    python scripts/gpu_parts.py check --parts .gpu_eval/parts
    python scripts/gpu_parts.py wheels --parts .gpu_eval/parts --into .gpu_eval   # from part-1 alone
    python scripts/gpu_parts.py unpack --parts .gpu_eval/parts --into .gpu_eval
"""
import argparse
import hashlib
import io
import json
import lzma
import sys
import tarfile
from pathlib import Path

MANIFEST = "manifest.json"
DATA_FOLDER = "cifar-10-batches-py"


class PartWriter(io.RawIOBase):
    """A write-only stream that starts a new file `part-N` every `limit` bytes, hashing each as it goes."""

    def __init__(self, folder, limit):
        self.folder, self.limit = Path(folder), limit
        self.parts, self.file, self.hash, self.size = [], None, None, 0

    def writable(self):
        return True

    def _next(self):
        self._close_part()
        name = f"part-{len(self.parts) + 1}"
        self.file, self.hash, self.size = open(self.folder / name, "wb"), hashlib.sha256(), 0
        self.parts.append({"name": name})

    def _close_part(self):
        if self.file is not None:
            self.file.close()
            self.parts[-1].update(bytes=self.size, sha256=self.hash.hexdigest())
            self.file = None

    def write(self, data):
        data = memoryview(data)
        written = 0
        while written < len(data):
            if self.file is None or self.size == self.limit:
                self._next()
            chunk = data[written:written + self.limit - self.size]
            self.file.write(chunk)
            self.hash.update(chunk)
            self.size += len(chunk)
            written += len(chunk)
        return written

    def close(self):
        self._close_part()
        super().close()


class PartReader(io.RawIOBase):
    """The parts, in order, read back as one stream."""

    def __init__(self, paths):
        self.paths, self.file = list(paths), None

    def readable(self):
        return True

    def readinto(self, buffer):
        while True:
            if self.file is None:
                if not self.paths:
                    return 0
                self.file = open(self.paths.pop(0), "rb")
            n = self.file.readinto(buffer)
            if n:
                return n
            self.file.close()
            self.file = None


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def pack(data_root, wheels, out, part_mib, preset=6):
    """data_root/cifar-10-batches-py/* and wheels/*.whl -> out/part-1..N (xz tar) + out/manifest.json."""
    data = Path(data_root) / DATA_FOLDER
    files = sorted(p for p in data.iterdir() if p.is_file()) if data.is_dir() else []
    if not files:
        raise SystemExit(f"error: {data} holds no files: point --data at the folder holding {DATA_FOLDER}/")
    wheel_files = sorted(Path(wheels).glob("*.whl")) if wheels else []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*"):
        old.unlink()
    writer = PartWriter(out, int(part_mib * 2**20))
    with lzma.open(writer, "wb", preset=preset) as packed, tarfile.open(fileobj=packed, mode="w|") as tar:
        for path in wheel_files:  # first: the first part alone gives them (wheels, for the first call's preflight)
            tar.add(path, arcname=f"wheels/{path.name}")
        for path in files:
            tar.add(path, arcname=f"data/{DATA_FOLDER}/{path.name}")
    writer.close()
    manifest = {"parts": writer.parts, "data": [p.name for p in files], "wheels": [p.name for p in wheel_files],
                "part_mib": part_mib}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def check(parts, quiet=False):
    """(all present and intact?, lines): each part of the manifest, present and matching its sha256 or not."""
    parts = Path(parts)
    if not (parts / MANIFEST).is_file():
        return False, [f"{parts / MANIFEST}: missing (carry it with every part)"]
    manifest = json.loads((parts / MANIFEST).read_text())
    lines, ok = [], True
    for part in manifest["parts"]:
        path = parts / part["name"]
        if not path.is_file():
            ok = False
            lines.append(f"{part['name']}: not here yet")
        elif path.stat().st_size != part["bytes"] or sha256(path) != part["sha256"]:
            ok = False
            lines.append(f"{part['name']}: DAMAGED (size or sha256 differs from the manifest): carry it again")
        else:
            lines.append(f"{part['name']}: ok ({part['bytes'] / 2**20:.1f} MiB)")
    return ok, lines


def unpack(parts, into):
    """Verify every part, then extract data/ and wheels/ under `into`. Returns the manifest."""
    ok, lines = check(parts)
    if not ok:
        bad = [line.split(":")[0] for line in lines if not line.endswith(")") or "DAMAGED" in line]
        # The usual cause: the machine was given back between calls (a fresh one has only this call's part).
        raise SystemExit("error: the parts are not all here and intact:\n  " + "\n  ".join(lines) + "\n"
                         f"A part is gone when the machine was given back between calls (the device tool's status: "
                         f"warm false) or never carried: carry {', '.join(bad)} again, one call each "
                         f"(command: python3 scripts/gpu_parts.py check), back to back, then this call again.")
    manifest = json.loads((Path(parts) / MANIFEST).read_text())
    reader = io.BufferedReader(PartReader(Path(parts) / p["name"] for p in manifest["parts"]), 1 << 20)
    with lzma.open(reader, "rb") as packed, tarfile.open(fileobj=packed, mode="r|") as tar:
        tar.extractall(into, filter="data")
    return manifest


def extract_wheels(parts, into):
    """The wheels alone, from the parts that are here so far (they come first in the tar: part-1 holds them all
    when they fit in it). Returns how many were extracted; SystemExit when a present part is damaged."""
    parts = Path(parts)
    manifest = json.loads((parts / MANIFEST).read_text())
    present = []
    for part in manifest["parts"]:
        path = parts / part["name"]
        if not path.is_file():
            break
        if path.stat().st_size != part["bytes"] or sha256(path) != part["sha256"]:
            raise SystemExit(f"error: {part['name']} is damaged (size or sha256 differs from the manifest): carry it again")
        present.append(path)
    if not present:
        raise SystemExit(f"error: {parts / manifest['parts'][0]['name']} is not here yet")
    reader = io.BufferedReader(PartReader(present), 1 << 20)
    extracted = 0
    try:
        with lzma.open(reader, "rb") as packed, tarfile.open(fileobj=packed, mode="r|") as tar:
            for member in tar:
                if not member.name.startswith("wheels/"):
                    break
                tar.extract(member, into, filter="data")
                extracted += 1
    except (EOFError, tarfile.ReadError):  # the parts here end inside the wheels: the rest come with later parts
        pass
    if extracted < len(manifest["wheels"]):
        raise SystemExit(f"error: only {extracted} of {len(manifest['wheels'])} wheels are in the parts here so far")
    return extracted


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--data", required=True, help=f"the folder holding {DATA_FOLDER}/")
    p.add_argument("--wheels", help="a folder of .whl files")
    p.add_argument("--out", required=True)
    p.add_argument("--part-mib", type=float, default=59.0)
    p.add_argument("--preset", type=int, default=6, help="xz preset (6: CIFAR-10 to ~75%%)")
    c = sub.add_parser("check")
    c.add_argument("--parts", default=".gpu_eval/parts")
    w = sub.add_parser("wheels", help="extract the wheels alone from the parts here so far")
    w.add_argument("--parts", default=".gpu_eval/parts")
    w.add_argument("--into", default=".gpu_eval")
    u = sub.add_parser("unpack")
    u.add_argument("--parts", default=".gpu_eval/parts")
    u.add_argument("--into", default=".gpu_eval")
    args = parser.parse_args(argv)
    if args.command == "pack":
        manifest = pack(args.data, args.wheels, args.out, args.part_mib, args.preset)
        for part in manifest["parts"]:
            print(f"{Path(args.out) / part['name']}: {part['bytes'] / 2**20:.1f} MiB")
        print(f"{len(manifest['data'])} data files, {len(manifest['wheels'])} wheels in {len(manifest['parts'])} parts")
        return 0
    if args.command == "check":
        ok, lines = check(args.parts)
        print("\n".join(lines))
        print("all parts here and intact" if ok else "not all parts here yet")
        return 0
    if args.command == "wheels":
        print(f"extracted {extract_wheels(args.parts, args.into)} wheels into {args.into}/wheels")
        return 0
    manifest = unpack(args.parts, args.into)
    print(f"unpacked {len(manifest['data'])} data files and {len(manifest['wheels'])} wheels into {args.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
