"""Decoding with fixed shapes, so that one compiled decode step serves every position (gpt-fast's static KV
cache; transformers' ``StaticCache``).

A decode step writes its keys and values at a position held in a device tensor and attends over the whole
cache buffer, the positions not written yet (and each row's left padding) masked out; its RoPE angles are
rows of a table indexed by that position tensor. No shape and no Python number in the step changes from one
position to the next, and nothing in it reads back from the device, so ``torch.compile`` traces it once and,
with CUDA graphs on CUDA (reduce-overhead's ``triton.cudagraphs``, with ``CUDA_COMPILE_OPTIONS`` by default),
replays it as one CUDA graph per token. Its inputs are buffers of
fixed addresses updated in place (the new tokens are copied into one), so a replay copies no input.
``cuda_graph=True`` instead captures the step (compiled or not) in one ``torch.cuda.CUDAGraph`` and replays
it directly, without torch.compile's per-call guards and CUDA-graph-tree bookkeeping (PyTorch's "CUDA Graphs"
notes: whole-network capture after a warm-up on a side stream). The prefill runs eagerly through
``LanguageModel.forward``.

At batch 1 a GPU decode step is most likely bound by the number of kernels it launches, not by the bytes of
weights it reads (on an H200 the compiled 350m step took 1.64 ms with or without torch.compile's host work, and
its weights are ~0.15 ms of traffic: docs/performance.md), so by default (``fused=True``) the decoder merges
each layer's weights once, at construction
(``Block.fused_weights``), and hands them to the layers through its cache: one GEMM for all of a layer's attention
input projections (Shared DIFF's low-rank updates merged into dense maps, W + A·B, as low-rank adapters are merged
for inference; DIFF V2's W_λ included), one for the MLP's gate and up, λ and the head-norm scale precomputed,
``F.rms_norm`` (one kernel on CUDA) for the norms, and K1, K2 in one cache buffer. The step also hands the layers
an additive float mask made once per step, so no attention call converts a boolean one. On CUDA the DIFF and Shared
DIFF (V1) layers then run their decode step's differential tail (two attention maps, their difference, the head
norm) in one Triton kernel (``ops.triton_decode``; by default on CUDA: ``DECODE_KERNEL_BY_DEFAULT``), learnt
through the cache as the merged weights are. The merged weights are a
snapshot: ``prefill`` merges again when a parameter changed in place since (its version counter moved: optimiser
steps, ``load_state_dict``, ``copy_``), and ``refresh()`` does so on demand; a change behind autograd's back
(``p.data = ...``, ``p.data.copy_(...)``) needs ``refresh()``. The training path and ``LanguageModel.forward``
with a ``KVCache`` (the reference decode) use the parameters as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from shareddiff.config import SUB_HEADS
from shareddiff.layers import rope_angles
from shareddiff.model import KVCache, LanguageModel


class StaticKVCache(KVCache):
    """A ``KVCache`` whose decode steps keep every shape fixed.

    While ``write_at`` is None it is a plain ``KVCache`` (the prefill: ``update`` returns views of the filled
    positions). Once ``write_at`` holds a position tensor (1,) int64, ``update`` writes the new (B, H, 1, ·)
    tensors of a layer there and returns that layer's whole buffers (B, H, max_len, ·), whatever tensors the
    layer stores (K, V; K1, K2, V; ...): the caller's attention mask hides the positions not filled.
    """

    def __init__(
        self,
        n_layers: int,
        max_len: int,
        fused: list[dict[str, Tensor]] | None = None,
        decode_attention: Callable[..., Tensor] | None = None,
    ) -> None:
        super().__init__(n_layers, max_len)
        self.write_at: Tensor | None = None
        self.split_counters: Tensor | None = None  # the decode kernel's arrival counters (differential_decode_step)
        self._fused = fused  # each layer's Block.fused_weights(), or None
        self._decode_attention = decode_attention

    def fused_weights(self, layer_idx: int) -> dict[str, Tensor] | None:
        return None if self._fused is None else self._fused[layer_idx]

    def decode_attention(self) -> Callable[..., Tensor] | None:
        """The differential decode kernel (``ops.triton_decode.differential_decode_step``) in a decode step of
        a decoder that uses it; None in the prefill and otherwise."""
        return None if self.write_at is None else self._decode_attention

    def update(self, layer_idx: int, *new: Tensor) -> tuple[Tensor, ...]:
        if self.write_at is None:
            return super().update(layer_idx, *new)
        stored = self._buffers[layer_idx]
        for buf, t in zip(stored, new, strict=True):
            buf.index_copy_(2, self.write_at, t)
        return tuple(stored)

    def buffers(self, layer_idx: int) -> tuple[Tensor, ...]:
        """A decode step's view of layer ``layer_idx``: its whole buffers, as ``update`` returns them, without writing
        (for a kernel that writes the step's entries at ``write_at`` itself). Raises ``RuntimeError`` before the
        prefill has allocated them or outside a decode step."""
        stored = self._buffers[layer_idx]
        if self.write_at is None or stored is None:
            raise RuntimeError(f"layer {layer_idx}'s buffers are read in decode steps only, after the prefill")
        return tuple(stored)

    def reset(self) -> None:
        """Empty the cache for a new prompt, keeping the buffers (and their addresses)."""
        self.length, self.token_mask, self.write_at = 0, None, None

    def tensors(self) -> list[Tensor]:
        """Every buffer allocated so far."""
        return [t for layer in self._buffers if layer for t in layer]


def on_triton_backend(model: LanguageModel) -> bool:
    """Whether a layer of ``model`` runs its attention on the fused training kernel ("triton" backend), which takes
    no attention mask, so no static decode step can run it."""
    return any(getattr(block.attention, "backend", None) == "triton" for block in model.layers)


# Whether decode_kernel=None turns the differential decode kernel on for CUDA models. On since its first GPU
# record (one H200, bf16, 350m, 2026-12-01; docs/performance.md, "The decode kernel on the GPU"): its CUDA tests
# passed, and at batch 1 it took the compiled CUDA-graph step of Shared DIFF from 826 to 966 tokens/s and DIFF's
# from 813 to 958; at batch 32 the two were level (18,683 against 18,828 tokens/s for Shared DIFF).
DECODE_KERNEL_BY_DEFAULT = True


def _decode_kernel(
    model: LanguageModel, choice: bool | None, fused: bool, on_cuda: bool
) -> Callable[..., Tensor] | None:
    """The differential decode kernel a ``StaticDecoder`` hands its layers through the cache (its ``decode_kernel``
    argument: ``choice``), or None. Raises ``ValueError`` for ``choice=True`` where the kernel cannot run."""
    if choice is False:
        return None
    problems = []
    if model.config.attention not in SUB_HEADS:
        problems.append(f"its attention is {model.config.attention!r}, and it serves DIFF and Shared DIFF (V1) only")
    if not fused:
        problems.append("it reads the merged weights of fused=True (set fused=True)")
    d, dtype = model.config.head_dim, next(model.parameters()).dtype
    if d & (d - 1):
        problems.append(f"the head dim {d} is not a power of two")
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        problems.append(f"it runs in float16, bfloat16 or float32, the model is {dtype}")
    try:
        from shareddiff.ops.triton_decode import INTERPRET, differential_decode_step
    except ImportError:
        problems.append("Triton is not installed")
    else:
        if not (on_cuda or INTERPRET):
            problems.append("the model is not on CUDA (the CPU runs Triton kernels only under TRITON_INTERPRET=1)")
    if problems:
        if choice:
            raise ValueError(
                f"decode_kernel=True, but the kernel cannot run: {'; '.join(problems)}; fix that, or leave it None"
            )
        return None
    if choice is None and not (on_cuda and DECODE_KERNEL_BY_DEFAULT):
        return None
    return differential_decode_step


# inductor's options for a compiled decode step on CUDA when none are given (gpt-fast's choice): on one H200,
# bf16, 350m, batch 1 (docs/performance.md, "The decode plan's second run") coordinate descent over each
# kernel's launch settings took the compiled CUDA-graph step from 919 to 1,109 tokens/s (Transformer) and from
# 735 to 813 (Shared DIFF), for 15-20 s more compile time
CUDA_COMPILE_OPTIONS = {"coordinate_descent_tuning": True}


def compile_arguments(
    backend: str, mode: str | None, compile_options: dict | None, on_cuda: bool, cuda_graph: bool
) -> dict:
    """The ``mode``/``options`` keyword arguments ``StaticDecoder`` hands to ``torch.compile`` for its step.

    ``compile_options`` None: ``CUDA_COMPILE_OPTIONS`` for inductor on CUDA without a ``mode``, else none; ``{}``:
    none. Inductor on CUDA without a ``mode`` and without ``cuda_graph`` (the decoder's own capture) also replays
    CUDA graphs: ``mode="reduce-overhead"``, or its option ``triton.cudagraphs`` joined to the options, since
    torch.compile takes a mode or options, not both."""
    inductor_on_cuda = backend == "inductor" and on_cuda and mode is None
    if compile_options is None:
        compile_options = dict(CUDA_COMPILE_OPTIONS) if inductor_on_cuda else {}
    cuda_graph_trees = inductor_on_cuda and not cuda_graph
    if compile_options:
        return {"options": {**({"triton.cudagraphs": True} if cuda_graph_trees else {}), **compile_options}}
    mode = "reduce-overhead" if cuda_graph_trees else mode
    return {"mode": mode} if mode is not None else {}


class StaticDecoder:
    """Prefill, then single-token decode steps of fixed shapes, for ``model``, up to ``max_len`` positions a row.

    Keep one across calls: its cache buffers and compiled step serve every later batch of the same size (a
    new batch size allocates and compiles once more). ``compile=True`` compiles the step with
    ``torch.compile(backend, fullgraph=True, dynamic=False)`` and the mode or options of ``compile_arguments``:
    for the inductor backend on CUDA without a ``mode``, CUDA graphs (reduce-overhead's option, unless
    ``cuda_graph``) with ``CUDA_COMPILE_OPTIONS``. ``cuda_graph=True`` (CUDA only): the
    first step after each (re)allocation runs as usual (and compiles), the second captures the step in a CUDA
    graph, every later one replays it. Batches may be left-padded (``attention_mask``), as in
    ``LanguageModel.forward``; every row then decodes as it would alone. Works with every attention variant
    whose layers store their keys/values through ``cache.update`` and take a boolean or additive mask.
    ``fused=True`` (default): decode with each layer's weights merged once (the module docstring; ``refresh``);
    False: with the model's modules as they are (the reference decode's arithmetic, fixed shapes).
    ``compile_options``: inductor's options for ``torch.compile(options=...)``, joined to reduce-overhead's
    ``{"triton.cudagraphs": True}`` where that mode would be the default; torch.compile takes a mode or options, so
    not with ``mode``. None (default): ``CUDA_COMPILE_OPTIONS`` (gpt-fast's ``{"coordinate_descent_tuning":
    True}``) for inductor on CUDA without a ``mode``, none elsewhere; ``{}``: none (``compile_arguments``).
    ``decode_kernel``: whether the DIFF and Shared DIFF (V1) layers run each decode step's differential tail in one
    Triton kernel (``ops.triton_decode``) instead of two SDPA calls and a norm. None (default): where it applies
    (``fused``, a DIFF or Shared DIFF model on CUDA in float16, bfloat16 or float32, a power-of-two head dim,
    Triton installed) while ``DECODE_KERNEL_BY_DEFAULT`` is set (it is, since the kernel's GPU record); True:
    always (on the CPU under ``TRITON_INTERPRET=1``: tests); False: never. The prefill and other layers are as they
    were.

    Raises ``ValueError`` if ``max_len`` exceeds the model's ``max_seq_len``, for ``cuda_graph`` with a model
    off CUDA or with ``mode="reduce-overhead"``, for ``compile_options`` with a ``mode``, for ``decode_kernel=True``
    without ``fused``, for a model without DIFF or Shared DIFF (V1) layers or where the kernel cannot run, and from
    ``prefill``/``step`` when a prompt or a step does not fit ``max_len``.
    """

    def __init__(
        self,
        model: LanguageModel,
        max_len: int | None = None,
        compile: bool = False,
        backend: str = "inductor",
        mode: str | None = None,
        cuda_graph: bool = False,
        fused: bool = True,
        compile_options: dict | None = None,
        decode_kernel: bool | None = None,
    ) -> None:
        limit = model.config.max_seq_len
        max_len = limit if max_len is None else max_len
        if not 1 <= max_len <= limit:
            raise ValueError(f"max_len={max_len} must be between 1 and the model's max_seq_len={limit}")
        if cuda_graph and mode == "reduce-overhead":
            raise ValueError(
                'mode="reduce-overhead" already replays CUDA graphs; give cuda_graph=True with another mode, or not'
            )
        if compile_options and mode is not None:
            raise ValueError(
                f"torch.compile takes a mode or options, not both: give mode={mode!r} or compile_options, or put the "
                f"mode's options (torch._inductor.list_mode_options({mode!r})) into compile_options"
            )
        on_cuda = next(model.parameters()).is_cuda
        if cuda_graph and not on_cuda:
            raise ValueError("cuda_graph=True needs the model on a CUDA device; move it there or leave cuda_graph off")
        self.model, self.max_len, self.cuda_graph = model, max_len, cuda_graph
        self._decode_attention = _decode_kernel(model, decode_kernel, fused, on_cuda)
        self.cache: StaticKVCache | None = None
        self._fused: list[dict[str, Tensor]] | None = None
        if fused:
            self._merge()
        self._step_fn = self._step
        if compile:
            options = compile_arguments(backend, mode, compile_options, on_cuda, cuda_graph)
            self._step_fn = torch.compile(self._step, backend=backend, fullgraph=True, dynamic=False, **options)

    @property
    def batch_size(self) -> int | None:
        return None if self.cache is None else self._pad.shape[0]

    def _merge(self) -> None:
        """Merge the model's weights for decoding (``Block.fused_weights``), noting the parameters' versions."""
        self._fused = [block.fused_weights() for block in self.model.layers]
        for layer in self._fused:
            for t in layer.values():
                if t is not None:
                    torch._dynamo.mark_static_address(t)  # read in place by CUDA graphs, never copied in
        self._merged_params = list(self.model.parameters())  # held, so that their ids stay theirs
        self._merged_state = self._parameter_state()

    def _parameter_state(self) -> list[tuple]:
        """Each parameter's identity, version counter (moved by every in-place change), dtype and device."""
        return [(id(p), p._version, p.dtype, p.device) for p in self.model.parameters()]

    @torch.no_grad()
    def refresh(self) -> None:
        """Merge the model's current weights again: in place where shapes, device and dtype are unchanged (compiled
        steps and captured CUDA graphs keep reading them), else anew, with a fresh cache at the next ``prefill``.
        ``prefill`` calls it when a parameter changed in place since; call it after changing one behind autograd's
        back (``p.data``). Nothing to do for a decoder built with ``fused=False``."""
        if self._fused is None:
            return
        old = self._fused
        self._merge()
        pairs = [
            (a, b)
            for layer_old, layer_new in zip(old, self._fused, strict=True)
            for a, b in zip(layer_old.values(), layer_new.values(), strict=True)
            if a is not None
        ]
        if all(a.shape == b.shape and a.device == b.device and a.dtype == b.dtype for a, b in pairs):
            for a, b in pairs:
                a.copy_(b)
            self._fused = old
        else:
            self.cache = None

    def _query_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype of the attention's queries, which the additive mask and the cached K/V take: the model's, or
        autocast's where it is on for ``device`` (autocast casts every floating dtype but float64)."""
        dtype = self.model.tok_embeddings.weight.dtype
        if dtype != torch.float64 and torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return dtype

    def _allocate(self, batch_size: int, device: torch.device) -> None:
        """The per-batch-size state: cache, input tokens, position, padding, token mask and RoPE table (fixed
        addresses), the additive mask's dtype (the queries', under autocast too), and no CUDA graph yet."""
        c = self.model.config
        self._mask_dtype = self._query_dtype(device)
        self.cache = StaticKVCache(c.n_layers, self.max_len, self._fused, self._decode_attention)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._warmed_up = False  # cuda_graph: whether the step ran once outside a graph
        self._tokens = torch.zeros(batch_size, dtype=torch.long, device=device)  # the step's input, copied into
        self._position = torch.zeros(1, dtype=torch.long, device=device)  # the column the next step writes
        self._pad = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # left padding of each row
        self._token_mask = torch.ones(batch_size, self.max_len, dtype=torch.bool, device=device)
        self._key_positions = torch.arange(self.max_len, device=device)
        if self._decode_attention is not None:  # zero between launches, so every layer and step shares them
            self.cache.split_counters = torch.zeros(batch_size * c.n_heads, dtype=torch.int32, device=device)
            torch._dynamo.mark_static_address(self.cache.split_counters)
        dtype = self.model.tok_embeddings.weight.dtype  # the table's precision follows the model's, as in forward
        self._cos, self._sin = rope_angles(self._key_positions, c.head_dim, c.rope_theta, dtype)  # (max_len, 1, d/2)
        # the next step's additive mask and RoPE rows, written by prefill and at the end of each step: every layer
        # reads these buffers, where a mask or rows computed inside the compiled step would be realised once per
        # layer (inductor copies an unrealised pointwise value into each custom op that takes it: three kernels per
        # layer at batch 1, ~70 µs of a ~900 µs Shared DIFF step on one H200)
        self._step_mask = torch.zeros(batch_size, 1, 1, self.max_len, dtype=self._mask_dtype, device=device)
        self._step_cos = torch.zeros(batch_size, 1, 1, c.head_dim // 2, dtype=dtype, device=device)
        self._step_sin = torch.zeros_like(self._step_cos)
        for t in (self._tokens, self._position, self._pad, self._token_mask, self._key_positions, self._cos, self._sin,
                  self._step_mask, self._step_cos, self._step_sin):  # fmt: skip
            torch._dynamo.mark_static_address(t)

    @torch.no_grad()
    def prefill(self, prompt: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 0) -> Tensor:
        """Run ``prompt`` (B, T), optionally left-padded with ``attention_mask`` (B, T) (1 on tokens), into a
        fresh cache; return the logits (B, vocab) of each row's last position. Raises ``ValueError`` if
        T + ``max_new_tokens`` exceeds ``max_len``, or if the model's attention backend is "triton" (the fused
        training kernel takes no mask, and every decode step masks the cache's unfilled positions)."""
        b, t = prompt.shape
        if t == 0:
            raise ValueError("the prompt is empty; give at least one token")
        if on_triton_backend(self.model):
            raise ValueError(
                "the model's attention backend is 'triton', the fused training kernel, which takes no attention "
                "mask; every static decode step masks the cache's positions not yet written. Call "
                "model.set_attention_backend('auto') (SDPA) before decoding"
            )
        if t + max_new_tokens > self.max_len:
            raise ValueError(
                f"prompt ({t}) + max_new_tokens ({max_new_tokens}) = {t + max_new_tokens} positions exceed the "
                f"static cache's max_len={self.max_len}; build the StaticDecoder with a larger max_len (at most "
                f"max_seq_len={self.model.config.max_seq_len}) or shorten the prompt or the continuation"
            )
        if self._fused is not None and self._parameter_state() != self._merged_state:
            self.refresh()
        if (
            self.cache is None
            or self.batch_size != b
            or self._position.device != prompt.device
            or self._mask_dtype != self._query_dtype(prompt.device)  # autocast switched: K/V and mask of another dtype
        ):
            self._allocate(b, prompt.device)
        fresh = not self.cache.tensors()
        self.cache.reset()
        last = torch.full((b, 1), t - 1, device=prompt.device)  # left-padded rows all end in a token
        logits = self.model(prompt, self.cache, attention_mask, logits_at=last)[:, -1]
        token_mask = self.cache.token_mask  # (B, max_len): the prompt's mask, then True; None without padding
        if token_mask is None:
            self._token_mask.fill_(True)
            self._pad.zero_()
        else:
            self._token_mask.copy_(token_mask)
            self._pad.copy_(t - token_mask[:, :t].sum(-1, keepdim=True))
        self._position.fill_(t)
        self._write_step_inputs(self._position)
        if fresh:
            for buf in self.cache.tensors():
                torch._dynamo.mark_static_address(buf)
        self.cache.write_at = self._position
        return logits

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        """Append ``tokens`` (B,) int64, one per row, at the next position; return the logits (B, vocab).

        With CUDA graphs (``mode="reduce-overhead"`` or ``cuda_graph``), the returned tensor is overwritten by the
        next step: use or clone it before. Raises ``ValueError`` when the cache is full or ``tokens`` has the
        wrong shape, and ``RuntimeError`` before a ``prefill``.
        """
        if self.cache is None or self.cache.write_at is None:
            raise RuntimeError("call prefill() before step()")
        if self.cache.length >= self.max_len:
            raise ValueError(
                f"the static cache's {self.max_len} positions are full; build the StaticDecoder with a larger max_len"
            )
        if tuple(tokens.shape) != (self.batch_size,):
            raise ValueError(f"tokens must be (B,) = ({self.batch_size},), one per row, got {tuple(tokens.shape)}")
        self._tokens.copy_(tokens)
        if self._graph is not None:
            self._graph.replay()
            logits = self._graph_logits
        elif self.cuda_graph:
            logits = self._warm_up_or_capture()
        else:
            logits = self._step_fn()
        self.cache.length += 1
        return logits

    def _warm_up_or_capture(self) -> Tensor:
        """The first step runs on a side stream (compiling the step, initialising cuBLAS and the like outside any
        capture); the second is captured in a CUDA graph, then replayed to run it."""
        if not self._warmed_up:
            side, main = torch.cuda.Stream(), torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                logits = self._step_fn()
            main.wait_stream(side)
            logits.record_stream(main)
            self._warmed_up = True
            return logits
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records the kernels (position.add_ included) without running them
            self._graph_logits = self._step_fn()
        self._graph = graph
        graph.replay()
        return self._graph_logits

    def _write_step_inputs(self, position: Tensor) -> None:
        """Write the additive mask (B, 1, 1, max_len) and the RoPE rows (B, 1, 1, d/2) of a step at cache column
        ``position`` (1,) into their buffers. A position past the cache (after the last step) reads the table's last
        row: no step runs there."""
        positions = (position - self._pad).clamp(0, self.max_len - 1)  # (B, 1): a row's RoPE position counts its tokens
        self._step_cos.copy_(self._cos[positions])
        self._step_sin.copy_(self._sin[positions])
        visible = self._token_mask & (self._key_positions <= position)  # (B, max_len): filled tokens
        self._step_mask.copy_(torch.where(visible, 0.0, float("-inf"))[:, None, None, :])

    def _step(self) -> Tensor:
        """The compiled decode step: the tokens in ``_tokens`` at column ``_position`` → logits (B, vocab);
        advances the position and writes the next step's mask and RoPE rows."""
        tokens = self._tokens[:, None]  # (B, 1)
        rope = self._step_cos, self._step_sin  # (B, 1, 1, d/2) each, as prefill or the last step wrote them
        logits = self.model.forward_blocks(tokens, rope, self.cache, self._step_mask)
        self._position.add_(1)
        self._write_step_inputs(self._position)
        return logits[:, -1]
