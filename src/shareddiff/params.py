"""Parameter accounting by component, counted on the ``meta`` device (no memory, any size)."""

from __future__ import annotations

from dataclasses import dataclass

from shareddiff.config import DIFFERENTIAL_V2, ModelConfig
from shareddiff.model import build_model

COMPONENTS = ("embeddings", "attention_qk", "attention_vo", "ffn", "norms_lambda")
COMPONENT_LABELS = {
    "embeddings": "embeddings (token + LM head)",
    "attention_qk": "attention Q/K",
    "attention_vo": "attention V/O",
    "ffn": "FFN (SwiGLU)",
    "norms_lambda": "norms and λ",
}


def component_of(param_name: str, qk_param_names: tuple[str, ...] = ()) -> str:
    """Which component a parameter of ``LanguageModel`` belongs to, from its qualified name and the Q/K
    parameter names its attention class declares (``qk_param_names``)."""
    parts = param_name.split(".")
    if parts[0] in ("tok_embeddings", "output"):
        return "embeddings"
    if "feed_forward" in parts:
        return "ffn"
    if "attention" in parts:
        leaf = parts[parts.index("attention") + 1]
        if leaf in qk_param_names:
            return "attention_qk"
        if leaf in ("wv", "wo"):
            return "attention_vo"
    return "norms_lambda"  # RMSNorm weights, the per-head norm weight, the λ vectors (and DIFF V2's W_λ)


@dataclass
class ParamReport:
    config: ModelConfig
    counts: dict[str, int]
    attention: int = 0  # every parameter of the attention sub-layers (Q, K, V, O, λ, head norm), all layers

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def non_embedding(self) -> int:
        return self.total - self.counts["embeddings"]

    @property
    def total_tied(self) -> int:
        """Total as if the LM head were tied to the token embedding."""
        c = self.config
        return self.total if c.tie_embeddings else self.total - c.vocab_size * c.d_model

    @property
    def qk_per_layer(self) -> int:
        return self.counts["attention_qk"] // self.config.n_layers

    @property
    def attention_per_layer(self) -> int:
        return self.attention // self.config.n_layers

    def as_dict(self) -> dict:
        qk_expression, qk_value = qk_formula(self.config)
        expression, value = attention_formula(self.config)
        return {
            "config": self.config.to_dict(),
            "components": dict(self.counts),
            "total": self.total,
            "total_non_embedding": self.non_embedding,
            "total_if_tied": self.total_tied,
            "qk_per_layer": {"counted": self.qk_per_layer, "formula": qk_expression, "formula_value": qk_value},
            "attention_per_layer": {"counted": self.attention_per_layer, "formula": expression, "formula_value": value},
        }


def count_parameters(config: ModelConfig) -> ParamReport:
    """Count every parameter of the model ``config`` describes, by component, without allocating it."""
    model = build_model(config, device="meta")
    counts = dict.fromkeys(COMPONENTS, 0)
    attention = 0
    qk_param_names = type(model.layers[0].attention).qk_param_names
    for name, p in model.named_parameters():
        counts[component_of(name, qk_param_names)] += p.numel()
        attention += p.numel() if "attention" in name.split(".") else 0
    return ParamReport(config, counts, attention)


def qk_formula(config: ModelConfig) -> tuple[str, int]:
    """The closed form for Q/K parameters per layer: (expression, value). The paper's §2.3 for DIFF
    and Shared DIFF; for the V2 variants, their layout: W_Q ∈ R^{D×2h·d} (V2) or W_Q ∈ R^{D×h·d} plus two
    rank-r updates (Shared DIFF V2), and one W_K; h·d = D.

    Expressions are written for plain multi-head attention unless they show h_kv; the values count
    GQA exactly (the key term scales by n_kv_heads / n_heads).
    """
    dm, h, d, kv = config.d_model, config.n_heads, config.head_dim, config.n_kv_heads
    gqa = kv != h  # the paper's expressions hold without GQA; with it, the key terms carry h_kv/h
    if config.attention == "standard":
        return "D² + D·(D·h_kv/h)", dm * dm + dm * d * kv
    if config.attention == "diff":
        return "D² + D·(D·h_kv/h)" if gqa else "2D² = 4·D·(D/2)", dm * dm + dm * 2 * d * kv
    if config.attention == "diff_v2":
        return "2D² + D·(D·h_kv/h)", dm * 2 * h * d + dm * kv * d
    if config.attention == "shared_diff_v2":
        r = config.lowrank_rank
        return "D² + 4·r·D + D·(D·h_kv/h)", dm * h * d + 2 * r * (dm + h * d) + dm * kv * d
    r = config.lowrank_rank
    if config.base_sharing == "heads":
        expression = "2·D·d + 2·(h + h_kv)·r_h·(D + d)" if gqa else "2·D·d + 4·h·r_h·(D + d)"
        return expression, 2 * dm * d + 2 * h * r * (dm + d) + 2 * kv * r * (dm + d)
    expression = (
        "D·(D/2) + D·(D/2)·h_kv/h + 2·r·(D + D/2) + 2·r·(D + (D/2)·h_kv/h)"
        if gqa
        else "D² + 6·r·D = 2·D·(D/2) + 4·r·(D + D/2)"
    )
    return expression, dm * h * d + dm * kv * d + 2 * r * (dm + h * d) + 2 * r * (dm + kv * d)


def attention_formula(config: ModelConfig) -> tuple[str, int]:
    """The closed form for all parameters of one attention layer: Q/K (``qk_formula``), then V and O,
    D·(D·h_kv/h) + D² in every variant (the head dims make h_kv value heads cost D·h_kv/h columns), then
    DIFF's λ vectors (4d) and head-norm weight (2d) or V2's W_λ (D·h)."""
    dm, h, d, kv = config.d_model, config.n_heads, config.head_dim, config.n_kv_heads
    qk = qk_formula(config)[1]
    vo = dm * kv * d * config.width_factor + h * d * config.width_factor * dm
    if config.attention == "standard":
        return "Q/K + D² + D·(D·h_kv/h)", qk + vo
    if config.attention in DIFFERENTIAL_V2:
        return "Q/K + D² + D·(D·h_kv/h) + D·h", qk + vo + dm * h
    norm = 2 * d if config.head_norm and config.head_norm_weight else 0
    return f"Q/K + D² + D·(D·h_kv/h) + 4d{' + 2d' if norm else ''}", qk + vo + 4 * d + norm


def human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def describe(config: ModelConfig) -> str:
    c = config
    extra = f", r={c.lowrank_rank} ({c.base_sharing})" if c.attention == "shared_diff" else ""
    extra += f", r={c.lowrank_rank}" if c.attention == "shared_diff_v2" else ""
    pairs = f" ({2 * c.n_heads} query heads in pairs)" if c.attention in DIFFERENTIAL_V2 else ""
    return (
        f"attention={c.attention}, D={c.d_model}, L={c.n_layers}, heads={c.n_heads}{pairs}, "
        f"kv_heads={c.n_kv_heads}, head_dim={c.head_dim}{extra}, ffn={c.ffn_dim}, vocab={c.vocab_size}, "
        f"{'tied' if c.tie_embeddings else 'untied'}"
    )


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(
                str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def _rows(reports: list[ParamReport]) -> list[list[str]]:
    def cell(n: int) -> str:
        return f"{n:,} ({human(n)})"

    rows = [[COMPONENT_LABELS[k], *(cell(r.counts[k]) for r in reports)] for k in COMPONENTS]
    rows.append(["total", *(cell(r.total) for r in reports)])
    rows.append(["total without embeddings", *(cell(r.non_embedding) for r in reports)])
    rows.append(["total with tied embeddings", *(cell(r.total_tied) for r in reports)])
    for label, counted, formula in (
        ("Q/K per layer", ParamReport.qk_per_layer, qk_formula),
        ("attention per layer", ParamReport.attention_per_layer, attention_formula),
    ):
        rows.append([f"{label}, counted", *(f"{counted.fget(r):,}" for r in reports)])
        rows.append([f"{label}, closed form", *(f"{formula(r.config)[1]:,}" for r in reports)])
        rows.append(["  formula", *(formula(r.config)[0] for r in reports)])
    return rows


def size_label_note(name: str, report: ParamReport) -> str | None:
    """What the size in a preset's name (``830m``, ``1.4b``) stands for next to the counts: a row label from
    the paper or a reference shape, which no single count need match (docs/architecture.md §5)."""
    label = name.rpartition("-")[2]
    scale = {"m": 1e6, "b": 1e9}.get(label[-1:])
    try:
        labelled = float(label[:-1]) * scale if scale else None
    except ValueError:
        labelled = None
    if labelled is None:
        return None
    counts = {
        "in total": report.total,
        "with tied embeddings": report.total_tied,
        "without embeddings": report.non_embedding,
    }
    closest = min(counts, key=lambda k: abs(counts[k] - labelled))
    listed = ", ".join(f"{human(n)} {how}" for how, n in counts.items())
    return (
        f"size label: {label!r} names the size row, it is not a count; this configuration has {listed}; "
        f"the closest to the label is {closest} ({counts[closest] / labelled - 1:+.1%})"
    )


def format_report(name: str, report: ParamReport) -> str:
    text = f"{name}: {describe(report.config)}\n" + format_table(["component", "parameters"], _rows([report]))
    if report.config.notes:
        text += f"\nnote: {report.config.notes}"
    label = size_label_note(name, report)
    if label:
        text += f"\n{label}"
    return text


def format_comparison(names: list[str], reports: list[ParamReport]) -> str:
    table = format_table(["component", *names], _rows(reports))
    lines = [table, ""]
    lines += [f"{n}: {describe(r.config)}" for n, r in zip(names, reports, strict=True)]
    by_name = dict(zip(names, reports, strict=True))
    for n, r in by_name.items():
        unshared = n.removeprefix("shared_")  # shared_diff-830m vs diff-830m, shared_diff_v2-… vs diff_v2-…
        base = by_name.get(unshared) if unshared != n else None
        if base is not None:
            saved = 1 - r.qk_per_layer / base.qk_per_layer
            lines.append(
                f"Q/K per layer, {n} vs {unshared}: {saved:.1%} fewer; total: {1 - r.total / base.total:.1%} fewer"
            )
    if reports[0].config.notes:
        lines.append(f"note: {reports[0].config.notes}")
    lines += [f"{n}: {note}" for n, r in zip(names, reports, strict=True) if (note := size_label_note(n, r))]
    return "\n".join(lines)
