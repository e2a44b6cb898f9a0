#!/usr/bin/env python3
"""Carry a prepared data folder (`shareddiff data prepare --out DIR`) in compressed parts of at most 30 MB
(one part and the repository, about 30 MB, fit one GPU-machine call's 64 MiB: docs/data.md).

    python scripts/parcel.py pack data/corpus-v2 parcels/ [--codec xz|zstd] [--part-bytes 30000000]
    python scripts/parcel.py unpack parcels/ data/      # -> data/corpus-v2
    python scripts/parcel.py recut parcels/ parcels24/ --part-bytes 24200000   # other part sizes, same stream

`pack` writes the folder as one tar stream (sorted names, zeroed times and owners, so the same folder
gives the same bytes), compresses it (xz: Python's lzma at preset 9, no tool needed to unpack; zstd:
the `zstd -19 --long=27` command) and cuts it into NAME.tar.xz.000, .001, ... next to NAME.parts.json
(each part's size and sha256). `unpack` checks every part against NAME.parts.json, decompresses and
extracts them, then checks every shard against the folder's manifest.json (size and sha256), and fails
with the name of the first part or shard that differs. `recut` checks the parts the same way and cuts the
same compressed stream into parts of another size (seconds, where `pack` compresses again for minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

PART_BYTES = 30_000_000
SUFFIX = {"xz": ".tar.xz", "zstd": ".tar.zst"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def _tar(folder: Path, out: Path) -> None:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(folder, arcname=folder.name, recursive=False, filter=_normalised)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            tar.add(path, arcname=f"{folder.name}/{path.relative_to(folder)}", filter=_normalised)


def _compress(tar_path: Path, out: Path, codec: str) -> None:
    if codec == "xz":
        with tar_path.open("rb") as src, lzma.open(out, "wb", preset=9) as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
    else:
        subprocess.run(["zstd", "-q", "-19", "--long=27", "-f", str(tar_path), "-o", str(out)], check=True)


def pack(folder: Path, out_dir: Path, codec: str = "xz", part_bytes: int = PART_BYTES) -> dict:
    """Tar, compress and split ``folder``; return the parts manifest written as NAME.parts.json."""
    if part_bytes < 1:
        raise ValueError(f"--part-bytes {part_bytes}: give a positive size in bytes")
    if not (folder / "manifest.json").is_file():
        raise ValueError(f"{folder} has no manifest.json: pack a folder made by `shareddiff data prepare`")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = folder.name + SUFFIX[codec]
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tar_path, packed = Path(tmp) / "folder.tar", Path(tmp) / name
        _tar(folder, tar_path)
        _compress(tar_path, packed, codec)
        with packed.open("rb") as f:
            parts = _write_parts(iter(lambda: f.read(part_bytes), b""), out_dir, name)
        manifest = {"folder": folder.name, "codec": codec, "tar_bytes": tar_path.stat().st_size, "parts": parts}
    (out_dir / f"{folder.name}.parts.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _verify_shards(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            path = folder / shard["file"]
            if not path.is_file() or _sha256(path) != shard["sha256"]:
                raise ValueError(f"{path}: missing or its sha256 differs from manifest.json")


def _manifest(parts_dir: Path) -> tuple[Path, dict]:
    found = sorted(parts_dir.glob("*.parts.json"))
    if len(found) != 1:
        raise ValueError(f"{parts_dir} must hold exactly one *.parts.json (found {len(found)})")
    return found[0], json.loads(found[0].read_text())


def _checked_parts(parts_dir: Path, manifest: dict):
    """Each part's bytes in order, checked against the manifest (size and sha256)."""
    for part in manifest["parts"]:
        path = parts_dir / part["file"]
        data = path.read_bytes() if path.is_file() else b""
        if len(data) != part["bytes"] or hashlib.sha256(data).hexdigest() != part["sha256"]:
            raise ValueError(f"part {part['file']} is missing, corrupt or incomplete: fetch it again")
        yield data


def _write_parts(chunks, out_dir: Path, name: str) -> list[dict]:
    parts = []
    for index, chunk in enumerate(chunks):
        part = out_dir / f"{name}.{index:03d}"
        part.write_bytes(chunk)
        parts.append({"file": part.name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    return parts


def recut(parts_dir: Path, out_dir: Path, part_bytes: int) -> dict:
    """Cut the checked parts in ``parts_dir`` into parts of at most ``part_bytes`` in ``out_dir`` (another
    folder): the same compressed stream, so ``unpack`` gives the same folder. Returns the new manifest; parts of
    an earlier cut of the same parcel in ``out_dir`` are removed. Raises ValueError for ``part_bytes`` < 1,
    ``out_dir`` equal to ``parts_dir``, an ``out_dir`` holding another parcel's manifest (``unpack`` takes one
    parcel a folder), a corrupt or missing part, or a manifest without parts."""
    if part_bytes < 1:
        raise ValueError(f"--part-bytes {part_bytes}: give a positive size in bytes")
    if out_dir.resolve() == parts_dir.resolve():
        raise ValueError(f"recut into another folder than {parts_dir} (its parts would be overwritten as read)")
    source, manifest = _manifest(parts_dir)
    if not manifest["parts"]:
        raise ValueError(f"{source} lists no parts: pack the folder again")
    others = [m.name for m in out_dir.glob("*.parts.json") if m.name != source.name] if out_dir.is_dir() else []
    if others:
        raise ValueError(f"{out_dir} holds another parcel ({', '.join(sorted(others))}); recut into an empty folder")
    stream = b"".join(_checked_parts(parts_dir, manifest))
    out_dir.mkdir(parents=True, exist_ok=True)
    name = manifest["folder"] + SUFFIX[manifest["codec"]]  # as pack names the parts
    earlier = re.compile(re.escape(manifest["folder"]) + f"({'|'.join(map(re.escape, SUFFIX.values()))})" + r"\.\d{3,}")
    for stale in out_dir.iterdir():
        if earlier.fullmatch(stale.name):
            stale.unlink()  # parts of an earlier cut of this parcel, which this one would not all overwrite
    chunks = (stream[i : i + part_bytes] for i in range(0, len(stream), part_bytes))
    manifest = {**manifest, "parts": _write_parts(chunks, out_dir, name)}
    (out_dir / source.name).write_text(json.dumps(manifest, indent=1))
    return manifest


def unpack(parts_dir: Path, dest: Path) -> Path:
    """Check, join, decompress and extract the parts in ``parts_dir`` into ``dest``; check the shards."""
    _, manifest = _manifest(parts_dir)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        joined = Path(tmp) / "joined"
        with joined.open("wb") as out:
            for data in _checked_parts(parts_dir, manifest):
                out.write(data)
        tar_path = Path(tmp) / "folder.tar"
        if manifest["codec"] == "xz":
            with lzma.open(joined) as src, tar_path.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        else:
            subprocess.run(["zstd", "-q", "-d", "--long=27", str(joined), "-o", str(tar_path)], check=True)
        with tarfile.open(tar_path) as tar:
            tar.extractall(dest, filter="data")
    folder = dest / manifest["folder"]
    _verify_shards(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="tar, compress and split a prepared folder")
    p.add_argument("folder", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--codec", choices=sorted(SUFFIX), default="xz")
    p.add_argument("--part-bytes", type=int, default=PART_BYTES)
    p = sub.add_parser("unpack", help="check, join and extract parts; check the shards")
    p.add_argument("parts_dir", type=Path)
    p.add_argument("dest", type=Path, help="the folder to extract into (the data lands in DEST/NAME)")
    p = sub.add_parser("recut", help="cut checked parts into parts of another size (no recompression)")
    p.add_argument("parts_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--part-bytes", type=int, required=True)
    args = parser.parse_args()
    if args.command == "pack":
        manifest = pack(args.folder, args.out_dir, args.codec, args.part_bytes)
        total = sum(p["bytes"] for p in manifest["parts"])
        print(f"{len(manifest['parts'])} parts, {total:,} bytes ({manifest['tar_bytes']:,} before compression)")
    elif args.command == "recut":
        manifest = recut(args.parts_dir, args.out_dir, args.part_bytes)
        sizes = ", ".join(f"{p['bytes']:,}" for p in manifest["parts"])
        print(f"{len(manifest['parts'])} parts in {args.out_dir}: {sizes} bytes")
    else:
        print(f"unpacked and checked {unpack(args.parts_dir, args.dest)}")


if __name__ == "__main__":
    main()
