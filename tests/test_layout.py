"""Where things live: training imports nothing from the evaluation suite; matplotlib only in plots.py;
old public names that moved still import, with a DeprecationWarning."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "shareddiff"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("folder", ["train", "data"])
def test_training_and_data_do_not_import_the_evaluation_suite(folder):
    offenders = {
        f.name: sorted(m for m in imported_modules(f) if m.startswith("shareddiff.eval"))
        for f in (SRC / folder).rglob("*.py")
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_matplotlib_only_in_plots():
    users = sorted(
        str(f.relative_to(SRC))
        for f in SRC.rglob("*.py")
        if any(m.split(".")[0] == "matplotlib" for m in imported_modules(f))
    )
    assert users == ["plots.py"]


def test_needle_builder_moved_with_a_deprecated_alias():
    import shareddiff.eval
    from shareddiff.data import NeedleBuilder

    with pytest.warns(DeprecationWarning, match="import it from shareddiff.data"):
        assert shareddiff.eval.NeedleBuilder is NeedleBuilder
