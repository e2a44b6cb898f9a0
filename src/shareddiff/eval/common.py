"""What every analysis shares: where results go, JSON output, device selection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def output_dir(checkpoint: str | Path, out: str | Path | None) -> Path:
    """``out`` if given, else ``RUN/eval`` beside the checkpoints of ``checkpoint``'s run."""
    if out is not None:
        path = Path(out)
    else:
        ckpt = Path(checkpoint)
        run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt
        path = run / "eval"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2, default=float))
    return path


def check_context(model, needed: int, what: str) -> None:
    limit = model.config.max_seq_len
    if needed > limit:
        raise ValueError(
            f"{what} needs {needed} positions but the model's max_seq_len is {limit}; "
            "ask for shorter contexts or use a model trained with a longer context"
        )
