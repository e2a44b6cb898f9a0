"""PNG plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def plot_loss_curves(runs: dict[str, list[dict]], out: str | Path, title: str = "Loss") -> Path:
    """Training loss (thin) and validation loss (markers) per run, against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    colors = [f"C{i}" for i in range(10)] if len(runs) <= 10 else [plt.cm.tab20(i % 20) for i in range(len(runs))]
    for i, (label, rows) in enumerate(runs.items()):
        color = colors[i]
        train = [(r["tokens"], r["loss"]) for r in rows if "loss" in r]
        val = [(r["tokens"], r["val_loss"]) for r in rows if "val_loss" in r]
        if train:
            ax.plot(*zip(*train, strict=True), color=color, alpha=0.45, lw=1, label=f"{label} train")
        if val:
            ax.plot(*zip(*val, strict=True), color=color, marker="o", lw=2, label=f"{label} validation")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


VARIANT_NAMES = {"standard": "Transformer", "diff": "DIFF", "shared_diff": "Shared DIFF"}


def plot_mqar_heatmap(summary: dict, out: str | Path, title: str = "MQAR") -> Path:
    """One panel per variant: best MQAR accuracy over learning rates (``eval.mqar.mqar_summary``) for
    each (sequence length, pairs) row and model width column; 2× length accuracy in brackets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cells = summary["cells"]
    rows = sorted({(c["seq_len"], c["pairs"]) for c in cells})
    widths = sorted({c["d_model"] for c in cells})
    variants = [v for v in VARIANT_NAMES if v in summary["variants"]] + [
        v for v in summary["variants"] if v not in VARIANT_NAMES
    ]
    size = (1.0 * len(widths) * len(variants) + 3.0, 0.6 * len(rows) + 1.6)
    fig, axes = plt.subplots(1, len(variants), figsize=size, dpi=120, sharey=True, layout="constrained")
    axes = np.atleast_1d(axes)
    by_key = {(c["variant"], c["seq_len"], c["pairs"], c["d_model"]): c for c in cells}
    for ax, variant in zip(axes, variants, strict=True):
        grid = np.full((len(rows), len(widths)), np.nan)
        for i, (n, p) in enumerate(rows):
            for j, d in enumerate(widths):
                cell = by_key.get((variant, n, p, d))
                if cell is None:
                    continue
                grid[i, j] = cell["accuracy"]
                extra = "" if cell.get("accuracy_2x") is None else f"\n({cell['accuracy_2x']:.2f})"
                ax.text(j, i, f"{cell['accuracy']:.2f}{extra}", ha="center", va="center", fontsize=7)
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(widths)), [str(d) for d in widths])
        ax.set_yticks(range(len(rows)), [f"N={n}, {p} pairs" for n, p in rows])
        ax.tick_params(axis="y", labelleft=ax is axes[0])
        ax.set_xlabel("model width")
        ax.set_title(VARIANT_NAMES.get(variant, variant), fontsize=10)
    fig.suptitle(f"{title}: best accuracy over learning rates (in brackets: at 2x the length)", fontsize=10)
    fig.colorbar(im, ax=list(axes), fraction=0.04)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
