"""lm-evaluation-harness on a checkpoint, through the transformers wrapper (no second model code)."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}  # `datasets` loaders of local files


def local_tasks(include_path: str | None) -> set[str]:
    """Names of the tasks and groups defined by YAML files under ``include_path`` whose data are local files
    (a ``dataset_path`` that is one of ``datasets``' file loaders or an existing path)."""
    if not include_path:
        return set()
    names = set()
    for path in Path(include_path).rglob("*.y*ml"):
        text = path.read_text(encoding="utf-8", errors="replace")
        source = re.search(r"^dataset_path:\s*['\"]?([^'\"\s]+)", text, re.MULTILINE)
        if source and (source.group(1) in LOCAL_BUILDERS or (path.parent / source.group(1)).exists()):
            names.update(re.findall(r"^(?:task|group):\s*['\"]?([^'\"\s]+)", text, re.MULTILINE))
    return names


def hub_mode(tasks: list[str], include_path: str | None, environ: Mapping[str, str] = os.environ) -> tuple[bool, str]:
    """(offline, why): offline when the environment asks (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) or when every
    task is local to ``include_path``; otherwise online, for the tasks that come from the hub."""
    asked = [v for v in OFFLINE_VARIABLES if environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]
    if asked:
        return True, f"harness: offline, as {asked[0]}={environ[asked[0]]} asks (datasets from the local cache only)"
    remote = [t for t in tasks if t not in local_tasks(include_path)]
    if not remote:
        return True, "harness: offline, every task is defined under --include-path with local data"
    return False, (
        f"harness: online, {', '.join(remote)} come from the Hugging Face hub "
        "(set HF_HUB_OFFLINE=1 to use only the local cache)"
    )


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
    """``lm_eval.simple_evaluate`` on ``checkpoint``; tasks from the harness or YAML files under ``include_path``.

    Offline (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE) when the environment asks for it or every task is
    local (see ``hub_mode``); otherwise the hub is reached as the user's environment allows."""
    offline, _ = hub_mode(tasks, include_path)
    if offline:
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "lm_eval":
            raise  # transformers (which lm-eval's HFLM imports), or a module lm-eval itself lacks
        raise ValueError(
            "the harness needs the [hf] extra: pip install 'shareddiff[hf]' (lm-eval is not installed)"
        ) from err
    from shareddiff.hf.folders import hf_tokenizer, wrap
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
