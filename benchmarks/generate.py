"""Generation speed (tokens/s): the eager KV-cache decode, the compiled static decode, and transformers' own
``generate`` on the exported DiffLlama with the same weights.

    python benchmarks/generate.py --families transformer --out $OUT        # GPU: 350m, batch 1 and 32, bf16
    python benchmarks/generate.py --smoke                                  # CPU: tiny presets, a few tokens
    python benchmarks/generate.py --profile --size small --batch 1         # where a decode step's time goes
                                                                           # (host work, and GPU time per kernel)

Greedy decoding of ``--new-tokens`` after a random prompt of ``--prompt-len`` tokens, no EOS. tokens/s =
batch × new tokens / wall time of one whole ``generate`` call (prefill included), the median of
``--repeats`` calls after a warm-up call (which compiles; its time is reported as ``warmup_s``). The eager and
decoder modes also time the same call with one new token (the prefill: ``prefill_s``) and report the decode steps
alone, (new tokens − 1) / (call − prefill) (``decode_tokens_per_s``, ``decode_ms_per_step``). Modes:

- eager: ``shareddiff.generation.generate`` with the model's ``KVCache`` (the reference decode);
- static: the ``StaticDecoder`` without compiling (fixed shapes, eager);
- compiled: the ``StaticDecoder`` compiled (inductor; on a GPU CUDA graphs, reduce-overhead's option, with the
  decoder's default options, ``static_decode.CUDA_COMPILE_OPTIONS``);
- graph, compiled-graph (CUDA only): the ``StaticDecoder`` with ``cuda_graph=True``, its step uncompiled or
  compiled (inductor, with the decoder's default options on CUDA) and captured in one CUDA graph that each step
  replays directly;
- wrapper: the transformers wrapper's ``generate(cache_implementation="static")`` (compiled on a GPU);
- hf, hf-static: ``DiffLlamaForCausalLM.generate`` of the exported model (diff and shared_diff only), with
  transformers' dynamic cache, or its ``cache_implementation="static"`` (which transformers compiles on a GPU).

The decoder modes run with ``--fusion``: fused (the default, ``StaticDecoder(fused=True)``: each layer's weights
merged once, one GEMM for the attention inputs and one for gate and up) and/or unfused (the model's modules), a
row each; ``--inductor-option KEY=VALUE`` (repeatable) hands options to inductor in the compiled modes instead of
the decoder's default (on CUDA ``static_decode.CUDA_COMPILE_OPTIONS``, gpt-fast's ``coordinate_descent_tuning=True``;
``coordinate_descent_tuning=False`` for an untuned row); ``--decode-kernel``: default (the decoder's: the
differential decode kernel on CUDA while ``DECODE_KERNEL_BY_DEFAULT`` is set, as it is), on and/or off
(``StaticDecoder(decode_kernel=None/True/False)``), a row each.

Before timing a decoder (every mode but eager, static and the transformers ones), its logits are checked on the same
device, teacher-forced for up to ``CHECK_STEPS`` steps over a left-padded batch at batch > 1. Rounding is judged
against rounding: the same weights in the next wider float type (float32 for a bfloat16 model, float64 for a
float32 one) decode the same tokens through the reference path (``LanguageModel.forward`` with a ``KVCache``),
giving the exact logits; the reference decode in the benchmark's dtype is off from them by its own rounding
error e_ref (the largest relative error ‖ref − exact‖ / ‖exact‖ over the steps). The check passes when

- the decoder's largest relative error against the exact logits is ≤ ``ERROR_FACTOR`` × e_ref, and
- no argmax disagreement with the exact logits is decisive: a disagreement is decisive when the exact top-1 −
  top-2 margin exceeds 2 × ``ERROR_FACTOR`` × the reference decode's largest absolute logit error (over all
  steps and rows), a gap that no logit error within that budget can close; near-ties may flip, and are counted
  (as are the reference decode's own flips).

On CUDA each row also records how many compiled graphs ran without CUDA graphs (``cudagraph_skips``; 0 expected).
Every row is printed when measured and the JSON result rewritten, so a run cut short keeps what it measured;
``--budget-s`` skips the rows that would start after that many seconds. The exit status is 1 if a check failed.
"""

from __future__ import annotations

import argparse
import ast
import copy
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, table, write_result

from shareddiff import ModelConfig, build_model
from shareddiff.config import SUB_HEADS
from shareddiff.generation import generate
from shareddiff.padding import left_pad
from shareddiff.presets import FAMILIES
from shareddiff.static_decode import StaticDecoder

MODES = ("eager", "static", "compiled", "graph", "compiled-graph", "wrapper", "hf", "hf-static")
DECODER_MODES = {  # mode: StaticDecoder keyword arguments
    "static": {},
    "compiled": {"compile": True},
    "graph": {"cuda_graph": True},
    "compiled-graph": {"compile": True, "cuda_graph": True},
}
CHECKED_MODES = tuple(m for m in DECODER_MODES if m != "static")  # checked before they are timed
CHECK_STEPS = 32
ERROR_FACTOR = 2.0  # a decoder may be this many times as far from the exact logits as the reference decode
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DECODE_KERNEL = {"default": None, "on": True, "off": False}  # --decode-kernel: StaticDecoder(decode_kernel=...)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def exact_model(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` (same weights) in the next wider float type: float32 for a bfloat16 or float16 model,
    float64 for a float32 one; its reference decode gives the logits the check measures rounding against."""
    wider = torch.float64 if next(model.parameters()).dtype == torch.float32 else torch.float32
    return copy.deepcopy(model).to(wider)


def compare_logits(steps: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], factor: float) -> dict:
    """Summary of (exact, reference, decoder) logits, each (B, vocab), over decoding steps. ``max_rel_err``: the
    decoder's worst step's relative error against the exact logits; ``reference_rel_err``: the reference decode's;
    ``ok``: the first ≤ ``factor`` × the second and no decisive argmax disagreement with the exact logits
    (one whose exact top-1 − top-2 margin exceeds twice the budget, ``factor`` × the reference decode's largest
    absolute logit error over all steps and rows). Also the decoder's error against the reference decode itself,
    the argmax agreement over all (step, row) pairs, the flips, and the reference decode's own flips."""
    errors, ref_errors, errors_vs_ref, ref_abs = [], [], [], []
    agree, margins, ref_flips = [], [], 0
    for exact, ref, got in steps:
        exact, ref, got = exact.double(), ref.double(), got.double()
        errors.append(rel(got, exact))
        ref_errors.append(rel(ref, exact))
        errors_vs_ref.append(rel(got, ref))
        ref_abs.append((ref - exact).abs().max().item())
        ref_flips += int((ref.argmax(-1) != exact.argmax(-1)).sum())
        agree.append(got.argmax(-1) == exact.argmax(-1))
        top2 = exact.topk(2, dim=-1).values
        margins.append(top2[:, 0] - top2[:, 1])  # (B,): a flip is decisive if this exceeds 2 × the budget
    # A row whose every logit is within e of the exact one can only flip where the exact top-1 − top-2 margin is
    # ≤ 2e: a flip past twice the budget means some logit is off by more than the budget allows; a flip inside
    # it is a near-tie that rounding may break either way.
    budget = factor * max(ref_abs)
    agree_all = torch.cat(agree)
    n_decisive = int((~agree_all & (torch.cat(margins) > 2 * budget)).sum())
    return {
        "max_rel_err": max(errors),
        "reference_rel_err": max(ref_errors),
        "error_factor": factor,
        "rel_err_vs_reference": max(errors_vs_ref),
        "ok": max(errors) <= factor * max(ref_errors) and n_decisive == 0,
        "argmax_agree": agree_all.double().mean().item(),
        "argmax_pairs": agree_all.numel(),
        "argmax_flips": int((~agree_all).sum()),
        "decisive_flips": n_decisive,
        "reference_argmax_flips": ref_flips,
        "flip_budget": budget,
    }


@torch.no_grad()
def check_decoder(model, decoder: StaticDecoder, batch: int, prompt_len: int, exact: torch.nn.Module) -> dict:
    """The decoder's logits against those of ``exact`` (``exact_model(model)``) and of the reference decode
    (model.forward with a KVCache), all three fed the exact decode's greedy tokens, summarised by
    ``compare_logits`` with ``ERROR_FACTOR`` (prefill and every step)."""
    dev = next(model.parameters()).device
    vocab = model.config.vocab_size
    lengths = [prompt_len - (i * 7) % max(1, prompt_len // 2) for i in range(batch)]  # left-padded when batch > 1
    ids, mask = left_pad([torch.randint(0, vocab, (n,), device=dev) for n in lengths])
    mask = None if bool(mask.all()) else mask
    steps = min(CHECK_STEPS, decoder.max_len - prompt_len)
    cache, exact_cache = model.new_cache(prompt_len + steps), exact.new_cache(prompt_len + steps)

    def triples():  # each decoder output is compared before the next step (CUDA graphs overwrite it)
        best = exact(ids, exact_cache, mask)[:, -1]
        yield best, model(ids, cache, mask)[:, -1], decoder.prefill(ids, mask, steps)
        for _ in range(steps):
            token = best.argmax(-1)
            best = exact(token[:, None], exact_cache)[:, -1]
            yield best, model(token[:, None], cache)[:, -1], decoder.step(token)

    return compare_logits(triples(), ERROR_FACTOR)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, list[float]]:
    """(warm-up seconds, timed seconds per call): one warm-up call, then up to ``repeats`` calls (fewer once
    10 s have been spent timing)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    warmup = time.perf_counter() - start
    times: list[float] = []
    while len(times) < repeats and sum(times) < 10:
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return warmup, times


def decoder_settings(mode: str, fused: bool, args, kernel: str = "default") -> dict:
    """The StaticDecoder keyword arguments of a decoder mode's row: the mode's, ``fused``, the compile backend,
    ``--inductor-option`` as ``compile_options`` where inductor compiles, and ``decode_kernel`` unless ``kernel`` is
    "default"."""
    settings = {**DECODER_MODES[mode], "fused": fused, "backend": args.compile_backend}
    if kernel != "default":
        settings["decode_kernel"] = DECODE_KERNEL[kernel]
    if settings.get("compile") and args.compile_backend == "inductor" and args.inductor_option:
        settings["compile_options"] = dict(args.inductor_option)
    return settings


def generation_call(mode: str, model, prompt: torch.Tensor, new: int, compile_backend: str, settings: dict):
    """(a function running one greedy generation of ``new`` tokens in ``mode`` (the eager and decoder modes' take
    another count as their argument: 1 is the prefill alone), its StaticDecoder or None), or
    None where ``mode`` does not apply to the model (the DiffLlama export of a non-differential model, CUDA
    graphs off CUDA). ``settings``: a decoder mode's StaticDecoder arguments (``decoder_settings``)."""
    total = prompt.shape[1] + new
    if mode == "eager":
        return (lambda n=new: generate(model, prompt, n, temperature=0)), None
    if mode in DECODER_MODES:
        if settings.get("cuda_graph") and prompt.device.type != "cuda":
            return None
        decoder = StaticDecoder(model, total, **settings)
        return (lambda n=new: generate(model, prompt, n, temperature=0, decoder=decoder)), decoder
    from shareddiff.hf import to_diffllama, wrap

    if mode == "wrapper":
        hf_model = wrap(model)
        kwargs = {"cache_implementation": "static"}
        if compile_backend != "inductor" or prompt.device.type != "cuda":
            from transformers import CompileConfig

            kwargs["compile_config"] = CompileConfig(backend=compile_backend)
    else:
        try:
            hf_model = to_diffllama(model).to(prompt.device, next(model.parameters()).dtype)
        except ValueError:
            return None
        hf_model.generation_config.eos_token_id = None
        hf_model.generation_config.pad_token_id = 0
        kwargs = {"cache_implementation": "static"} if mode == "hf-static" else {}
    mask = torch.ones_like(prompt)
    return (lambda: hf_model.generate(prompt, attention_mask=mask, max_new_tokens=new, do_sample=False, **kwargs)), None


def bench_row(
    family: str, size: str, mode: str, fused: bool | None, batch: int, args, device, dtype, model, exact, kernel=None
) -> dict | None:
    """One timed row (``fused``, ``kernel``: a decoder mode's weights and ``--decode-kernel``, None for the others);
    a decoder mode's is checked first against ``exact`` (``exact_model(model)``)."""
    prompt = torch.randint(0, model.config.vocab_size, (batch, args.prompt_len), device=device)
    settings = decoder_settings(mode, fused, args, kernel) if mode in DECODER_MODES else {}
    call = generation_call(mode, model, prompt, args.new_tokens, args.compile_backend, settings)
    if call is None:
        return None
    fn, decoder = call
    row = {"preset": f"{family}-{size}", "mode": mode, "batch": batch, "dtype": str(dtype).split(".")[-1]}
    if mode in DECODER_MODES:
        row["fusion"] = "fused" if fused else "unfused"
        row["decode_kernel"] = kernel
        if "compile_options" in settings:
            row["compile_options"] = settings["compile_options"]
    skips = counters["inductor"]["cudagraph_skips"]
    if mode in CHECKED_MODES:  # the check compiles/captures the step (the timing's shapes)
        start = time.perf_counter()
        row["check"] = check_decoder(model, decoder, batch, args.prompt_len, exact)
        row["compile_and_check_s"] = time.perf_counter() - start
    warmup, times = timed(fn, device, args.repeats)
    median = statistics.median(times)
    row.update(
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        warmup_s=warmup,
        call_s=times,
        tokens_per_s=batch * args.new_tokens / median,
        ms_per_step=median / args.new_tokens * 1e3,
    )
    if (mode == "eager" or mode in DECODER_MODES) and args.new_tokens > 1:
        row.update(decode_speed(lambda: fn(1), device, args.repeats, batch, args.new_tokens, median))
    if device.type == "cuda":  # compiled modes that fell back to launching kernels one by one
        row["cudagraph_skips"] = counters["inductor"]["cudagraph_skips"] - skips
    return row


def decode_speed(prefill, device: torch.device, repeats: int, batch: int, new_tokens: int, call_s: float) -> dict:
    """The decode steps alone: ``prefill`` (the same generation with one new token: the prompt's forward pass and
    the first token) timed as the whole call is, its median subtracted from ``call_s`` (the whole call's median),
    which leaves ``new_tokens`` − 1 steps. Returns ``prefill_s``, ``decode_tokens_per_s`` and ``decode_ms_per_step``
    (None where the difference is not positive: timing noise on a tiny model)."""
    _, times = timed(prefill, device, repeats)
    prefill_s = statistics.median(times)
    steps_s = call_s - prefill_s
    ok = steps_s > 0
    return {
        "prefill_s": prefill_s,
        "decode_tokens_per_s": batch * (new_tokens - 1) / steps_s if ok else None,
        "decode_ms_per_step": steps_s / (new_tokens - 1) * 1e3 if ok else None,
    }


def describe(row: dict) -> str:
    check = row.get("check")
    verdict = ""
    if check:
        verdict = (
            f"  check rel err {check['max_rel_err']:.1e} (reference decode {check['reference_rel_err']:.1e}, "
            f"≤ {check['error_factor']:g}x) {'ok' if check['ok'] else 'FAIL'}"
        )
        verdict += (
            f" (argmax agree {check['argmax_agree']:.1%} of {check['argmax_pairs']} step-rows, "
            f"{check['argmax_flips']} flips, {check['decisive_flips']} decisive; "
            f"compile + check {row['compile_and_check_s']:.0f} s)"
        )
    if row.get("cudagraph_skips"):
        verdict += f"  CUDA graphs skipped {row['cudagraph_skips']}x (see the log above)"
    decode = ""
    if row.get("decode_tokens_per_s"):
        decode = f"  (prefill {row['prefill_s'] * 1e3:.1f} ms; steps alone {row['decode_tokens_per_s']:,.1f} tok/s)"
    return (
        f"{row['preset']:20s} {label(row):22s} batch {row['batch']:3d}: {row['tokens_per_s']:10,.1f} tok/s  "
        f"{row['ms_per_step']:8.2f} ms/step  warm-up {row['warmup_s']:6.1f} s{decode}{verdict}"
    )


def label(row: dict) -> str:
    """The row's mode, with "unfused" for a decoder on the model's modules, "+options" for inductor options and
    "kernel on/off" for a --decode-kernel other than the decoder's default."""
    return (
        row["mode"]
        + (" unfused" if row.get("fusion") == "unfused" else "")
        + (" +options" if row.get("compile_options") else "")
        + (f" kernel {row['decode_kernel']}" if row.get("decode_kernel", "default") != "default" else "")
    )


SYNC_OPS = (
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::equal",
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
)
COMPILED_REGION = "Torch-Compiled Region"


def host_work(prof, new: int) -> dict:
    """Per new token, from a CPU (+ CUDA) profile: aten operators the host dispatches (calls not made from
    inside another aten operator), those of them outside any compiled region, leaf aten ops, host syncs
    (``SYNC_OPS``), and the host microseconds of torch.compile's wrapping of a compiled call (cache lookup,
    guards, AOT runtime wrappers: the region's time less inductor's compiled graph's own call; with other
    backends, which record no such call, the whole region)."""
    events = prof.events()

    def under(e, prefix: str) -> bool:
        while e is not None:
            if e.name.startswith(prefix):
                return True
            e = e.cpu_parent
        return False

    top = [e for e in events if e.name.startswith("aten::") and not under(e.cpu_parent, "aten::")]
    regions = [e for e in events if e.name.startswith(COMPILED_REGION)]
    graph_calls = [e for e in events if e.name.startswith("## Call CompiledFxGraph")]
    lookups = [e for e in events if e.name == "TorchDynamo Cache Lookup"]
    wrapper_us = sum(e.cpu_time_total for e in regions + lookups) - sum(e.cpu_time_total for e in graph_calls)
    return {
        "ops_per_token": len(top) / new,
        "ops_outside_graph_per_token": sum(not under(e, COMPILED_REGION) for e in top) / new,
        "aten_leaf_ops_per_token": sum(1 for e in events if e.name.startswith("aten::") and not e.cpu_children) / new,
        "syncs_per_token": sum(e.name in SYNC_OPS for e in events) / new,
        "compiled_calls_per_token": len(regions) / new,
        "compile_wrapper_us_per_token": wrapper_us / new if regions else None,
        "graph_call_us_per_token": sum(e.cpu_time_total for e in graph_calls) / new if regions else None,
    }


def device_kernels(events, new: int, top: int = 20) -> dict[str, dict[str, float]]:
    """Per new token, the GPU work of a profile's ``events`` (``prof.events()``) by kernel name: device
    microseconds and calls, the ``top`` costliest first (also the kernels a CUDA graph replays, which the
    profiler records as such). Names are cut to 160 characters. Empty on the CPU. Comparing two families'
    tables shows which kernels a step of one spends its extra time in."""
    from torch.autograd import DeviceType

    by_name: dict[str, list[float]] = {}
    for e in events:
        if e.device_type == DeviceType.CPU:
            continue
        entry = by_name.setdefault(e.name[:160], [0.0, 0.0])
        entry[0] += e.device_time_total
        entry[1] += 1
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
    return {name: {"us_per_token": us / new, "calls_per_token": calls / new} for name, (us, calls) in ranked}


def profile_generation(
    mode: str, fused: bool | None, model, batch: int, args, device: torch.device, kernel: str | None = None
) -> dict:
    """PyTorch profiler over one greedy ``generate`` call in ``mode`` (eager or a decoder mode; an EOS id that never
    comes, so that the stop check runs), after a warm-up call: per new token, the wall time, the host work
    (``host_work``), CUDA kernel and graph launches, the GPU's kernel time, and the share of the wall time
    spent inside aten operators. GPU kernel time per token near the wall time per token: the step is bound by
    the GPU (kernel count and latency); far below it: by the host."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    new = args.new_tokens
    prompt = torch.randint(0, model.config.vocab_size, (batch, args.prompt_len), device=device)
    decoder = None
    if mode in DECODER_MODES:
        decoder = StaticDecoder(model, args.prompt_len + new, **decoder_settings(mode, fused, args, kernel))
    eos = model.config.vocab_size  # outside the vocabulary: never produced

    def call():
        return generate(model, prompt, new, temperature=0, eos_id=eos, decoder=decoder)

    call()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        call()
        sync(device)
        wall = time.perf_counter() - start
    events = prof.key_averages()

    def count(*names: str) -> float:
        return sum(e.count for e in events if e.key in names or any(e.key.startswith(n) for n in names)) / new

    # kernels, copies and sets on the GPU (a CPU operator's device time repeats its kernels': not counted)
    gpu_us = sum(e.device_time_total for e in prof.events() if e.device_type != DeviceType.CPU)
    op_time = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::")) / 1e6
    on_cuda = device.type == "cuda"
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)
    return {
        "mode": mode,
        **({"fusion": "fused" if fused else "unfused", "decode_kernel": kernel} if mode in DECODER_MODES else {}),
        "ms_per_token": wall / new * 1e3,
        **host_work(prof, new),
        "cuda_kernels_per_token": count("cudaLaunchKernel", "cuLaunchKernel") if on_cuda else None,
        "cuda_graph_launches_per_token": count("cudaGraphLaunch") if on_cuda else None,
        "gpu_kernel_ms_per_token": gpu_us / new / 1e3 if on_cuda else None,
        "share_of_wall_inside_aten_ops": op_time / wall,
        "top_ops_self_ms_per_token": {
            e.key: e.self_cpu_time_total / new / 1e3 for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
        },
        "top_gpu_kernels_per_token": device_kernels(prof.events(), new),
    }


def inductor_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` → (key, value), the value a Python literal (True, 1, 0.5, 'x') or else the text itself."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. coordinate_descent_tuning=True), got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def build_parser() -> argparse.ArgumentParser:
    """The command line (its own function, so tests can check the documented commands without running them)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU smoke run: tiny presets, every mode, few tokens")
    parser.add_argument("--size", default="350m")
    parser.add_argument("--families", nargs="+", default=sorted(FAMILIES), choices=sorted(FAMILIES))
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled", "hf"], choices=MODES)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled modes")
    parser.add_argument(
        "--fusion",
        nargs="+",
        choices=["fused", "unfused"],
        default=["fused"],
        help="decoder modes: merged weights (fused) and/or the model's modules (unfused), a row each",
    )
    parser.add_argument(
        "--inductor-option",
        action="append",
        type=inductor_option,
        default=[],
        metavar="KEY=VALUE",
        help="an inductor option for the compiled modes (torch.compile options=), e.g. "
        "coordinate_descent_tuning=True; repeatable",
    )
    parser.add_argument(
        "--decode-kernel",
        nargs="+",
        choices=sorted(DECODE_KERNEL),
        default=["default"],
        help="decoder modes: the differential decode kernel as the decoder chooses (default: on CUDA), on and/or "
        "off, a row each",
    )
    parser.add_argument("--budget-s", type=float, default=None, help="start no row after this many seconds")
    parser.add_argument("--profile", action="store_true", help="profile the eager/decoder modes instead of timing")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU runs)")
    parser.add_argument("--out", help="results folder (default benchmarks/results)")
    return parser


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    if args.smoke:
        args.size, args.batch, args.prompt_len, args.new_tokens, args.repeats = "tiny", [1, 3], 9, 6, 1
        args.modes = list(MODES) if args.modes == parser.get_default("modes") else args.modes
        args.fusion = ["fused", "unfused"] if args.fusion == parser.get_default("fusion") else args.fusion
        if args.compile_backend == parser.get_default("compile_backend"):
            args.compile_backend = "aot_eager"  # seconds instead of a minute of C++ compiles per graph
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    payload = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "environment": environment()}
    payload["settings"]["dtype"] = str(dtype).split(".")[-1]
    rows: list[dict] = []
    payload["results"] = rows
    failures, began = 0, time.perf_counter()
    print(f"device {payload['environment']['device']}, {payload['settings']['dtype']}", flush=True)
    name = "generate-profile" if args.profile else "generate-smoke" if args.smoke else "generate"
    path = None
    for family in args.families:
        torch.manual_seed(0)
        model = build_model(ModelConfig.from_preset(f"{family}-{args.size}"), device=device, dtype=dtype).eval()
        torch._dynamo.reset()  # every family's graphs count from zero against the recompile limit
        checked = not args.profile and any(m in CHECKED_MODES for m in args.modes)
        exact = exact_model(model) if checked else None
        if args.profile:
            for batch in args.batch:
                for mode, fused, kernel in row_plan(
                    [m for m in args.modes if m == "eager" or m in DECODER_MODES], args, family
                ):
                    if DECODER_MODES.get(mode, {}).get("cuda_graph") and device.type != "cuda":
                        continue
                    result = {"preset": f"{family}-{args.size}", "batch": batch}
                    result.update(profile_generation(mode, fused, model, batch, args, device, kernel))
                    rows.append(result)
                    tables = ("top_ops_self_ms_per_token", "top_gpu_kernels_per_token")
                    print({k: v for k, v in result.items() if k not in tables}, flush=True)
                    for kernel_name, cost in result["top_gpu_kernels_per_token"].items():
                        print(f"  {cost['us_per_token']:9.2f} us {cost['calls_per_token']:7.2f} calls  {kernel_name}")
                    path = write_result(name, payload, args.out) if path is None else _rewrite(path, payload)
            continue
        for batch in args.batch:
            for mode, fused, kernel in row_plan(args.modes, args, family):
                if args.budget_s is not None and time.perf_counter() - began > args.budget_s:
                    print(f"{family}-{args.size} {mode} batch {batch}: skipped (--budget-s)", flush=True)
                    continue
                row = bench_row(family, args.size, mode, fused, batch, args, device, dtype, model, exact, kernel)
                if row is None:
                    continue
                failures += bool(row.get("check") and not row["check"]["ok"])
                rows.append(row)
                print(describe(row), flush=True)
                path = write_result(name, payload, args.out) if path is None else _rewrite(path, payload)
        del model, exact
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not args.profile and rows:
        print(_summary(rows))
    print(f"wrote {path}" if path else "nothing measured", flush=True)
    return 1 if failures else 0


def row_plan(modes: list[str], args, family: str | None = None) -> list[tuple[str, bool | None, str | None]]:
    """(mode, fused, decode kernel) of each row, in order: a decoder mode once per ``--fusion`` and
    ``--decode-kernel`` (but not unfused with the kernel on, nor on for a ``family`` without DIFF or Shared DIFF
    (V1) layers, which the kernel serves alone), the others once (fused and kernel None)."""
    fusions = [f == "fused" for f in args.fusion]
    has_kernel = family is None or FAMILIES[family] in SUB_HEADS
    plan = []
    for mode in modes:
        if mode not in DECODER_MODES:
            plan.append((mode, None, None))
        else:
            kernels = args.decode_kernel  # the kernel reads the merged weights: no "on" row unfused
            plan.extend((mode, f, k) for f in fusions for k in kernels if k != "on" or (f and has_kernel))
    return plan


def _rewrite(path: Path, payload: dict) -> Path:
    import json

    path.write_text(json.dumps(payload, indent=2))
    return path


def _summary(rows: list[dict]) -> str:
    """tokens/s per preset and batch (rows) and mode (columns), and each against the Transformer's of that column
    and batch where measured (issue 21's target for the differential families: ≥ 0.9)."""
    labels = list(dict.fromkeys(label(r) for r in rows))
    keys = list(dict.fromkeys((r["preset"], r["batch"]) for r in rows))
    speed = {(r["preset"], r["batch"], label(r)): r["tokens_per_s"] for r in rows}
    lines = [[p, b, *(f"{speed[(p, b, m)]:,.1f}" if (p, b, m) in speed else "" for m in labels)] for p, b in keys]
    text = table(["preset", "batch", *labels], lines)
    base = {(b, m): v for (p, b, m), v in speed.items() if p.startswith("transformer-")}

    def ratio(p: str, b: int, m: str) -> str:
        return f"{speed[(p, b, m)] / base[(b, m)]:.2f}" if (p, b, m) in speed and (b, m) in base else ""

    ratios = [[p, b, *(ratio(p, b, m) for m in labels)] for p, b in keys if not p.startswith("transformer-")]
    if base and ratios:
        text += "\n\nagainst the Transformer (same mode and batch):\n" + table(["preset", "batch", *labels], ratios)
    return text


if __name__ == "__main__":
    sys.exit(main())
