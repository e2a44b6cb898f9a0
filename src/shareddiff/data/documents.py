"""Read documents from text files, folders, JSONL (a ``text`` field) and Parquet (a ``text`` column)."""

from __future__ import annotations

import gzip
import json
import lzma
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

CORPUS_DIR = Path(__file__).parent / "corpus"
BUNDLED = {split: CORPUS_DIR / f"python311-docs.{split}.jsonl.xz" for split in ("train", "val")}
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text", ""}
ACCEPTED = ".txt, .md, .rst, .text, files without a suffix, .jsonl and .parquet"


def _open_text(path: Path):
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _base_suffix(path: Path) -> str:
    """``a.jsonl.xz`` → ``.jsonl``; ``a.txt`` → ``.txt``."""
    suffixes = [s for s in path.suffixes if s not in (".xz", ".gz")]
    return suffixes[-1] if suffixes else ""


def _jsonl(path: Path) -> Iterator[str]:
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({err.msg}); fix or remove that line") from err
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f'{path}:{line_no}: expected an object with a string "text" field')
            yield row["text"]


def _parquet(path: Path) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ValueError(f"{path}: reading Parquet needs pyarrow; pip install pyarrow") from err
    table = pq.ParquetFile(path)
    if "text" not in table.schema_arrow.names:
        raise ValueError(f"{path}: no 'text' column (columns: {table.schema_arrow.names})")
    for batch in table.iter_batches(columns=["text"]):
        yield from (t for t in batch.column(0).to_pylist() if t is not None)


def iter_file(path: Path) -> Iterator[str]:
    """Documents of one file: a JSONL row or Parquet row each, or the whole file for plain text."""
    kind = _base_suffix(path)
    if kind == ".jsonl":
        yield from _jsonl(path)
    elif kind == ".parquet":
        yield from _parquet(path)
    else:
        with _open_text(path) as f:
            try:
                yield f.read()
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}: not UTF-8 text ({err.reason}); convert it or leave it out") from err


def scan_inputs(inputs: list[str | Path]) -> tuple[list[Path], Counter[str]]:
    """(files named, and for a folder every file under it with a text, JSONL or Parquet suffix, sorted;
    the count of a folder's other files by suffix, which are left out)."""
    files: list[Path] = []
    skipped: Counter[str] = Counter()
    for item in map(Path, inputs):
        if item.is_dir():
            for p in sorted(p for p in item.rglob("*") if p.is_file() and not p.name.startswith(".")):
                if _base_suffix(p) in TEXT_SUFFIXES | {".jsonl", ".parquet"}:
                    files.append(p)
                else:
                    skipped[p.suffix] += 1
        elif item.is_file():
            files.append(item)
        else:
            raise ValueError(f"input {str(item)!r} does not exist; pass text files, folders, .jsonl or .parquet")
    return files, skipped


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files named, and for a folder every file under it with a text, JSONL or Parquet suffix, sorted."""
    return scan_inputs(inputs)[0]


def iter_documents(inputs: list[str | Path]) -> Iterator[str]:
    for path in expand_inputs(inputs):
        yield from iter_file(path)
