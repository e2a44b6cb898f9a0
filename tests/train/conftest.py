"""A tiny training recipe over the synthetic data of tests/conftest.py."""

import pytest

from shareddiff.config import load_recipe


@pytest.fixture
def make_run(tmp_path, tiny_data, tiny_tokenizer):
    def make(*overrides: str, out: str = "run"):
        base = [
            f"data.path={tiny_data}",
            f"data.tokenizer={tiny_tokenizer.path}",
            "data.seq_len=32",
            "data.val_tokens=512",
            "optim.lr=1e-2",
            "optim.warmup_steps=2",
            "train.max_steps=12",
            "train.micro_batch=4",
            "train.eval_every=4",
            "train.log_every=1",
            "train.device=cpu",
            f"train.out_dir={tmp_path / out}",
            "checkpoint.every=3",
            "checkpoint.keep_last=10",
        ]
        return load_recipe(None, "shared_diff-tiny", base + list(overrides))

    return make


def recipe_args(run) -> list[str]:
    """The same run as command-line overrides, for a subprocess."""
    args = [f"--preset={run.model['preset']}"]
    for section in ("data", "optim", "train", "checkpoint"):
        for key, value in vars(getattr(run, section)).items():
            if value is not None:
                args.append(f"{section}.{key}={str(value).lower() if isinstance(value, bool) else value}")
    return args
