"""Model configuration, validation with clear errors, and the named presets.

Symbols follow the architecture page: ``D`` = ``d_model``, ``h`` = ``n_heads``. For DIFF and Shared
DIFF a head has two query/key sub-heads of half dimension ``d = D / (2h)`` and one value head of
dimension ``2d``; for ``standard`` a head has dimension ``D / h`` (the matched Transformer uses ``2h``
heads, so its head dimension equals ``d``). For DIFF V2 and Shared DIFF V2 ``h`` counts output heads
of dimension ``D / h``, each computed from a pair of query heads (``2h`` query heads in all).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ATTENTION_VARIANTS = ("standard", "diff", "shared_diff", "diff_v2", "shared_diff_v2")
BASE_SHARING = ("branches", "heads")
LOWRANK_INIT = ("random", "lora")
# "nanogpt": Normal(0, init_std) everywhere, residual-output projections scaled by 1/√(2L) (this project's
# default); "pytorch": the DIFF authors' code lineage — PyTorch's default nn.Linear init (Kaiming-uniform,
# bound 1/√fan_in) for every Linear, embeddings N(0, D^-1/2), no depth scaling (docs/results.md)
INIT_SCHEMES = ("nanogpt", "pytorch")
SUB_HEADS = ("diff", "shared_diff")  # a head holds two d-dim query/key sub-heads and one 2d-dim value head
DIFFERENTIAL_V2 = ("diff_v2", "shared_diff_v2")  # 2h query heads of dim D/h, paired after one attention call
LOW_RANK = ("shared_diff", "shared_diff_v2")  # shared base plus low-rank updates


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


def default_ffn_dim(d_model: int) -> int:
    """SwiGLU width: 8/3·D rounded up to a multiple of 64 (architecture §1)."""
    return _round_up(8 * d_model / 3, 64)


def default_lowrank_rank(d_model: int) -> int:
    """Low-rank update rank when none is given: D/16 rounded to a multiple of 8, at least 8."""
    return max(8, round(d_model / 16 / 8) * 8)


def lambda_init_schedule(layer_idx: int) -> float:
    """DIFF's depth schedule λ_init(l) = 0.8 − 0.6·exp(−0.3·(l − 1)), ``layer_idx`` 0-based (= l − 1)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_idx)


@dataclass
class ModelConfig:
    """Everything that fixes a model's shape and math; the attention backend is chosen at run time.

    Shared DIFF fields (``lowrank_*``) apply to ``shared_diff`` and ``shared_diff_v2`` (``base_sharing``
    to ``shared_diff`` only) and are ignored by the others; ``head_norm``, ``head_norm_weight`` and
    ``lambda_init`` apply to DIFF and Shared DIFF (V2 has no head norm and a projected λ).
    """

    attention: str = "shared_diff"
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    vocab_size: int = 512
    ffn_dim: int | None = None  # None → 8/3·D rounded up to a multiple of 64
    max_seq_len: int = 256
    n_kv_heads: int | None = None  # None → n_heads (no GQA)
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02  # the "nanogpt" init's std
    init_scheme: str = "nanogpt"  # see INIT_SCHEMES
    # Differential attention (diff and shared_diff).
    lambda_init: float | None = None  # None → depth schedule; a float → that constant in every layer
    head_norm: bool = True  # per-head RMSNorm then ×(1 − λ_init); off = the "−GroupNorm" ablation
    head_norm_weight: bool = True  # learnable weight of size 2d shared by heads (official DIFF code)
    # Shared DIFF and Shared DIFF V2.
    lowrank_rank: int | None = None  # branches: r (None → D/16); heads: per-head r_h (None → d/4)
    base_sharing: str = "branches"  # "branches" (default reading) or "heads" (alternative reading)
    lowrank_init: str = "random"  # "random": both factors random; "lora": B = 0
    notes: str = field(default="", compare=False)  # what a preset changed from its source, if anything

    def __post_init__(self) -> None:
        if self.ffn_dim is None:
            self.ffn_dim = default_ffn_dim(self.d_model) if not not_an_integer(self.d_model) and self.d_model > 0 else 0
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.attention in LOW_RANK and self.lowrank_rank is None and self._shape_ok():
            self.lowrank_rank = self._default_rank()
        self.validate()

    def _rank_limit(self) -> tuple[int, str]:
        """The bound a low-rank update's rank must stay under, and its name (architecture.md, Shared DIFF)."""
        if self.attention == "shared_diff_v2":
            return self.d_model, "d_model (the width of W_Q)"
        if self.base_sharing == "branches":
            return self.d_model // 2, "d_model/2"
        return self.head_dim, "the head half-dim d"

    def _default_rank(self) -> int:
        """The rank when none is given: D/16 rounded to a multiple of 8, at least 8 (per-head sharing: d/4); at
        widths where that is not below the bound (``_rank_limit``), half the bound."""
        if self.attention == "shared_diff" and self.base_sharing == "heads":
            rank = max(1, self.head_dim // 4)
        else:
            rank = default_lowrank_rank(self.d_model)
        limit, _ = self._rank_limit()
        return rank if rank < limit else max(1, limit // 2)

    def _shape_ok(self) -> bool:
        if not_an_integer(self.d_model) or not_an_integer(self.n_heads):
            return False  # validate() names the field
        return self.d_model > 0 and self.n_heads > 0 and self.d_model % (self.n_heads * self.width_factor) == 0

    @property
    def width_factor(self) -> int:
        """2 for DIFF and Shared DIFF (a head holds two d-dim sub-heads), 1 for standard and the V2 variants."""
        return 2 if self.attention in SUB_HEADS else 1

    @property
    def head_dim(self) -> int:
        """Per-(sub-)head query/key dimension: ``d = D/(2h)`` for DIFF and Shared DIFF, ``D/h`` otherwise."""
        return self.d_model // (self.n_heads * self.width_factor)

    @property
    def is_differential(self) -> bool:
        """Any of the four differential variants (V1 and V2)."""
        return self.attention != "standard"

    def layer_lambda_init(self, layer_idx: int) -> float:
        """λ_init of layer ``layer_idx`` (0-based): the constant if set, else the depth schedule."""
        return self.lambda_init if self.lambda_init is not None else lambda_init_schedule(layer_idx)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field and the fix for any inconsistent value."""
        check_flags(self)
        if self.attention not in ATTENTION_VARIANTS:
            raise ValueError(
                f"attention={self.attention!r} is not a known variant; use one of {list(ATTENTION_VARIANTS)}"
            )
        for name in ("d_model", "n_layers", "n_heads", "vocab_size", "max_seq_len", "ffn_dim", "n_kv_heads"):
            value = getattr(self, name)
            if not_an_integer(value) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer{not_an_integer(value, '; it is ')}")
        if self.d_model % (self.n_heads * self.width_factor):
            unit = "2·n_heads" if self.width_factor == 2 else "n_heads"
            why = " (each differential head holds two sub-heads)" if self.width_factor == 2 else ""
            raise ValueError(
                f"d_model={self.d_model} is not divisible by {unit} = {self.n_heads * self.width_factor}{why}; "
                f"choose n_heads so that d_model / {unit} is an integer"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"head dim {self.head_dim} (d_model={self.d_model}, n_heads={self.n_heads}) is odd, but RoPE "
                "rotates pairs of dimensions; choose n_heads so that the head dim is even"
            )
        if self.n_kv_heads > self.n_heads or self.n_heads % self.n_kv_heads:
            pairs = "; both query heads of a DIFF V2 pair must share one" if self.attention in DIFFERENTIAL_V2 else ""
            raise ValueError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} (GQA shares each key/value "
                f"head among n_heads / n_kv_heads query heads{pairs}); use a divisor of {self.n_heads}"
            )
        if self.lambda_init is not None and not 0.0 <= self.lambda_init < 1.0:
            raise ValueError(f"lambda_init={self.lambda_init} must be in [0, 1) or None for the depth schedule")
        if self.init_scheme not in INIT_SCHEMES:
            raise ValueError(f"init_scheme={self.init_scheme!r} is not known; use one of {list(INIT_SCHEMES)}")
        for name in ("rope_theta", "norm_eps", "init_std"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.attention in LOW_RANK:
            self._validate_low_rank()

    def _validate_low_rank(self) -> None:
        if self.base_sharing not in BASE_SHARING:
            raise ValueError(f"base_sharing={self.base_sharing!r} is not known; use one of {list(BASE_SHARING)}")
        if self.attention == "shared_diff_v2" and self.base_sharing != "branches":
            raise ValueError(
                f"base_sharing={self.base_sharing!r} is defined for shared_diff only; shared_diff_v2 shares one "
                "W_Q between the two query heads of every pair: leave base_sharing='branches'"
            )
        if self.lowrank_init not in LOWRANK_INIT:
            raise ValueError(f"lowrank_init={self.lowrank_init!r} is not known; use one of {list(LOWRANK_INIT)}")
        r = self.lowrank_rank
        limit, what = self._rank_limit()
        if not_an_integer(r) or r <= 0 or r >= limit:
            why = " (a rank that large is not low-rank)" if not not_an_integer(r) and r >= limit else ""
            head = f"lowrank_rank={r!r} is {not_an_integer(r)}; it" if not_an_integer(r) else f"lowrank_rank={r!r}"
            raise ValueError(
                f"{head} must satisfy 0 < lowrank_rank < {what} = {limit} for "
                f"attention={self.attention!r}, base_sharing={self.base_sharing!r}{why}; e.g. {self._default_rank()} "
                "(the default for this width: leave lowrank_rank unset)"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; valid fields are {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """The named preset (exact name, see ``PRESET_NAMES``) with ``overrides`` applied."""
        from shareddiff.presets import preset_dict

        values = preset_dict(name)
        values.update(overrides)
        return cls.from_dict(values)


# --- Training recipes: flat TOML sections, each read by its own component ------------------------


@dataclass
class DataConfig:
    """[data]: what to train on. ``path`` None = the bundled corpus, tokenized on first use."""

    path: str | None = None  # a folder made by `shareddiff data prepare`
    tokenizer: str | None = None  # "bundled" (16K), "bundled-4k", "docs-16k-digits", or a tokenizer.json path
    seq_len: int = 256
    val_tokens: int = 65_536  # validation loss over this many tokens of the validation split
    mix: str = ""  # synthetic rows mixed into training batches, e.g. "needle:0.2" (retrieval)
    source: str = "corpus"  # "corpus" (path/tokenizer above) or "mqar" (the synthetic task of [mqar])


@dataclass
class MQARConfig:
    """[mqar]: multi-query associative recall (Zoology, Arora et al. 2023, §3), read when data.source = "mqar".

    A sequence of ``data.seq_len`` tokens holds ``pairs`` key-value pairs, then blanks (token 0) with
    ``queries`` of the keys placed among them; the target at a query's last key token is that key's value.
    Keys come from tokens [1, V/2), values from [V/2, V); see ``shareddiff.data.mqar``.
    """

    vocab_size: int = 8192  # V, also the model's vocabulary
    pairs: int = 8  # key-value pairs per sequence
    queries: int | None = None  # keys queried per sequence (None: every key, as Zoology)
    key_len: int = 1  # tokens per key
    shared_prefix: bool = False  # distractor: keys come in twos sharing their first key_len − 1 tokens
    updates: int = 0  # distractor: extra pairs giving an earlier key a new value; the last value is the answer
    power_a: float = 0.01  # query slot i drawn ∝ i^(a − 1) (Zoology's power law; 1 = uniform)
    eval_samples: int = 1000  # sequences of the fixed evaluation set, per evaluated length

    def n_queries(self) -> int:
        return self.pairs if self.queries is None else self.queries

    def context_len(self) -> int:
        """Tokens of the key-value part: (pairs + updates) · (key_len + 1)."""
        return (self.pairs + self.updates) * (self.key_len + 1)

    def validate(self, seq_len: int, length_option: str | None = None) -> None:
        """Raise ``ValueError`` naming the field and the fix when sequences of ``seq_len`` cannot be built.
        ``length_option``: the option that gave ``seq_len`` when it is not the recipe's data.seq_len (an
        evaluation's ``--lengths``), named with its own fix in the too-short message."""
        for name in ("vocab_size", "pairs", "key_len", "eval_samples"):
            value = getattr(self, name)
            if not_an_integer(value) or value <= 0:
                raise ValueError(f"mqar.{name}={value!r} must be a positive integer{not_an_integer(value, '; it is ')}")
        if not_an_integer(self.updates) or self.updates < 0:
            why = not_an_integer(self.updates, "; it is ")
            raise ValueError(f"mqar.updates={self.updates!r} must be a non-negative integer{why}")
        if not 1 <= self.n_queries() <= self.pairs:
            raise ValueError(f"mqar.queries={self.queries!r} must be between 1 and mqar.pairs={self.pairs}")
        if self.power_a <= 0:
            raise ValueError(f"mqar.power_a={self.power_a} must be positive (1 = query slots drawn uniformly)")
        if self.shared_prefix and (self.key_len < 2 or self.pairs < 2):
            raise ValueError(
                f"mqar.shared_prefix needs keys of at least 2 tokens and 2 pairs (key_len={self.key_len}, "
                f"pairs={self.pairs}); set mqar.key_len=2"
            )
        key_tokens, value_tokens = self.vocab_size // 2 - 1, self.vocab_size - self.vocab_size // 2
        distinct_firsts = -(-self.pairs // 2) if self.shared_prefix else self.pairs
        if distinct_firsts > key_tokens or self.pairs + self.updates > value_tokens:
            raise ValueError(
                f"mqar.vocab_size={self.vocab_size} is too small for {self.pairs} keys and {self.pairs + self.updates} "
                f"distinct values ({key_tokens} key tokens, {value_tokens} value tokens); raise mqar.vocab_size"
            )
        slots = (seq_len - self.context_len()) // (self.key_len + 1)
        if slots < self.n_queries():
            need = self.context_len() + self.n_queries() * (self.key_len + 1)
            holds = f"{self.pairs + self.updates} key-value pairs and {self.n_queries()} queries"
            holds += f" (at least {need} tokens)"
            if length_option is not None:
                raise ValueError(
                    f"{length_option} {seq_len} cannot hold {holds}, the task this run was trained on; "
                    f"give longer {length_option}"
                )
            raise ValueError(
                f"data.seq_len={seq_len} cannot hold {holds}; raise data.seq_len or lower mqar.pairs"
                + (" or mqar.key_len" if self.key_len > 1 else "")
            )


@dataclass
class OptimConfig:
    """[optim]: AdamW with linear warmup then cosine decay to ``lr · min_lr_ratio``."""

    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # on matrices only (tensors of rank ≥ 2)
    warmup_steps: int = 100
    warmup_fraction: float = 0.0  # > 0: warmup = this fraction of the run's steps (replaces warmup_steps)
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


@dataclass
class TrainConfig:
    """[train]: the loop. One step = ``grad_accum`` micro-batches of ``micro_batch`` sequences per process."""

    out_dir: str = "runs/default"
    max_steps: int = 1000
    tokens_per_param: float = 0.0  # > 0: max_steps = ⌈tokens_per_param · total parameters / tokens per step⌉
    micro_batch: int = 8
    grad_accum: int = 1
    seed: int = 1337
    eval_every: int = 100
    log_every: int = 10
    device: str = "auto"  # "auto" = cuda if available, else cpu
    precision: str = "auto"  # "auto" = bf16 autocast on cuda, fp32 on cpu; or "bf16", "fp32"
    compile: bool = False
    # torch.compile's mode: "default", "reduce-overhead" (CUDA graphs: for small models whose steps are
    # kernel-launch bound), "max-autotune", "max-autotune-no-cudagraphs"
    compile_mode: str = "default"
    attn_backend: str = "auto"
    # MQAR runs: stop once mqar_accuracy (at the training length) has been ≥ early_stop_accuracy at
    # early_stop_patience consecutive evaluations (Lightning's stopping_threshold and patience); 0 = off
    early_stop_accuracy: float = 0.0
    early_stop_patience: int = 2


@dataclass
class CheckpointConfig:
    """[checkpoint]: written atomically every ``every`` steps and at the end; the last ``keep_last`` kept."""

    every: int = 100
    keep_last: int = 3


@dataclass
class ParallelConfig:
    """[parallel]: used when launched by torchrun (several processes); ignored in one process."""

    strategy: str = "ddp"  # "ddp" or "fsdp" (FSDP2: fully_shard per block, then the root)
    activation_checkpointing: bool = False  # recompute each block in the backward (any process count)
    compile_unit: str = "model"  # with train.compile: "model" (the whole model) or "block" (each block, torchtitan)
    # FSDP2 mixed precision: dtype of the gathered parameters; "auto" = bf16 when the run computes in bf16
    # (train.precision bf16, or auto on CUDA), else fp32
    param_dtype: str = "auto"
    reduce_dtype: str = "fp32"  # FSDP2 mixed precision: dtype of the gradient reduce-scatter
    # FSDP2: free the gathered parameters after forward ("always"), keep them to backward ("never"), or
    # "auto": free every block's but the last's (its backward starts at once; the root never frees them)
    reshard_after_forward: str = "auto"
    prefetch_blocks: int = 0  # FSDP2: 0 = implicit prefetch; N > 0 = gather the next N blocks explicitly
    # under train.grad_accum > 1: reduce gradients across processes on the "last" micro-batch only, or
    # "every" one; "auto" = "last" for DDP, "every" for FSDP2 (its gradients stay sharded in between)
    grad_sync: str = "auto"


@dataclass
class RunConfig:
    """A whole training recipe: ``[model]`` (a preset and field overrides) plus the sections above."""

    model: dict[str, Any] = field(default_factory=lambda: {"preset": "shared_diff-tiny"})
    data: DataConfig = field(default_factory=DataConfig)
    mqar: MQARConfig = field(default_factory=MQARConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def validate(self) -> None:
        for section in ("data", "mqar", "optim", "train", "checkpoint", "parallel"):
            if dataclasses.is_dataclass(value := getattr(self, section, None)):
                check_flags(value, f"{section}.")
        positive = {
            "data.seq_len": self.data.seq_len,
            "data.val_tokens": self.data.val_tokens,
            "train.max_steps": self.train.max_steps,
            "train.micro_batch": self.train.micro_batch,
            "train.grad_accum": self.train.grad_accum,
            "train.eval_every": self.train.eval_every,
            "train.log_every": self.train.log_every,
            "checkpoint.every": self.checkpoint.every,
            "checkpoint.keep_last": self.checkpoint.keep_last,
            "optim.lr": self.optim.lr,
        }
        for name, value in positive.items():
            if name == "optim.lr":
                if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                    raise ValueError(f"{name}={value!r} must be a positive number")
            elif not_an_integer(value) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer{not_an_integer(value, '; it is ')}")
        if self.data.source not in ("corpus", "mqar"):
            raise ValueError(f"data.source={self.data.source!r} must be 'corpus' or 'mqar'")
        if self.data.source == "mqar":
            if self.data.mix:
                raise ValueError(f"data.mix={self.data.mix!r} mixes in corpus rows; remove it with data.source=mqar")
            self.mqar.validate(self.data.seq_len)
        self._check_early_stop()
        if self.train.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"train.precision={self.train.precision!r} must be 'auto', 'bf16' or 'fp32'")
        if self.train.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"train.compile_mode={self.train.compile_mode!r} must be one of {', '.join(map(repr, COMPILE_MODES))}"
            )
        if self.parallel.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"parallel.strategy={self.parallel.strategy!r} must be 'ddp' or 'fsdp'")
        choices = {
            "compile_unit": ("model", "block"),
            "param_dtype": ("auto", "fp32", "bf16"),
            "reduce_dtype": ("fp32", "bf16"),
            "reshard_after_forward": ("auto", "always", "never"),
            "grad_sync": ("auto", "last", "every"),
        }
        for name, valid in choices.items():
            if getattr(self.parallel, name) not in valid:
                raise ValueError(
                    f"parallel.{name}={getattr(self.parallel, name)!r} must be one of {', '.join(map(repr, valid))}"
                )
        prefetch = self.parallel.prefetch_blocks
        if not_an_integer(prefetch) or prefetch < 0:
            raise ValueError(
                f"parallel.prefetch_blocks={prefetch!r} must be an integer ≥ 0 (0 = FSDP2's implicit prefetch)"
                f"{not_an_integer(prefetch, '; it is ')}"
            )
        if not isinstance(self.train.tokens_per_param, int | float) or self.train.tokens_per_param < 0:
            raise ValueError(
                f"train.tokens_per_param={self.train.tokens_per_param!r} must be ≥ 0 (0 = train.max_steps decides)"
            )
        if not 0 <= self.optim.warmup_fraction < 0.5:
            raise ValueError(
                f"optim.warmup_fraction={self.optim.warmup_fraction} must be in [0, 0.5), e.g. 0.03 for 3 % of the "
                "steps (0 = optim.warmup_steps decides)"
            )
        if not 0 <= self.optim.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio={self.optim.min_lr_ratio} must be in [0, 1]")
        if "preset" not in self.model:
            raise ValueError('[model] needs a preset, e.g. preset = "shared_diff-small"')
        self._check_attn_backend()

    def _check_early_stop(self) -> None:
        threshold, patience = self.train.early_stop_accuracy, self.train.early_stop_patience
        if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
            raise ValueError(
                f"train.early_stop_accuracy={threshold!r} must be in [0, 1] (0 = off; 0.99 = stop a solved run)"
            )
        if not_an_integer(patience) or patience < 1:
            raise ValueError(
                f"train.early_stop_patience={patience!r} must be a positive integer (evaluations)"
                f"{not_an_integer(patience, '; it is ')}"
            )
        if threshold > 0 and self.data.source != "mqar":
            raise ValueError(
                f"train.early_stop_accuracy={threshold} watches MQAR accuracy, and this run trains on "
                f"data.source={self.data.source!r}; set train.early_stop_accuracy=0 or data.source=mqar"
            )

    def _check_attn_backend(self) -> None:
        """``train.attn_backend`` must be a backend of the model's attention op (``shareddiff.ops.backends``)."""
        try:
            model = self.model_config()
        except (ValueError, TypeError):
            return  # the [model] section's own error comes where the model is built
        from shareddiff.attention import attention_class  # imports torch: only when a recipe is checked
        from shareddiff.ops import check_backend

        allowed = attention_class(model).available_backends()
        check_backend(self.train.attn_backend, allowed, "train.attn_backend", f"model.attention={model.attention!r}")

    def tokens_per_step(self, world_size: int = 1) -> int:
        """Training tokens per optimizer step over all ``world_size`` processes."""
        return self.train.micro_batch * self.train.grad_accum * self.data.seq_len * world_size

    def sized(self, n_params: int, world_size: int = 1) -> RunConfig:
        """This recipe with its step count and warmup made concrete for a model of ``n_params`` parameters.

        ``train.tokens_per_param`` > 0 sets ``train.max_steps`` = ⌈tokens_per_param · n_params / tokens per
        step⌉ (the budget protocol of docs/results.md: every run its own full cosine schedule);
        ``optim.warmup_fraction`` > 0 sets ``optim.warmup_steps`` = ⌈fraction · max_steps⌉. Either left at
        0 keeps the recipe's own value. Raises ``ValueError`` if the budget is under one step.
        """
        run = copy.deepcopy(self)
        if run.train.tokens_per_param > 0:
            steps = math.ceil(run.train.tokens_per_param * n_params / self.tokens_per_step(world_size))
            run.train.max_steps = steps
        if run.optim.warmup_fraction > 0:
            run.optim.warmup_steps = max(1, math.ceil(run.optim.warmup_fraction * run.train.max_steps))
        run.validate()
        return run

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """The ModelConfig of ``[model]``; the vocabulary comes from the tokenizer unless set there."""
        overrides = {k: v for k, v in self.model.items() if k != "preset"}
        if vocab_size is not None and "vocab_size" not in overrides:
            overrides["vocab_size"] = vocab_size
        return ModelConfig.from_preset(self.model["preset"], **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(sections))
        if unknown:
            raise ValueError(f"unknown recipe section(s) {unknown}; valid sections are {sorted(sections)}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name == "model":
                kwargs[name] = dict(value)
                continue
            kwargs[name] = section_from_dict(type(getattr(cls(), name)), value, f"[{name}]")
        run = cls(**kwargs)
        run.validate()
        return run


def not_an_integer(value: Any, prefix: str = "") -> str:
    """Why ``value`` (read from a recipe or an override) is not an integer, after ``prefix``; "" for an int.
    A whole float names the integer to write (TOML reads ``1e3`` and ``1000.0`` as floats)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return ""
    if isinstance(value, float) and value.is_integer():
        return f"{prefix}a float, not an integer (TOML reads 1e3 and 1000.0 as floats): write {int(value)}"
    return f"{prefix}not an integer"


def check_flags(obj: Any, prefix: str = "") -> None:
    """Every field of the dataclass ``obj`` declared ``bool`` holds a bool: a recipe or override that gives
    another value (``off``, ``"false"``, 1) raises ``ValueError`` naming the field, instead of counting as
    true when the flag is read."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.type in ("bool", bool) and not isinstance(value, bool):
            raise ValueError(f"{prefix}{f.name}={value!r} must be true or false (TOML booleans, lower case)")


def section_from_dict(cls: type, data: dict[str, Any], where: str):
    """The dataclass ``cls`` from one TOML table; unknown or missing keys raise ``ValueError`` naming
    ``where`` (e.g. "[optim]") and the valid keys. Every recipe and experiment file is read this way."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table of key = value pairs, got {data!r}")
    fields_ = dataclasses.fields(cls)
    known = {f.name for f in fields_}
    bad = sorted(set(data) - known)
    if bad:
        raise ValueError(f"unknown key(s) {bad} in {where}; valid keys are {sorted(known)}")
    required = [
        f.name
        for f in fields_
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data
    ]
    if required:
        raise ValueError(f"{where} lacks {required}")
    return cls(**data)


def read_toml(path: str | Path, what: str = "recipe") -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file raises ``ValueError`` naming it."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as err:
        raise ValueError(f"{what} {str(path)!r} does not exist") from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{what} {str(path)!r} is not valid TOML: {err}") from err


def parse_override_value(text: str) -> Any:
    """A command-line value read as a TOML literal (``3e-4``, ``true``, ``"x"``), else as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_recipe(path: str | None = None, preset: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """A RunConfig from an optional TOML recipe, then ``--preset``, then ``section.key=value`` overrides.

    A count given as an override wins over a budget that would otherwise derive it: ``train.max_steps=N``
    sets ``train.tokens_per_param`` to 0 and ``optim.warmup_steps=N`` sets ``optim.warmup_fraction`` to 0,
    unless a later override sets the budget again (the last of the two wins).
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_toml(path)
    if preset is not None:
        data.setdefault("model", {})["preset"] = preset
    for item in overrides or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. train.max_steps=100")
        data.setdefault(section, {})[name] = parse_override_value(value)
    last = {item.partition("=")[0].strip(): i for i, item in enumerate(overrides or [])}
    for count, budget in (
        ("train.max_steps", "train.tokens_per_param"),
        ("optim.warmup_steps", "optim.warmup_fraction"),
    ):
        if count in last and last.get(budget, -1) < last[count]:
            section, name = budget.split(".")
            if data.get(section, {}).get(name):
                data[section][name] = 0  # else the budget read from the recipe would silently replace the count
    data.setdefault("model", {}).setdefault("preset", "shared_diff-tiny")
    mqar_keys = [key for key in last if key.startswith("mqar.")]
    if mqar_keys and data.get("data", {}).get("source", "corpus") == "corpus":
        raise ValueError(
            f"{', '.join(mqar_keys)} set, but [mqar] is read only with data.source=mqar (this run trains on the "
            "corpus); add data.source=mqar or drop them"
        )
    return RunConfig.from_dict(data)
