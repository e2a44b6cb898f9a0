"""Shared helpers for benchmarks: environment record and result files.

Importing it puts this checkout's ``src`` first on ``sys.path`` and on ``PYTHONPATH`` (for the processes a
script starts: torchrun, ``python3 -m shareddiff.cli``), so ``python3 benchmarks/X.py`` runs this checkout's
package from the repository root without ``PYTHONPATH=src`` or an install (a bare GPU machine has neither).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
SRC = Path(__file__).resolve().parent.parent / "src"


def use_this_checkout() -> None:
    """This checkout's ``src`` first on ``sys.path`` and ``PYTHONPATH`` (idempotent)."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(SRC) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, paths)])


use_this_checkout()


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
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]  # (no rows: the headers)
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])
