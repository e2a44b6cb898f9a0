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


def test_differential_attention_base_has_a_deprecated_alias():
    import shareddiff.attention
    from shareddiff.attention import DiffAttentionBase

    with pytest.warns(DeprecationWarning, match="use DiffAttentionBase"):
        assert shareddiff.attention.DifferentialAttention is DiffAttentionBase


def test_each_attention_class_declares_its_qk_parameters():
    """The names each class declares are exactly its Q/K parameters (params.py counts by them)."""
    from shareddiff import ModelConfig
    from shareddiff.attention import ATTENTION_REGISTRY

    for (attention, sharing), cls in ATTENTION_REGISTRY.items():
        config = ModelConfig(attention=attention, base_sharing=sharing or "branches", d_model=64, n_heads=2)
        module = cls(config, 0)
        own = {name.split(".")[0] for name, _ in module.named_parameters()}
        assert set(cls.qk_param_names) <= own, cls.__name__
        assert own - set(cls.qk_param_names) <= {"wv", "wo", "lambda_proj", "head_norm", *LAMBDAS}, cls.__name__


LAMBDAS = ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")
