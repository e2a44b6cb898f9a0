"""The old corpus recipe (scripts/build_debian_docs_corpus.py, the 400-step experiments' data) on fake packages."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import build_debian_docs_corpus as old

RST = "os --- Miscellaneous operating system interfaces\n" + "=" * 48 + "\n\nThis module provides a portable way. " * 8
POD = "=head1 NAME\n\nperlintro - a brief introduction and overview of Perl\n\n" + "=head1 DESCRIPTION\n\nText. " * 20
MAN = r""".TH TOOL 1 "2024-01-01" "tool 1.0" "User Commands"
.\" a comment line
.SH NAME
tool \- count the words of a file
.SH DESCRIPTION
.B tool
reads \fIfile\fR and prints how many words it holds, one line per file, in the order given, then a total.
.PP
With no file, or when the file is \-, it reads the standard input instead of a file, until its end.
"""
# As the old corpus was built: its escape pattern removes roff's "\-" before the "\-" → "-" replacement can see
# it, so hyphens written "\-" (option dashes too) are dropped. Kept so that the recipe rebuilds that corpus.
MAN_TEXT = (
    "\nNAME\ntool  count the words of a file\n\nDESCRIPTION\ntool\nreads file and prints how many words it holds, "
    "one line per file, in the order given, then a total.\n\nWith no file, or when the file is , it reads the "
    "standard input instead of a file, until its end."
)
HTML = (
    "<html><head><style>p {color: red}</style><script>var x = 'SCRIPT';</script></head><body>"
    "<h1>git-log(1)</h1><p>Shows the commit logs. "
    + "The command takes options applicable to git rev-list. "
    * 4
    + "</p>"
    "<pre>git log --oneline</pre></body></html>"
)


def fake_packages(root: Path) -> dict[str, Path]:
    """One unpacked tree per package, each with its copyright file, as `dpkg -x` would leave it."""
    files = {
        "python3.11-doc": {
            "usr/share/doc/python3.11/html/_sources/library/os.rst.txt": RST,
            "usr/share/doc/python3.11/html/_sources/whatsnew/changelog.rst.txt": "bpo-1 " * 100,
        },
        "perl-doc": {"usr/share/perl/5.36/pod/perlintro.pod": POD},
        "manpages": {"usr/share/man/man1/tool.1.gz": MAN, "usr/share/man/man1/short.1.gz": ".TH X 1\nshort\n"},
        "git-doc": {"usr/share/doc/git/html/git-log.html": HTML},
    }
    trees = {}
    for package, contents in files.items():
        tree = trees[package] = root / package
        for rel, text in {**contents, f"usr/share/doc/{package}/copyright": f"{package} licence\n"}.items():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            data = text.encode()
            (tree / rel).write_bytes(gzip.compress(data) if rel.endswith(".gz") else data)
    return trees


def test_old_recipe_builds_one_jsonl_and_licence_per_package(tmp_path, monkeypatch, capsys):
    trees = fake_packages(tmp_path / "trees")

    def fake_run(cmd, cwd=None, **kwargs):  # `apt-get download P` then `dpkg -x DEB ROOT`
        if cmd[:2] == ["apt-get", "download"]:
            (Path(cwd) / f"{cmd[2]}_1.0-1_all.deb").touch()
        else:
            assert cmd[:2] == ["dpkg", "-x"]
            subprocess.check_call(["cp", "-r", str(trees[Path(cmd[2]).name.split("_")[0]]), cmd[3]])
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(old.subprocess, "run", fake_run)
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["build_debian_docs_corpus.py", str(out), "--packages", *trees])
    old.main()

    def docs(package):
        return {row["id"]: row["text"] for row in map(json.loads, (out / f"{package}.jsonl").read_text().splitlines())}

    assert docs("python3.11-doc") == {"usr/share/doc/python3.11/html/_sources/library/os.rst.txt": RST}  # no changelog
    assert docs("perl-doc") == {"usr/share/perl/5.36/pod/perlintro.pod": POD}
    assert docs("manpages") == {"usr/share/man/man1/tool.1.gz": MAN_TEXT}  # roff stripped; the short page dropped
    (html,) = docs("git-doc").values()
    assert html.startswith("git-log(1)\nShows the commit logs.") and html.endswith("git log --oneline")
    assert "SCRIPT" not in html and "color" not in html
    for package in trees:
        assert (out / f"{package}.copyright").read_text() == f"{package} licence\n"
    assert "manpages: 1 documents" in capsys.readouterr().out


def test_every_old_package_has_a_reader():
    assert set(old.READERS) == set(old.PACKAGES)
