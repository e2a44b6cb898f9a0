"""scripts/build_corpus_v2.py without its optional dependencies: a one-line message naming the install command
(runs where lxml and datasketch are absent, unlike tests/scripts/test_corpus_v2.py)."""

import runpy
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]


class NotInstalled:
    """An import finder that finds none of ``names``, as Python's finders do when they are not installed."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def test_missing_optional_dependencies_name_the_corpus_extra(monkeypatch):
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["corpus"]
    deps = [req.split(">")[0].split("=")[0] for req in extra]
    assert sorted(deps) == ["cssselect", "datasketch", "lxml"]
    for name in [name for name in sys.modules if name.split(".")[0] in (*deps, "corpus_v2", "build_corpus_v2")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [NotInstalled(*deps), *sys.meta_path])
    monkeypatch.setattr(sys, "path", [str(REPO / "scripts"), *sys.path])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "scripts/build_corpus_v2.py"), run_name="build_corpus_v2")
    assert str(done.value) == (
        "build_corpus_v2.py needs datasketch, which is not installed: run `pip install -e '.[corpus]'` in the "
        "repository (the corpus build's extra: lxml, cssselect, datasketch)"
    )
