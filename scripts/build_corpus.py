#!/usr/bin/env python3
"""Rebuild the bundled corpus: the Python 3.11 documentation's reST sources from Debian's python3.11-doc.

    python scripts/build_corpus.py [--deb python3.11-doc_*.deb]

Without --deb it runs `apt-get download python3.11-doc` in a temporary folder. Writes
src/shareddiff/data/corpus/python311-docs.{train,val}.jsonl.xz (one {"id", "text"} per document;
a document goes to validation when sha256(id) mod 20 == 0, about 5 %) and LICENSE (Debian's
copyright file: the PSF licence). The changelog (a list of issue numbers) is left out.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import lzma
import shutil
import subprocess
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src/shareddiff/data/corpus"
SOURCES = "usr/share/doc/python3.11/html/_sources"
EXCLUDE = {"whatsnew/changelog.rst.txt"}
VAL_MODULUS = 20


def is_validation(doc_id: str) -> bool:
    return int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % VAL_MODULUS == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deb", type=Path, help="a downloaded python3.11-doc .deb")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        deb = args.deb
        if deb is None:
            subprocess.run(["apt-get", "download", "python3.11-doc"], cwd=tmp, check=True)
            deb = Path(glob.glob(f"{tmp}/python3.11-doc_*.deb")[0])
        root = Path(tmp) / "x"
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        sources = root / SOURCES
        docs = {"train": [], "val": []}
        for path in sorted(sources.rglob("*.rst.txt")):
            doc_id = str(path.relative_to(sources))
            if doc_id in EXCLUDE:
                continue
            text = path.read_text(encoding="utf-8")
            docs["val" if is_validation(doc_id) else "train"].append({"id": doc_id, "text": text})
        OUT.mkdir(parents=True, exist_ok=True)
        for split, rows in docs.items():
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
            (OUT / f"python311-docs.{split}.jsonl.xz").write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
            print(f"{split}: {len(rows)} documents, {len(data) / 1e6:.2f} MB of text")
        shutil.copy(root / "usr/share/doc/python3.11-doc/copyright", OUT / "LICENSE")
        print(f"source: {deb.name}")


if __name__ == "__main__":
    main()
