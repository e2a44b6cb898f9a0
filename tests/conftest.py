"""Shared fixtures: every numeric test draws fresh random inputs and prints its seed on failure."""

import os
import random
import subprocess
import sys
import tempfile
from xml.etree import ElementTree

# The child process of in_subprocess_without_triton_interpreter sets this: there Triton compiles for the GPU.
NATIVE_TRITON_ENV = "SHAREDDIFF_TEST_NATIVE_TRITON"
if os.environ.get(NATIVE_TRITON_ENV) != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is defined: CPU runs of the kernel

import pytest  # noqa: E402 (after the interpreter's switch above)
import torch  # noqa: E402

from shareddiff.config import load_recipe  # noqa: E402


@pytest.fixture
def seed() -> int:
    """A fresh seed per test (printed, so a failure can be replayed with torch.manual_seed)."""
    value = random.SystemRandom().randrange(2**31)
    torch.manual_seed(value)
    print(f"seed={value}")
    return value


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64; the absolute error where the expected value is exactly 0
    (e.g. the query gradient with a single key)."""
    actual, expected = actual.double(), expected.double()
    denom = expected.norm().item()
    return (actual - expected).norm().item() / (denom if denom > 0 else 1.0)


WORDS = [
    "the",
    "a",
    "module",
    "function",
    "returns",
    "value",
    "list",
    "of",
    "in",
    "to",
    "is",
    "for",
    "with",
    "object",
    "class",
    "method",
    "attribute",
    "string",
    "file",
    "data",
    "python",
    "type",
    "error",
    "default",
    "argument",
    "name",
    "new",
    "call",
    "used",
    "can",
    "be",
    "this",
    "that",
]


def synthetic_documents(n_docs: int, words_per_doc: int, seed: int = 0) -> list[str]:
    """Deterministic pseudo-text with some repeated structure for a model to learn."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        words = [rng.choice(WORDS) for _ in range(words_per_doc)]
        docs.append(" ".join(words) + ".\n\ndef f(x):\n    return x\n")
    return docs


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from shareddiff.data import train_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return train_tokenizer(synthetic_documents(50, 80, seed=1), 300, path)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_tokenizer):
    """A prepared data folder: train and val splits of synthetic text, tokenized with ``tiny_tokenizer``."""
    from shareddiff.data import prepare_splits

    out = tmp_path_factory.mktemp("data")
    prepare_splits(
        {"train": synthetic_documents(150, 100, seed=2), "val": synthetic_documents(10, 100, seed=3)},
        out,
        tiny_tokenizer,
    )
    return out


def tiny_recipe(data, tokenizer, out_dir, *overrides: str):
    """A tiny training recipe over ``data`` (a prepared folder) into ``out_dir``, with overrides."""
    base = [
        f"data.path={data}",
        f"data.tokenizer={tokenizer.path}",
        "data.seq_len=32",
        "data.val_tokens=512",
        "optim.lr=1e-2",
        "optim.warmup_steps=2",
        "train.max_steps=12",
        "train.micro_batch=4",
        "train.eval_every=4",
        "train.log_every=1",
        "train.device=cpu",
        f"train.out_dir={out_dir}",
        "checkpoint.every=3",
        "checkpoint.keep_last=10",
    ]
    return load_recipe(None, "shared_diff-tiny", base + list(overrides))


@pytest.fixture
def make_run(tmp_path, tiny_data, tiny_tokenizer):
    def make(*overrides: str, out: str = "run"):
        return tiny_recipe(tiny_data, tiny_tokenizer, tmp_path / out, *overrides)

    return make


@pytest.fixture
def saved_figures(monkeypatch):
    """The matplotlib figures plot functions save, kept open for inspection instead of closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real_close, figures = plt.close, []
    monkeypatch.setattr(plt, "close", figures.append)
    yield figures
    for fig in figures:
        real_close(fig)


def in_subprocess_without_triton_interpreter(request) -> bool:
    """Run the calling test again in a child pytest process whose Triton compiles for the GPU, and return True
    once the child passed (the caller then returns); return False in that child, where the test runs.

    conftest sets TRITON_INTERPRET=1 for the session (the project's own kernel runs on the CPU interpreter), and
    Triton decides at import and at each ``triton.jit`` whether a function is interpreted: helpers that Triton's
    own modules define at import (e.g. ``tl.device_assert``'s gluon wrappers) stay interpreted for the whole
    process, so inductor's CUDA kernels that call them fail to compile ("assert knobs.runtime.interpret or
    isinstance(fn, JITFunction)") even with the variable removed later. Only a fresh process without the
    variable compiles them. Raises ``AssertionError`` with the child's output when it fails."""
    if os.environ.get(NATIVE_TRITON_ENV) == "1":
        return False
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env[NATIVE_TRITON_ENV] = "1"
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "child.xml")  # the child's counts, whatever its terminal output (-qq, no:terminal)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junit-xml={report}"]
        command.append(request.node.nodeid)
        proc = subprocess.run(command, cwd=request.config.rootpath, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(command)} failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
        suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    # the child ran the test and it passed (not skipped, deselected or run twice)
    assert counts == {"tests": 1, "failures": 0, "errors": 0, "skipped": 0}, (counts, proc.stdout[-2000:])
    return True
