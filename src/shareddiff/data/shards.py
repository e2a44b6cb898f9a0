"""Token shards: documents tokenized into memory-mapped uint16/uint32 files plus a JSON manifest.

    DIR/manifest.json                {"format", "tokenizer_sha256", "vocab_size", "eos_id", "dtype", "splits"}
    DIR/{split}-{index:05d}.bin      raw token ids, each document followed by EOS

A shard's size and sha256 are in the manifest and checked when loaded, so a truncated or altered
shard is reported instead of being trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from shareddiff.data.tokenizer import Tokenizer

FORMAT = "shareddiff-tokens/1"
MANIFEST = "manifest.json"


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _ShardWriter:
    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.out_dir, self.split, self.dtype, self.shard_tokens = out_dir, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.documents = 0

    def add(self, ids: list[int]) -> None:
        self.buffer.append(np.asarray(ids, dtype=self.dtype))
        self.buffered += len(ids)
        self.documents += 1
        if self.buffered >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        name = f"{self.split}-{len(self.shards):05d}.bin"
        path = self.out_dir / name
        tmp = path.with_suffix(".tmp")
        np.concatenate(self.buffer).tofile(tmp)
        os.replace(tmp, path)
        self.shards.append({"file": name, "tokens": self.buffered, "sha256": _sha256(path)})
        self.buffer, self.buffered = [], 0

    def summary(self) -> dict:
        self.flush()
        return {"documents": self.documents, "tokens": sum(s["tokens"] for s in self.shards), "shards": self.shards}


def prepare_splits(
    splits: dict[str, Iterable[str]],
    out_dir: str | Path,
    tokenizer: Tokenizer,
    shard_tokens: int = 100_000_000,
    batch_documents: int = 256,
    sources: list[str] | None = None,
    progress: bool = False,
) -> dict:
    """Tokenize each split's documents (in parallel batches) into shards under ``out_dir``; return the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = _dtype_for(tokenizer.vocab_size)
    manifest = {
        "format": FORMAT,
        "tokenizer_sha256": tokenizer.sha256,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "dtype": dtype.name,
        "sources": sources or [],
        "splits": {},
    }
    for split, docs in splits.items():
        writer = _ShardWriter(out, split, dtype, shard_tokens)
        bar = tqdm(desc=f"tokenizing {split}", unit="doc", disable=not progress)
        for batch in _batched((d for d in docs if d.strip()), batch_documents):
            for ids in tokenizer.encode_batch(batch):
                writer.add([*ids, tokenizer.eos_id])
            bar.update(len(batch))
        bar.close()
        manifest["splits"][split] = writer.summary()
        if not manifest["splits"][split]["tokens"]:
            raise ValueError(f"split {split!r} has no text: the inputs hold no non-empty documents")
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / MANIFEST)
    return manifest


def content_sha256(manifest: dict) -> str:
    """A hash of what a prepared folder holds, from its manifest: the tokenizer, the token dtype and every
    split's shards in order (token count and sha256 of each). File and source names are left out, so a copy
    of the folder, or the folder under another path, hashes the same; shards that differ do not."""
    splits = {name: [[s["tokens"], s["sha256"]] for s in split["shards"]] for name, split in manifest["splits"].items()}
    content = {"tokenizer_sha256": manifest["tokenizer_sha256"], "dtype": manifest["dtype"], "splits": splits}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def split_by_hash(docs: Iterable[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic document-level split: a document goes to validation by the hash of its text."""
    train, val = [], []
    modulus = 1_000_000
    for doc in docs:
        bucket = int(hashlib.sha256(doc.encode()).hexdigest()[:12], 16) % modulus
        (val if bucket < val_fraction * modulus else train).append(doc)
    return train, val


class TokenData:
    """One split's tokens over its memory-mapped shards, read as one sequence without copying it."""

    def __init__(self, parts: list[np.ndarray], manifest: dict, split: str) -> None:
        self.parts, self.manifest, self.split = parts, manifest, split
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64, across shard boundaries if needed (empty for length 0)."""
        out, pos, end = [np.empty(0, dtype=np.int64)], start, start + length
        while pos < end:
            i = int(np.searchsorted(self.offsets, pos, side="right")) - 1
            local = pos - int(self.offsets[i])
            take = min(end - pos, len(self.parts[i]) - local)
            out.append(self.parts[i][local : local + take])
            pos += take
        return np.concatenate(out).astype(np.int64)


def _not_prepared(root: Path) -> str:
    """Why ``root`` cannot be loaded as token shards, and the command that makes it loadable."""
    from shareddiff.data.documents import expand_inputs

    if not root.exists():
        return (
            f"{root} does not exist: set data.path to a folder written by `shareddiff data prepare INPUT... --out "
            "FOLDER` (or leave it unset for the bundled corpus)"
        )
    if root.is_dir() and expand_inputs([root]):
        tokens = root.with_name(root.name + "-tokens")
        return (
            f"{root} holds text files, not prepared token shards (no {MANIFEST}); tokenize them into another "
            f"folder with `shareddiff data prepare {root} --out {tokens} --tokenizer <your data.tokenizer>`, "
            f"then set data.path={tokens}"
        )
    return (
        f"{root} has no {MANIFEST}: prepare your text with `shareddiff data prepare INPUT... --out {root}`, "
        "or set data.path to a folder written by it"
    )


def load_split(data_dir: str | Path, split: str, verify: bool = True) -> TokenData:
    """Memory-map ``split`` of a prepared data folder, checking every shard against the manifest."""
    root = Path(data_dir)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(_not_prepared(root))
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{manifest_path} is corrupt ({err.msg}); prepare the data again") from err
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path} is not a {FORMAT} manifest; prepare the data again")
    if split not in manifest["splits"]:
        raise ValueError(f"{root} has no {split!r} split (it has {sorted(manifest['splits'])})")
    dtype = np.dtype(manifest["dtype"])
    parts = []
    for shard in manifest["splits"][split]["shards"]:
        path = root / shard["file"]
        expected = shard["tokens"] * dtype.itemsize
        actual = path.stat().st_size if path.is_file() else None
        if actual != expected:
            raise ValueError(
                f"corrupt shard {path}: {actual} bytes on disk, the manifest says {expected}; "
                "prepare the data again with `shareddiff data prepare`"
            )
        if verify and _sha256(path) != shard["sha256"]:
            raise ValueError(
                f"corrupt shard {path}: its sha256 differs from the manifest's; "
                "prepare the data again with `shareddiff data prepare`"
            )
        parts.append(np.memmap(path, dtype=dtype, mode="r"))
    if not parts:
        raise ValueError(f"split {split!r} of {root} is empty; prepare it from non-empty inputs")
    return TokenData(parts, manifest, split)
