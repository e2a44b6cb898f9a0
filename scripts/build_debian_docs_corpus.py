#!/usr/bin/env python3
"""Assemble the "Debian docs" corpus for GPU experiments (tens of MB of English technical prose).

    python scripts/build_debian_docs_corpus.py OUT_DIR
    shareddiff data prepare OUT_DIR --out data/debian-docs --val-fraction 0.01

Downloads Debian packages with `apt-get download` (run `apt-get update` first), extracts them and
writes one JSONL file per package ({"id", "text"} per document): the Python 3.11 reST sources,
Perl's POD manuals, the section 1-8 manual pages (roff markup stripped), and the Debian Reference,
the PostgreSQL 15, Git and SQLite manuals (HTML to text). Each package keeps its own licence (see
its /usr/share/doc/*/copyright, copied beside the JSONL).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import html.parser
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

PACKAGES = [
    "python3.11-doc",
    "perl-doc",
    "manpages",
    "manpages-dev",
    "debian-reference-en",
    "postgresql-doc-15",
    "git-doc",
    "sqlite3-doc",
]


def rst_docs(root: Path) -> Iterator[tuple[str, str]]:
    for path in sorted((root / "usr/share/doc/python3.11/html/_sources").rglob("*.rst.txt")):
        if path.name != "changelog.rst.txt":
            yield str(path.relative_to(root)), path.read_text(encoding="utf-8")


def pod_docs(root: Path) -> Iterator[tuple[str, str]]:
    for path in sorted(root.rglob("*.pod")):
        yield str(path.relative_to(root)), path.read_text(encoding="utf-8", errors="replace")


ROFF_REQUEST = re.compile(r"^\.(\S+)\s*(.*)$")
ROFF_ESCAPE = re.compile(r"\\f[BIRP]|\\f\(..|\\\(..|\\[&|^e-]|\\s[-+]?\d")


def roff_to_text(source: str) -> str:
    lines = []
    for line in source.splitlines():
        m = ROFF_REQUEST.match(line)
        if m:
            name, rest = m.groups()
            if name in ("SH", "SS"):
                lines.append("\n" + rest.strip('"'))
            elif name in ("B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "TP", "IP"):
                lines.append(rest.replace('"', ""))
            elif name in ("PP", "LP", "P", "sp", "br"):
                lines.append("")
            continue
        if not line.startswith(("'", '.\\"')):
            lines.append(line)
    return ROFF_ESCAPE.sub("", "\n".join(lines)).replace("\\-", "-")


def man_docs(root: Path) -> Iterator[tuple[str, str]]:
    for path in sorted(root.glob("usr/share/man/man[1-8]/*.gz")):
        text = roff_to_text(gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace"))
        if len(text) > 200:
            yield str(path.relative_to(root)), text


class _HTMLText(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        self.skip += tag in ("script", "style")
        if tag in ("p", "div", "br", "li", "h1", "h2", "h3", "h4", "pre", "tr"):
            self.parts.append("\n")

    def handle_endtag(self, tag):
        self.skip -= tag in ("script", "style")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def html_docs(root: Path) -> Iterator[tuple[str, str]]:
    for path in sorted(root.rglob("*.en.html")) or sorted(root.rglob("*.html")):
        parser = _HTMLText()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        text = re.sub(r"\n\s*\n\s*\n+", "\n\n", "".join(parser.parts)).strip()
        if len(text) > 200:
            yield str(path.relative_to(root)), text


READERS = {
    "python3.11-doc": rst_docs,
    "perl-doc": pod_docs,
    "manpages": man_docs,
    "manpages-dev": man_docs,
    "debian-reference-en": html_docs,
    "postgresql-doc-15": html_docs,
    "git-doc": html_docs,
    "sqlite3-doc": html_docs,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--packages", nargs="+", default=PACKAGES, choices=PACKAGES)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for package in args.packages:
            subprocess.run(["apt-get", "download", package], cwd=tmp, check=True, capture_output=True)
            deb = glob.glob(f"{tmp}/{package}_*.deb")[0]
            root = Path(tmp) / package
            subprocess.run(["dpkg", "-x", deb, str(root)], check=True)
            size, count = 0, 0
            with (args.out / f"{package}.jsonl").open("w") as f:
                for doc_id, text in READERS[package](root):
                    f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
                    size, count = size + len(text), count + 1
            for copyright_file in root.glob("usr/share/doc/*/copyright"):
                shutil.copy(copyright_file, args.out / f"{package}.copyright")
                break
            print(f"{package}: {count} documents, {size / 1e6:.1f} MB ({Path(deb).name})")


if __name__ == "__main__":
    main()
