"""lm-evaluation-harness on a checkpoint, through the transformers wrapper (no second model code)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any


def run_harness(
    checkpoint: str | Path,
    tasks: list[str],
    include_path: str | None = None,
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    log_samples: bool = False,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``checkpoint``; tasks from the harness or YAML files under ``include_path``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:
        raise ValueError("the harness needs lm-eval: pip install 'shareddiff[hf]'") from err
    from shareddiff.hf.io import hf_tokenizer, wrap
    from shareddiff.train import load_model

    model, tokenizer, _ = load_model(checkpoint, device=device)
    manager = _task_manager(include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"unknown harness task(s) {unknown}; define them in YAML under --include-path, "
            "or (with hub access) use the harness's own names such as arc_easy, hellaswag, piqa"
        )
    lm = HFLM(
        pretrained=wrap(model, tokenizer.eos_id),
        tokenizer=hf_tokenizer(tokenizer.path),
        batch_size=batch_size,
        max_length=model.config.max_seq_len,
        device=device,
    )
    return lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=manager, num_fewshot=num_fewshot, limit=limit, log_samples=log_samples
    )


@functools.cache
def _task_manager(include_path: str | None):
    """The harness's task index (thousands of YAML files, seconds to build), built once per folder and process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)
