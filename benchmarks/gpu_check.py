"""Correctness on a GPU: the op's backends against float64, and each model's backends, KV cache and
left-padded batches.

    python benchmarks/gpu_check.py

Fresh random inputs every run; prints one line per check and exits non-zero on any failure.
"""

from __future__ import annotations

import math
import sys

import torch

from shareddiff import ModelConfig, build_model
from shareddiff.ops import differential_attention
from shareddiff.padding import left_pad
from shareddiff.presets import FAMILIES

TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def reference(q1, q2, k1, k2, v, lam):
    q1, q2, k1, k2, v = (t.double() for t in (q1, q2, k1, k2, v))
    n, d = q1.shape[2], q1.shape[3]
    mask = torch.ones(n, n, dtype=torch.bool, device=q1.device).tril()

    def attn(q, k):
        s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        return s.masked_fill(~mask, float("-inf")).softmax(-1) @ v

    return attn(q1, k1) - lam * attn(q2, k2)


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def padded_batch_error(model, vocab_size: int, dev: torch.device) -> float:
    """Worst relative error of a left-padded batch (prompts of 320/140/220 tokens; the first 300 columns
    prefilled into the cache, then 20 decoding steps) against each prompt's full forward alone."""
    prompts = [torch.randint(0, vocab_size, (n,), device=dev) for n in (320, 140, 220)]
    ids, mask = left_pad(prompts)
    cache = model.new_cache()
    steps = [model(ids[:, :-20], cache, mask[:, :-20])] + [model(ids[:, i : i + 1], cache) for i in range(300, 320)]
    batched = torch.cat(steps, 1).float()
    return max(rel(batched[row, -len(p) :], model(p[None]).float()[0]) for row, p in enumerate(prompts))


def main() -> int:
    dev = torch.device("cuda")
    failures = 0
    for dtype in (torch.float32, torch.bfloat16):
        for n, d in ((1, 64), (777, 64), (2048, 128)):
            q1, q2, k1, k2 = (torch.randn(2, 4, n, d, device=dev, dtype=dtype) for _ in range(4))
            v = torch.randn(2, 4, n, 2 * d, device=dev, dtype=dtype)
            lam = 0.37
            ref = reference(q1, q2, k1, k2, v, lam)
            for backend in ("eager", "sdpa"):
                err = rel(differential_attention(q1, q2, k1, k2, v, lam, backend=backend), ref)
                ok = err <= TOL[dtype]
                failures += not ok
                print(f"op {backend:5s} {dtype!s:14s} N={n:5d} d={d:3d}: rel err {err:.2e} {'ok' if ok else 'FAIL'}")
    for family in FAMILIES:
        config = ModelConfig.from_preset(f"{family}-small")
        model = build_model(config).to(dev).eval()
        ids = torch.randint(0, config.vocab_size, (2, 300), device=dev)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            model.set_attention_backend("eager")
            eager = model(ids).float()
            model.set_attention_backend("sdpa")
            sdpa = model(ids).float()
            cache = model.new_cache()
            steps = [model(ids[:, :200], cache)] + [model(ids[:, i : i + 1], cache) for i in range(200, 300)]
            cached = torch.cat(steps, 1).float()
            padded = padded_batch_error(model, config.vocab_size, dev)
        for name, value in (
            ("sdpa vs eager", rel(sdpa, eager)),
            ("cache vs full", rel(cached, sdpa)),
            ("padded vs alone", padded),
        ):
            ok = value <= 2e-2
            failures += not ok
            print(f"model {family:14s} bf16 {name}: rel err {value:.2e} {'ok' if ok else 'FAIL'}")
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
