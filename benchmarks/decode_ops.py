"""Operators in one decode step of the StaticDecoder (uncompiled), counted where PyTorch dispatches them.

    python benchmarks/decode_ops.py --families transformer diff shared_diff --size 350m    # CPU, bf16
    python3 benchmarks/decode_ops.py --families transformer diff shared_diff --out $OUT     # GPU (seconds)

A GPU decode step at batch 1 is bound by how many kernels it launches, not by the bytes it reads (see
docs/performance.md, "Generation speed"). This counts, on any device and without a profiler, the aten operators
one ``StaticDecoder.step`` dispatches below autograd (a ``TorchDispatchMode``: composite operators such as
``linear`` appear as what they decompose into), after a prefill of ``--prompt-len`` tokens and one warm-up step:

- ops: every aten operator call; kernels: those that are not views (each launches work on a GPU in the
  uncompiled ``graph`` mode; inductor fuses the elementwise ones when compiled);
- gemm: matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``), each its own kernel compiled or not;
- sdpa: scaled-dot-product-attention kernels.

On CUDA, ``F.rms_norm`` with input and weight of one dtype (the fused decoder's norms) is one ``_fused_rms_norm``
kernel; the CPU runs its decomposition (about 8 operators), so CPU counts understate what fusing the norms saves.
On the CPU the differential SDPA backend zero-pads Q1, Q2, K1, K2 from d to 2d for the CPU's flash kernel
(``ops.differential``), 4 ``constant_pad_nd`` per layer a GPU step does not run; ``pad`` counts them.
``--fusion`` picks the decoder's weights: fused (``StaticDecoder(fused=True)``, the default: each layer's weights
merged once, one GEMM for its attention-input projections and one for the MLP's gate and up) or unfused (the
model's own modules, one GEMM per weight); a checkout whose StaticDecoder has no such option counts its only path.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, table, write_result

from shareddiff import ModelConfig, build_model
from shareddiff.presets import FAMILIES
from shareddiff.static_decode import StaticDecoder

GEMM_OPS = {"mm", "addmm", "bmm", "baddbmm"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched while active: ``calls`` by name, ``views`` the view ops among them."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.overloadpacket.__name__] += 1
        self.views += bool(func.is_view) or func.overloadpacket.__name__ == "_unsafe_view"  # a view of a new tensor
        return func(*args, **(kwargs or {}))


def count_step(model, batch: int, prompt_len: int, fused: bool | None = True) -> dict:
    """Operator counts of one decode step (after a prefill and a warm-up step) of a StaticDecoder of ``model``.
    ``fused`` None: the decoder's default (for a decoder without the option)."""
    kwargs = {} if fused is None else {"fused": fused}
    decoder = StaticDecoder(model, prompt_len + 2, **kwargs)
    tokens = torch.randint(0, model.config.vocab_size, (batch, prompt_len), device=next(model.parameters()).device)
    with torch.no_grad():
        decoder.prefill(tokens)
        decoder.step(tokens[:, -1])
        with OpCounter() as counter:
            decoder.step(tokens[:, -1])
    calls = counter.calls
    total = sum(calls.values())
    return {
        "ops": total,
        "kernels": total - counter.views,
        "gemm": sum(calls[n] for n in GEMM_OPS),
        "sdpa": sum(n for name, n in calls.items() if "scaled_dot_product" in name),
        "pad": calls["constant_pad_nd"],
        "by_op": dict(calls.most_common()),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=sorted(FAMILIES), choices=sorted(FAMILIES))
    parser.add_argument("--size", default="350m")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=9)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="bfloat16 casts count as on a GPU")
    parser.add_argument("--fusion", choices=["fused", "unfused", "both"], default="both")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    has_option = "fused" in inspect.signature(StaticDecoder).parameters
    fusings = {"fused": [True], "unfused": [False], "both": [False, True]}[args.fusion] if has_option else [None]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for family in args.families:
        torch.manual_seed(0)
        config = ModelConfig.from_preset(f"{family}-{args.size}")
        model = build_model(config, device=device, dtype=DTYPES[args.dtype]).eval()
        for fused in fusings:
            row = {"preset": f"{family}-{args.size}", "fusion": {True: "fused", False: "unfused"}.get(fused)}
            row.update(count_step(model, args.batch, args.prompt_len, fused))
            rows.append(row)
            print({k: v for k, v in row.items() if k != "by_op"}, flush=True)
        del model
    headers = ["preset", "fusion", "ops", "kernels", "gemm", "sdpa", "pad (CPU only)"]
    keys = ["preset", "fusion", "ops", "kernels", "gemm", "sdpa", "pad"]
    lines = [[r[k] for k in keys] for r in rows]
    print(table(headers, lines))
    payload = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "environment": environment()}
    payload["results"] = rows
    print(f"wrote {write_result('decode_ops', payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
