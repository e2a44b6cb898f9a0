"""Shared helpers for benchmarks: environment record and result files."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def environment() -> dict:
    info = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = "cpu"
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def write_result(name: str, payload: dict, out_dir: str | Path | None = None) -> Path:
    """Write ``{name}-{device}-{date}.json`` into benchmarks/results/ (or ``out_dir``)."""
    env = payload.setdefault("environment", environment())
    device = env["device"].replace(" ", "_").replace("/", "_")
    stamp = env["date"][:19].replace(":", "").replace("-", "")
    folder = Path(out_dir) if out_dir else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{device}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])
