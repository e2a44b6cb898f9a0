"""PNG plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def count_label(x: float, _pos=None) -> str:
    """2M, 10M, 300K: tick labels for counts (parameters, tokens), short enough not to run into each other."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:g}{unit}"
    return f"{x:g}"


def plot_loss_curves(runs: dict[str, list[dict]], out: str | Path, title: str = "Loss") -> Path:
    """Training loss (thin) and validation loss (markers) per run, against tokens seen; with many runs the
    legend sits beside the axes instead of over the curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    many = len(runs) > 4
    fig, ax = plt.subplots(figsize=(10 if many else 7, 4.2), dpi=120)
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
    ax.xaxis.set_major_formatter(FuncFormatter(count_label))
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
