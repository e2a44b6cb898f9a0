"""Metrics as JSONL (always) and TensorBoard (when the tensorboard package is installed)."""

from __future__ import annotations

import json
import logging
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            continue
    return rows


@dataclass(frozen=True)
class RunSummary:
    """A run's end as its metrics record it: what the demo, the reproduction records and the report show."""

    val_loss: float | None  # the last validation loss (nats/token)
    val_tokens: int | None  # tokens trained at that validation
    tokens: int  # tokens trained at the last record
    train_loss: float | None  # the last logged training loss (one step's batch)
    tokens_per_s: float | None  # training tokens/s, median over the log windows
    peak_memory_gib: float | None  # the largest CUDA peak logged; None on the CPU
    last_train: dict[str, Any] = field(default_factory=dict)  # the last training record (λ, grad norm ...)
    train_loss_tail: float | None = None  # mean logged training loss over the last TAIL_FRACTION of the steps


TAIL_FRACTION = 0.1  # the end of training over which train_loss_tail averages the logged step losses


def summarize_metrics(rows: list[dict[str, Any]]) -> RunSummary:
    """The :class:`RunSummary` of ``rows`` as :func:`read_metrics` returns them (None where nothing was logged)."""
    vals = [r for r in rows if "val_loss" in r]
    train_rows = [r for r in rows if "loss" in r]
    speeds = [r["tokens_per_s"] for r in train_rows if "tokens_per_s" in r]
    return RunSummary(
        val_loss=vals[-1]["val_loss"] if vals else None,
        val_tokens=vals[-1]["tokens"] if vals else None,
        tokens=rows[-1]["tokens"] if rows else 0,
        train_loss=train_rows[-1]["loss"] if train_rows else None,
        tokens_per_s=statistics.median(speeds) if speeds else None,
        peak_memory_gib=max((r.get("peak_memory_gib", 0.0) for r in rows), default=0.0) or None,
        last_train=train_rows[-1] if train_rows else {},
        train_loss_tail=tail_mean_loss(train_rows),
    )


def tail_mean_loss(train_rows: list[dict[str, Any]], fraction: float = TAIL_FRACTION) -> float | None:
    """Mean of the logged training losses (each one step's batch loss) at steps after (1 − fraction) × the last
    logged step; at least the last row. A steadier end-of-training figure than the last batch alone, whose
    step-to-step noise is about 0.1 nats at 65K tokens per step. None without training rows."""
    if not train_rows:
        return None
    last = train_rows[-1]["step"]
    tail = [r["loss"] for r in train_rows if r["step"] > (1 - fraction) * last] or [train_rows[-1]["loss"]]
    return statistics.fmean(tail)


class MetricsLogger:
    """Appends one JSON object per record; on resume drops records after the checkpoint's step, and warns when
    the file lacks the steps before it (``log_every``: the training rows' interval; a file emptied, truncated or
    restored from an older copy: the run's curves, and what is read from them, would start late)."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, log_every: int | None = None) -> None:
        self.path = Path(run_dir) / METRICS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= resume_step]
            last = max((r.get("step", 0) for r in kept if "loss" in r), default=0)
            if log_every is not None and resume_step - last >= log_every:
                log.warning(
                    "%s holds training rows only up to step %d, and the run resumes from step %d: its curves (and "
                    "what is read from them: steps to an accuracy, the loss tail) miss steps %d-%d; restore the "
                    "file from a copy before resuming to keep them",
                    self.path,
                    last,
                    resume_step,
                    last + 1,
                    resume_step,
                )
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)
        elif self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a")
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step)
        except ImportError:
            pass

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
