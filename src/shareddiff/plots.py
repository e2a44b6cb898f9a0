"""PNG plots (matplotlib, headless)."""

from __future__ import annotations

import re
from pathlib import Path


def count_label(x: float, _pos=None) -> str:
    """2M, 10M, 300K: tick labels for counts (parameters, tokens), short enough not to run into each other."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:g}{unit}"
    return f"{x:g}"


def log_count_axis(axis) -> None:
    """A log axis of counts labelled 1, 2, 5 per decade as 200K, 1M, 2M, without crowded minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(count_label))
    axis.set_minor_formatter(NullFormatter())


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(figsize=(7, 4.2)):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=figsize, dpi=120)
    return plt, fig, ax


def _save(plt, fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_mqar_curve(rows: list[dict], out: str | Path, title: str, stop_step: int | None = None) -> Path:
    """MQAR accuracy along training (``rows`` as metrics.jsonl holds them) at the training length N and, where
    evaluated, at 2N; a dashed vertical line at ``stop_step`` (the early stop), if any."""
    plt, fig, ax = _figure()
    for key, label in (("mqar_accuracy", "N (training length)"), ("mqar_accuracy_2x", "2N")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", lw=1.5, label=label)
    if stop_step is not None:
        ax.axvline(stop_step, color="grey", ls="--", lw=1, label=f"early stop (step {stop_step})")
    ax.set_xlabel("step")
    ax.set_ylabel("MQAR accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, out)


VARIANT_COLORS = {"standard": "C0", "diff": "C1", "shared_diff": "C2", "diff_v2": "C3", "shared_diff_v2": "C4"}
VARIANT_NAMES = {
    "standard": "Transformer",
    "diff": "DIFF",
    "shared_diff": "Shared DIFF",
    "diff_v2": "DIFF V2",
    "shared_diff_v2": "Shared DIFF V2",
}


def variant_name(variant: str) -> str:
    """The variant's name as the papers write it ("standard" → "Transformer"); unknown names unchanged."""
    return VARIANT_NAMES.get(variant, variant)


def _mean_curve(run_dirs: list[str | Path]) -> dict[int, tuple[int, float, float, float]]:
    """step → (tokens, mean, min, max) of the validation loss over the runs, at the steps all of them reached."""
    from shareddiff.train.metrics import read_metrics

    per_run = [{r["step"]: r for r in read_metrics(d) if "val_loss" in r} for d in run_dirs]
    steps = sorted(set.intersection(*(set(rows) for rows in per_run))) if per_run else []
    curve = {}
    for step in steps:
        values = [rows[step]["val_loss"] for rows in per_run]
        curve[step] = (per_run[0][step]["tokens"], sum(values) / len(values), min(values), max(values))
    return curve


def plot_group_curves(
    groups: dict[str, list[str | Path]],
    out: str | Path,
    title: str,
    variants: dict[str, str] | None = None,
    panels: dict[str, str] | None = None,
    baseline: str = "standard",
) -> Path:
    """Validation loss against training tokens, the mean over each group's runs (seeds) with their min–max band.

    ``panels`` (group → panel name, e.g. the model size) draws one column per panel; ``variants`` (group →
    variant) colours each variant alike in every panel (``VARIANT_COLORS``). Where a panel holds exactly one
    group of the ``baseline`` variant, a second row shows each other group's mean loss minus the baseline's at
    the same step: the gap along training (negative = below the baseline). The loss axis leaves out the first
    fifth of training, whose high losses would flatten the rest. Where a panel holds more than ``MAX_LEGEND``
    groups whose names share a structure (``factor_grid``), each panel splits into rows by the names' leading
    factors, and colour and line style encode the last two, named in one legend beside the panels; otherwise
    such a panel's legend sits beside it. A smaller panel's legend sits at matplotlib's "best" place inside the
    axes, or below them where that place still covers a curve or band (``_move_covering_legends``)."""
    plt = _pyplot()
    panels = panels or {g: "" for g in groups}
    variants = variants or {}
    names = list(dict.fromkeys(panels[g] for g in groups))
    curves = {g: _mean_curve(dirs) for g, dirs in groups.items()}
    crowded = max(list(panels.values()).count(name) for name in names) > MAX_LEGEND
    grid = factor_grid(list(groups), panels) if crowded else None
    row_of = grid["row"] if grid else {g: "" for g in groups}
    row_names = grid["rows"] if grid else [""]
    base_of = {}
    for name in names if len(row_names) == 1 else []:
        bases = [g for g in groups if panels[g] == name and variants.get(g) == baseline]
        if len(bases) == 1:
            base_of[name] = bases[0]
    rows = len(row_names) + (1 if base_of else 0)
    width = max(6.4, 3.6 * len(names)) + (2.2 if crowded else 0.0)
    fig, axes = plt.subplots(
        rows,
        len(names),
        figsize=(width, 3.4 * rows + 0.6),
        dpi=120,
        squeeze=False,
        layout="constrained" if crowded else None,
    )
    legends_inside = []
    for col, name in enumerate(names):
        delta_ax = axes[-1][col] if base_of else None
        gaps = []
        for row, row_name in enumerate(row_names):
            members = [g for g in groups if panels[g] == name and row_of[g] == row_name]
            by_colour = len({variants.get(g) for g in members}) == len(members) and all(
                variants.get(g) for g in members
            )
            ax = axes[row][col]
            kept = []
            for i, group in enumerate(members):
                curve = curves[group]
                if not curve:
                    continue
                steps = sorted(curve)
                tokens, mean, lo, hi = (list(v) for v in zip(*(curve[s] for s in steps), strict=True))
                if grid:
                    style = grid["style"][group]
                elif len(members) > MAX_LEGEND:
                    style = _cycled_style(i)
                else:
                    colour = VARIANT_COLORS.get(variants.get(group), f"C{i % 10}") if by_colour else f"C{i % 10}"
                    style = {"color": colour, "marker": "o"}
                ax.plot(tokens, mean, ms=2.5, lw=1.5, label=group, **style)
                if lo != hi:
                    ax.fill_between(tokens, lo, hi, color=style["color"], alpha=0.15)
                kept += [m for t, m in zip(tokens, mean, strict=True) if t >= 0.2 * tokens[-1]]
                base = base_of.get(name)
                if delta_ax is not None and base and group != base:
                    ref = curves[base]
                    shared = [s for s in steps if s in ref]
                    gap = ([curve[s][0] for s in shared], [curve[s][1] - ref[s][1] for s in shared])
                    gaps.append(gap)
                    delta_ax.plot(*gap, ms=2.5, lw=1.5, label=group, **style)
            if kept:
                ax.set_ylim(min(kept) - 0.02, max(kept) + 0.05)
            panel_title = variant_name(name) if name else ("" if grid else title)
            ax.set_title(" · ".join(t for t in (panel_title, row_name) if t), fontsize=10)
            ax.set_xlabel("training tokens")
            ax.xaxis.set_major_formatter(_count_formatter())
            ax.grid(alpha=0.3)
            if grid:
                pass  # one legend for the figure, below
            elif len(members) > MAX_LEGEND:
                _legend_beside(ax)
            elif ax.get_legend_handles_labels()[0]:  # runs without metrics rows draw nothing to label
                ax.legend(fontsize=7, ncol=2 if len(members) > 8 else 1)
                legends_inside.append(ax)
            if col == 0:
                ax.set_ylabel("validation loss (nats/token)")
        if delta_ax is not None:
            delta_ax.axhline(0.0, color="black", lw=0.8)
            delta_ax.set_xlabel("training tokens")
            delta_ax.xaxis.set_major_formatter(_count_formatter())
            delta_ax.grid(alpha=0.3)
            if name in base_of:
                delta_ax.set_title(f"minus {base_of[name]}", fontsize=9)
                limits = gap_limits(gaps)
                if limits is not None:
                    delta_ax.set_ylim(*limits)
            if col == 0:
                delta_ax.set_ylabel("Δ validation loss (nats)")
    if grid:
        _grid_legend(fig, grid)
    if names != [""] or grid:
        fig.suptitle(title, fontsize=11)
    if legends_inside:
        _move_covering_legends(fig, legends_inside)
    return _save(plt, fig, out)


def _move_covering_legends(fig, axes: list) -> None:
    """Lays out ``fig`` (tight layout) and moves each of ``axes``' legends whose place inside its axes still covers
    one of its lines (markers included) or bands below those axes (``_legend_below``), making the figure taller
    by the legend's height; again until no legend inside covers data (a move changes the other axes' sizes, so
    their best places)."""
    inside = list(axes)
    while True:
        fig.tight_layout()
        fig.canvas.draw()
        covering = [ax for ax in inside if _legend_covers_data(ax)]
        if not covering:
            return
        for ax in covering:
            _legend_below(ax)
            inside.remove(ax)
        fig.canvas.draw()
        extra = max(ax.get_legend().get_window_extent().height for ax in covering) / fig.dpi
        width, height = fig.get_size_inches()
        fig.set_size_inches(width, height + extra + 0.1)


def _legend_below(ax) -> None:
    """``ax``'s legend under its tick labels and axis label, centred, in two columns where they fit the axes'
    width (else one); its offset is in inches, so it stays clear of the labels when the layout resizes the axes."""
    from matplotlib.transforms import ScaledTranslation

    fig = ax.figure
    fig.canvas.draw()
    frame = ax.get_window_extent()
    depth = (frame.y0 - ax.get_tightbbox().y0) / fig.dpi + 0.08
    anchor = ax.transAxes + ScaledTranslation(0, -depth, fig.dpi_scale_trans)
    for ncol in (2, 1):
        legend = ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=anchor, ncol=ncol)
        fig.canvas.draw()
        if legend.get_window_extent().width <= frame.width:
            return


def _legend_covers_data(ax) -> bool:
    """Whether the drawn legend of ``ax`` lies over any of its lines (padded by their marker and line width) or
    over any of its filled areas (``fill_between`` bands), in display coordinates."""
    box = ax.get_legend().get_window_extent()
    points = ax.figure.dpi / 72
    for line in ax.lines:
        pad = (max(line.get_markersize(), line.get_linewidth()) / 2 + 1) * points
        if line.get_transform().transform_path(line.get_path()).intersects_bbox(box.padded(pad), filled=False):
            return True
    for band in ax.collections:
        transform = band.get_transform()
        if any(transform.transform_path(path).intersects_bbox(box, filled=True) for path in band.get_paths()):
            return True
    return False


MAX_LEGEND = 10  # more entries than this and a legend covers the curves it names
LINE_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))


def _level_key(level: str) -> tuple:
    """Sorts levels by the numbers in them: ``lr0.0003`` < ``lr0.01``, ``n64-p4`` < ``n128-p8``."""
    parts = re.split(r"(\d+(?:\.\d+)?(?:e[-+]?\d+)?)", level)
    return tuple((1, float(p), "") if i % 2 else (0, 0.0, p) for i, p in enumerate(parts))


def name_factors(names: list[str]) -> list[dict[str, str]] | None:
    """The factors in which group names differ, from the names' shared structure: each name's first word split at
    "-" (``shared_diff-n64-p4-lr0.001-d_model128 (n=1)`` → five fields); fields alike in every name are left out
    and fields that always vary together (``n64`` beside ``p4``) form one factor (``n64-p4``). Returns the factors
    in the order of their first field, each a mapping name → level; None where the names have different numbers
    of fields (no shared structure)."""
    words = [name.split(" ")[0].split("-") for name in names]
    if not words or len({len(w) for w in words}) != 1:
        return None
    fields = [[w[i] for w in words] for i in range(len(words[0]))]
    factors: list[list[list[str]]] = []
    for field in (f for f in fields if len(set(f)) > 1):
        for factor in factors:
            first = factor[0]
            if len(set(zip(first, field, strict=True))) == len(set(first)) == len(set(field)):
                factor.append(field)
                break
        else:
            factors.append([field])
    return [{n: "-".join(f[k] for f in factor) for k, n in enumerate(names)} for factor in factors]


def factor_grid(names: list[str], panels: dict[str, str] | None = None) -> dict | None:
    """A layout for too many groups to name one by one (``name_factors``): the last two factors of the names
    become colour (the one with more levels, at most 10) and line style with marker (at most 4 levels); the
    factors before them split the groups into rows (``row``: name → row title, ``rows``: the titles in order)
    and, without ``panels`` (name → column, kept as given), the first of them into columns (``column``,
    ``columns``). Factors that ``panels`` already tells apart are left out. ``style``: name → plot keywords;
    ``legend``: (handles, labels) naming the encoding. None where the names share no such structure."""
    factors = name_factors(names)
    if factors is None:
        return None
    if panels is not None:
        factors = [f for f in factors if any(len({f[n] for n in names if panels[n] == p}) > 1 for p in panels.values())]
    if len(factors) < 2:
        return None
    colour, style = sorted(factors[-2:], key=lambda f: -len(set(f.values())))
    levels = {id(f): sorted(set(f.values()), key=_level_key) for f in factors}
    if len(levels[id(colour)]) > 10 or len(levels[id(style)]) > len(LINE_STYLES):
        return None
    lead = factors[:-2]
    if panels is None and lead:
        column, lead = lead[0], lead[1:]
    else:
        column = panels or dict.fromkeys(names, "")
    row = {n: "-".join(f[n] for f in lead) for n in names}
    colours = {level: f"C{i}" for i, level in enumerate(levels[id(colour)])}
    styles = {level: LINE_STYLES[i] for i, level in enumerate(levels[id(style)])}
    plot_style = {
        n: {"color": colours[colour[n]], "ls": styles[style[n]][0], "marker": styles[style[n]][1]} for n in names
    }
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, lw=2.5) for c in colours.values()]
    handles += [Line2D([], [], color="0.3", ls=ls, marker=m, ms=4) for ls, m in styles.values()]
    title = f"colour: {_field_name(levels[id(colour)]) or 'colour'}\nline: {_field_name(levels[id(style)]) or 'line'}"
    return {
        "title": title,
        "row": row,
        "rows": sorted(set(row.values()), key=_level_key),
        "column": column,
        "columns": list(dict.fromkeys(column[n] for n in names)),
        "style": plot_style,
        "legend": (handles, [*colours, *styles]),
    }


def _field_name(levels: list[str]) -> str:
    """What the levels of a factor name, where they share a word before their values: ``lr`` of ``lr0.001`` and
    ``lr0.01``; empty where they share none."""
    words = {re.match(r"\D*", level).group() for level in levels}
    return words.pop().rstrip("_-") if len(words) == 1 else ""


def _grid_legend(fig, grid: dict) -> None:
    """``factor_grid``'s one legend, right of the panels: the colours, then the line styles; empty panels say so."""
    handles, labels = grid["legend"]
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, title=grid["title"], title_fontsize=8)
    for ax in fig.axes:
        if not ax.lines or all(line.get_label().startswith("_") for line in ax.lines):
            ax.text(
                0.5,
                0.5,
                "no runs",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="0.4",
                bbox={"fc": "white", "ec": "none"},
            )


def _cycled_style(i: int) -> dict:
    """The ``i``-th of 40 distinguishable line styles: ten colours, then the next dash pattern and marker."""
    ls, marker = LINE_STYLES[(i // 10) % len(LINE_STYLES)]
    return {"color": f"C{i % 10}", "ls": ls, "marker": marker}


def _legend_beside(ax) -> None:
    """A legend right of the axes (the figure's layout makes room), in columns of at most 25 entries."""
    count = len(ax.get_legend_handles_labels()[1])
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, ncol=-(-count // 25))


def gap_limits(gaps: list[tuple[list[float], list[float]]]) -> tuple[float, float] | None:
    """The y-range of the gap row: every curve's gaps (``(tokens, gap)`` pairs of lists) past the first fifth
    of its tokens, and zero, with a 10 % margin; None when there is no gap point."""
    late = [y for tokens, gap in gaps for x, y in zip(tokens, gap, strict=True) if tokens and x >= 0.2 * max(tokens)]
    if not late:
        return None
    low, high = min(min(late), 0.0), max(max(late), 0.0)
    pad = 0.1 * (high - low + 1e-3)
    return low - pad, high + pad


def _count_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(count_label)


def plot_sweep(select: dict[str, dict], out: str | Path, title: str) -> Path:
    """Validation loss (mean ± seed std) against a swept value per family, the best point ringed."""
    plt, fig, ax = _figure((6.4, 4.0))
    for i, (family, s) in enumerate(select.items()):
        means = [v["mean"] for v in s["val_loss"]]
        stds = [v["std"] for v in s["val_loss"]]
        ax.errorbar(s["values"], means, yerr=stds, color=f"C{i}", marker="o", capsize=3, label=family)
        ax.scatter([s["best"]], [s["best_val_loss"]["mean"]], s=120, facecolors="none", edgecolors=f"C{i}")
    if all(isinstance(v, int | float) and v > 0 for s in select.values() for v in s["values"]):
        ax.set_xscale("log")
    means = [v["mean"] for s in select.values() for v in s["val_loss"]]
    top = min(max(means), min(means) + 0.4)  # diverged points would flatten the region that matters
    if top < max(means):
        ax.set_ylim(min(means) - 0.02, top + 0.02)
        stacked: dict = {}  # off-scale values at one x are listed downwards
        for i, s in enumerate(select.values()):
            for x, v in zip(s["values"], s["val_loss"], strict=True):
                if v["mean"] > top:
                    y = top - 0.03 * stacked.setdefault(x, [0])[0]
                    stacked[x][0] += 1
                    ax.annotate(f"↑ {v['mean']:.2f}", (x, y), color=f"C{i}", fontsize=7, ha="center", va="top")
    ax.set_xlabel(next(iter(select.values()))["key"] if select else "")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, out)


def plot_efficiency(result: dict, out: str | Path, xlabel: str) -> Path:
    """Mean validation loss per variant against parameters or tokens: the points and their power-law fit."""
    import numpy as np

    from shareddiff.eval.scaling import predict

    plt, fig, ax = _figure((6.4, 4.0))
    for i, (variant, points) in enumerate(sorted(result["points"].items())):
        xs, ys = zip(*points, strict=True)
        colour = VARIANT_COLORS.get(variant, f"C{i % 10}")
        ax.scatter(xs, ys, color=colour, label=variant_name(variant), zorder=3)
        if variant in result["fits"]:
            grid = np.geomspace(min(xs), max(xs), 60)
            ax.plot(grid, predict(result["fits"][variant], grid), color=colour, lw=1.2)
    ax.set_xscale("log")
    log_count_axis(ax.xaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(plt, fig, out)


LAMBDA_SYMLOG = 10.0


def plot_lambdas(lambdas: dict[str, list[float]], out: str | Path) -> Path:
    """Final λ of every layer per group (the differential variants' learned weight of the second map), layers
    on an integer axis. Where some |λ| exceeds ``LAMBDA_SYMLOG`` (a layer whose λ ran away, e.g. to 10⁵), the
    axis is symmetric-log (linear within ±1), so that the ordinary layers stay readable beside it. More than
    ``MAX_LEGEND`` groups whose names share a structure get a grid of panels sharing their axes (``factor_grid``:
    columns and rows by the names' leading factors, colour and line style by the last two, one legend beside
    them); without such structure, the legend sits beside the axes."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    crowded = len(lambdas) > MAX_LEGEND
    grid = factor_grid(list(lambdas)) if crowded else None
    columns, rows = (grid["columns"], grid["rows"]) if grid else ([""], [""])
    size = (max(6.4, 3.2 * len(columns) + 2.2), 2.6 * len(rows) + 1.0) if grid else (9.6 if crowded else 6.4, 3.8)
    fig, axes = plt.subplots(
        len(rows),
        len(columns),
        figsize=size,
        dpi=120,
        squeeze=False,
        sharex=True,
        sharey=True,
        layout="constrained" if crowded else None,
    )
    for i, (group, values) in enumerate(lambdas.items()):
        if grid:
            ax = axes[grid["rows"].index(grid["row"][group])][grid["columns"].index(grid["column"][group])]
            style = grid["style"][group]
        else:
            ax = axes[0][0]
            style = _cycled_style(i) if crowded else {"color": f"C{i}", "marker": "o"}
        ax.plot(range(1, len(values) + 1), values, label=group, **style)
    runaway = any(abs(x) > LAMBDA_SYMLOG for values in lambdas.values() for x in values)
    for r, row in enumerate(rows):
        for c, column in enumerate(columns):
            ax = axes[r][c]
            ax.axhline(0, color="grey", lw=0.8)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if grid:
                ax.set_title(" · ".join(t for t in (variant_name(column), row) if t), fontsize=9)
            if r == len(rows) - 1:
                ax.set_xlabel("layer")
            if c == 0:
                ax.set_ylabel("λ at the end of training" + (" (symlog)" if runaway else ""))
    if runaway:
        axes[0][0].set_yscale("symlog", linthresh=1.0)  # shared by every panel
        low = min(x for values in lambdas.values() for x in values)
        axes[0][0].set_ylim(bottom=min(-1.0, 2 * low))
    if grid:
        _grid_legend(fig, grid)
        fig.suptitle("λ at the end of training per layer", fontsize=10)
    elif crowded:
        _legend_beside(axes[0][0])
    else:
        axes[0][0].legend(fontsize=7)
    return _save(plt, fig, out)


def _group_colour(variant: str | None, i: int, n_groups: int) -> str:
    """The colour of the ``i``-th of ``n_groups`` groups: its variant's (``VARIANT_COLORS``) while there are at
    most five groups, one per variant; else (or for an unknown variant) matplotlib's i-th."""
    return VARIANT_COLORS.get(variant, f"C{i % 10}") if n_groups <= 5 else f"C{i % 10}"


def plot_needle_bars(summary: dict, out: str | Path) -> Path:
    """Multi-needle accuracy per (N, R) setting and group (mean over lengths and depths); the legend sits in a
    band above the bars (accuracy ≤ 1), so it covers none of them."""
    groups = {g: e for g, e in summary["groups"].items() if "needle" in e}
    labels = [f"N={r['n_needles']}\nR={r['n_queries']}" for r in next(iter(groups.values()))["needle"]]
    plt, fig, ax = _figure((max(6, len(labels) * 1.1), 3.8))
    width = 0.8 / len(groups)
    for i, (group, entry) in enumerate(groups.items()):
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(labels))]
        colour = _group_colour(entry.get("variant"), i, len(groups))
        ax.bar(xs, [r["accuracy"]["mean"] for r in entry["needle"]], width, label=group, color=colour)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1.2)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("accuracy (all lengths and depths)")
    ax.set_title(f"{summary['experiment']}: multi-needle retrieval")
    ax.legend(fontsize=8, loc="upper center", ncol=min(len(groups), 5), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, out)


NEEDLE_PROBE = (
    ("needle_accuracy", "exact match"),
    ("needle_token_accuracy", "per-digit accuracy"),
    ("needle_answer_logprob", "answer log-prob (nats)"),
)


def plot_needle_probe(
    groups: dict[str, list[str | Path]], out: str | Path, title: str, variants: dict[str, str] | None = None
) -> Path:
    """The needle probe logged along training (``shareddiff.train.probes``: exact match, per-digit accuracy
    and the answer's log-probability on fixed validation prompts, ``NEEDLE_PROBE``) against training tokens,
    one panel per metric: each group's mean over its runs (seeds) at the steps all of them logged, with a
    min–max band where there are several. Groups whose runs logged no probe are left out."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    from shareddiff.train.metrics import read_metrics

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(NEEDLE_PROBE), figsize=(4.2 * len(NEEDLE_PROBE), 3.6), dpi=120)
    variants = variants or {}
    for i, (group, dirs) in enumerate(groups.items()):
        per_run = [{r["step"]: r for r in read_metrics(d) if NEEDLE_PROBE[0][0] in r} for d in dirs]
        steps = sorted(set.intersection(*(set(rows) for rows in per_run))) if per_run else []
        if not steps:
            continue
        colour = _group_colour(variants.get(group), i, len(groups))
        tokens = [per_run[0][s]["tokens"] for s in steps]
        for ax, (key, _) in zip(axes, NEEDLE_PROBE, strict=True):
            values = np.array([[rows[s][key] for s in steps] for rows in per_run])
            ax.plot(tokens, values.mean(0), color=colour, marker="o", ms=2.5, lw=1.5, label=group)
            if len(per_run) > 1:
                ax.fill_between(tokens, values.min(0), values.max(0), color=colour, alpha=0.15)
    for ax, (key, label) in zip(axes, NEEDLE_PROBE, strict=True):
        ax.set_xlabel("tokens seen")
        ax.xaxis.set_major_formatter(FuncFormatter(count_label))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if key != "needle_answer_logprob":
            ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    return _save(plt, fig, out)


def plot_mqar_heatmap(summary: dict, out: str | Path, title: str = "MQAR") -> Path:
    """MQAR accuracy heatmaps from ``eval.mqar.mqar_summary``: first the best over widths and learning
    rates per (sequence length, pairs) row and variant column, then one panel per variant with the best
    over learning rates per width; accuracy at 2× the length in brackets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = sorted({(c["seq_len"], c["pairs"]) for c in summary["cells"]})
    widths = sorted({c["d_model"] for c in summary["cells"]})
    variants = _variant_order(summary["variants"])

    def panel(ax, columns: list, cell_of, heading: str, xlabel: str, labels: list[str]):
        grid = np.full((len(rows), len(columns)), np.nan)
        for i, (n, p) in enumerate(rows):
            for j, column in enumerate(columns):
                cell = cell_of(n, p, column)
                if cell is None:
                    continue
                grid[i, j] = cell["accuracy"]
                extra = "" if cell.get("accuracy_2x") is None else f"\n({cell['accuracy_2x']:.2f})"
                ax.text(j, i, f"{cell['accuracy']:.2f}{extra}", ha="center", va="center", fontsize=7)
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(columns)), labels, fontsize=7)
        ax.set_yticks(range(len(rows)), [f"N={n}, {p} pairs" for n, p in rows])
        ax.set_xlabel(xlabel)
        ax.set_title(heading, fontsize=9)
        return image

    # titles wrap onto two lines and the figure is at least 6.4 in wide: a narrow one (one variant, one
    # width) once cut the suptitle at both edges and ran the panel titles into each other
    size = (max(6.4, 1.0 * (len(widths) + 1) * len(variants) + 3.0), 0.6 * len(rows) + 2.2)
    fig, axes = plt.subplots(1, len(variants) + 1, figsize=size, dpi=120, sharey=True, layout="constrained")
    best = {(c["variant"], c["seq_len"], c["pairs"]): c for c in summary["best"]}
    image = panel(
        axes[0],
        variants,
        lambda n, p, v: best.get((v, n, p)),
        "best over widths\nand rates",
        "variant",
        [variant_name(v) for v in variants],
    )
    by_width = {(c["variant"], c["seq_len"], c["pairs"], c["d_model"]): c for c in summary["cells"]}
    for ax, variant in zip(axes[1:], variants, strict=True):
        panel(
            ax,
            widths,
            lambda n, p, d, v=variant: by_width.get((v, n, p, d)),
            f"{variant_name(variant)}:\nbest over rates",
            "model width",
            [str(d) for d in widths],
        )
        ax.tick_params(axis="y", labelleft=False)
    fig.suptitle(f"{title}: MQAR accuracy at the training length\n(in brackets: at 2× the length)", fontsize=10)
    fig.colorbar(image, ax=list(axes), fraction=0.04)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _variant_order(variants: list[str]) -> list[str]:
    """``variants`` in the papers' order (Transformer, DIFF, Shared DIFF, ...), unknown ones after."""
    return [v for v in VARIANT_NAMES if v in variants] + [v for v in variants if v not in VARIANT_NAMES]


def _rates_title(name: str, grid, seeds: set[int], level: float) -> str:
    """A panel title of ``plot_mqar_rates``: how many finished settings reached ``level``, then the settings
    without a finished run and the seeds averaged, where there are any."""
    import numpy as np

    finished = int(np.isfinite(grid).sum())
    if not finished:
        return f"{name}: no finished run"
    notes = []
    if finished < grid.size:
        notes.append(f"{grid.size - finished} not finished")
    if max(seeds) > 1:
        notes.append(f"mean of {min(seeds)}–{max(seeds)} seeds" if len(seeds) > 1 else f"mean of {max(seeds)} seeds")
    solved = int((grid[np.isfinite(grid)] >= level).sum())
    return f"{name}: {solved} of {finished} ≥ {level:g}" + ("\n" + "; ".join(notes) if notes else "")


def plot_mqar_rates(summary: dict, out: str | Path, title: str = "MQAR", level: float = 0.99) -> Path:
    """MQAR accuracy at the training length by model width (y) and learning rate (x) from
    ``eval.mqar.mqar_summary``'s per-width ``lrs`` (with several seeds, their mean): one panel per cell
    (sequence length, pairs; rows) and variant (columns), so that it shows at how many settings a variant
    solves a cell, not only its best one (``plot_mqar_heatmap``). A setting without a finished run stays
    blank; each title counts the settings whose accuracy is ≥ ``level``, whose values are bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = sorted({(c["seq_len"], c["pairs"]) for c in summary["cells"]})
    widths = sorted({c["d_model"] for c in summary["cells"]})
    rates = sorted({float(lr) for c in summary["cells"] for lr in c["lrs"]})
    variants = _variant_order(summary["variants"])
    by_width = {(c["variant"], c["seq_len"], c["pairs"], c["d_model"]): c for c in summary["cells"]}
    size = (max(6.4, (0.55 * len(rates) + 1.2) * len(variants) + 1.5), (0.35 * len(widths) + 1.1) * len(rows) + 1.2)
    fig, axes = plt.subplots(
        len(rows), len(variants), figsize=size, dpi=120, squeeze=False, sharex=True, sharey=True, layout="constrained"
    )
    for i, (n, p) in enumerate(rows):
        for j, variant in enumerate(variants):
            ax = axes[i][j]
            grid = np.full((len(widths), len(rates)), np.nan)  # (width, rate)
            seeds = set()
            for y, d in enumerate(widths):
                cell = by_width.get((variant, n, p, d), {"lrs": {}, "lr_seeds": {}})
                for x, lr in enumerate(rates):
                    key = f"{lr:g}"
                    if key not in cell["lrs"]:
                        continue
                    grid[y, x] = accuracy = cell["lrs"][key]
                    seeds.add(cell["lr_seeds"][key])
                    weight = "bold" if accuracy >= level else "normal"
                    ax.text(x, y, f"{accuracy:.2f}", ha="center", va="center", fontsize=7, fontweight=weight)
            image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
            ax.set_title(_rates_title(variant_name(variant), grid, seeds or {1}, level), fontsize=8)
            ax.set_xticks(range(len(rates)), [f"{lr:g}" for lr in rates], fontsize=7)
            ax.set_yticks(range(len(widths)), [str(d) for d in widths], fontsize=7)
            if j == 0:
                ax.set_ylabel(f"N={n}, {p} pairs\nmodel width", fontsize=8)
            if i == len(rows) - 1:
                ax.set_xlabel("learning rate", fontsize=8)
    fig.suptitle(
        f"{title}: MQAR accuracy at the training length\nby width and learning rate (bold: ≥ {level:g})", fontsize=10
    )  # two lines: one variant's figure is narrower than the title on one line
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_needle_heatmap(result: dict, out, title: str) -> None:
    """Retrieval accuracy per (context length, answer depth) cell of a ``needle_eval`` result, 0 red to 1 green."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({c["length"] for c in result["cells"]})
    depths = sorted({c["depth"] for c in result["cells"]})
    grid = np.array(
        [
            [next(c["accuracy"] for c in result["cells"] if c["length"] == n and c["depth"] == d) for n in lengths]
            for d in depths
        ]
    )
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2.5, 0.6 * len(depths) + 1.8), dpi=120)
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" if n >= 1024 else str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    for i in range(len(depths)):
        for j in range(len(lengths)):
            dark = grid[i, j] < 0.15 or grid[i, j] > 0.85  # the ends of RdYlGn
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8, color="w" if dark else "k")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("answer needle depth")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.05, label="retrieval accuracy (queried numbers right)")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_attention_map(example: dict, out, title: str) -> None:
    """The layer- and head-averaged map of one prompt, with the answer needle's columns marked."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
    data = example["map"].numpy()
    limit = np.abs(data).max() or 1.0
    im = ax.imshow(data, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    for x in example["answer"]:
        ax.axvline(x - 0.5, color="k", lw=0.6, ls="--")
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    ax.set_title(f"{title}\nanswer needle at {example['depth']:.0%} (between the dashed lines)", fontsize=9)
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    bar.set_label("attention weight, mean over layers and heads\n(A1 − λ·A2 for DIFF and Shared DIFF)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_icl(result: dict, out, title: str) -> None:
    """Left: mean accuracy per k for both demonstration orders, on the full 0–1 scale with the chance level
    (1 / classes); right: each order's accuracies over the permutations (boxes and every value), zoomed no
    closer than a 0.1 span so a flat result does not look like a trend."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = result["rows"]
    shots = [r["shots"] for r in rows]
    chance = 1 / result["labels"]
    orders = {"random_order": ("random order", "o", -0.04), "class_alternating": ("class-alternating", "s", 0.04)}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for i, (key, (label, marker, shift)) in enumerate(orders.items()):
        xs = [k * 2**shift for k in shots]  # side by side on the log axis, so equal values stay visible
        axes[0].plot(xs, [r[key]["mean"] for r in rows], marker=marker, color=f"C{i}", label=label)
    axes[0].axhline(chance, color="0.4", ls="--", lw=1, label=f"chance (1/{result['labels']})")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(shots, [str(k) for k in shots])
    axes[0].set_ylim(0, 1)
    axes[0].set_xlabel("demonstrations (k)")
    axes[0].set_ylabel("accuracy")
    axes[0].set_title("mean accuracy over orders", fontsize=10)
    axes[0].legend(fontsize=8)
    values = []
    for i, key in enumerate(orders):
        positions = np.arange(len(shots)) * 3 + i
        data = [r[key]["values"] for r in rows]
        values += [v for vs in data for v in vs]
        axes[1].boxplot(
            data,
            positions=positions,
            widths=0.8,
            patch_artist=True,
            boxprops={"facecolor": f"C{i}", "alpha": 0.35},
            medianprops={"color": "k"},
            showfliers=False,
        )
        for x, vs in zip(positions, data, strict=True):
            jitter = np.linspace(-0.25, 0.25, len(vs)) if len(vs) > 1 else np.zeros(1)
            axes[1].scatter(x + jitter, vs, s=9, color=f"C{i}", zorder=3)
    low, high = min([*values, chance]), max([*values, chance])
    pad = max(0.0, 0.1 - (high - low)) / 2 + 0.02
    axes[1].set_ylim(max(0.0, low - pad), min(1.0, high + pad))
    axes[1].axhline(chance, color="0.4", ls="--", lw=1)
    axes[1].set_xticks(np.arange(len(shots)) * 3 + 0.5, [str(k) for k in shots])
    axes[1].set_xlabel("demonstrations (k)")
    axes[1].set_ylabel("accuracy")
    axes[1].set_title(f"spread over {result['permutations']} orders of the same demonstrations", fontsize=10)
    axes[1].legend(
        handles=[Patch(facecolor=f"C{i}", alpha=0.6, label=label) for i, (label, _, _) in enumerate(orders.values())]
        + [plt.Line2D([], [], color="0.4", ls="--", label="chance")],
        fontsize=8,
    )
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_scaling(result: dict, out, title: str) -> None:
    """Left: each run's final loss against its parameters, with the variant's fit; right: the largest run's
    validation losses against tokens, with their fit. Warnings go under the plots."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shareddiff.eval.scaling import predict

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120)
    for i, (variant, entry) in enumerate(sorted(result["variants"].items())):
        color = f"C{i}"
        params = [r["params"] for r in entry["runs"]]
        fitted = "params_fit" in entry
        axes[0].scatter(
            params,
            [r["final_loss"] for r in entry["runs"]],
            color=color,
            zorder=3,
            label=variant if fitted else f"{variant} (no fit: {len(set(params))} size(s))",
        )
        if fitted:
            grid = np.geomspace(min(params), max(params), 50)
            axes[0].plot(grid, predict(entry["params_fit"], grid), color=color)
        curve = entry.get("largest_curve", [])
        if curve:
            tokens, losses = zip(*curve, strict=True)
            axes[1].scatter(tokens, losses, color=color, s=14, zorder=3, label=variant)
        if "tokens_fit" in entry:
            grid = np.geomspace(*entry["tokens_range"], 50)
            axes[1].plot(grid, predict(entry["tokens_fit"], grid), color=color)
    axes[0].set_xlabel("non-embedding parameters")
    axes[0].set_title("final loss of each run, and the fit", fontsize=10)
    axes[1].set_xlabel("training tokens")
    axes[1].set_title("validation loss of each variant's largest run, and the fit", fontsize=10)
    for ax in axes:
        ax.set_xscale("log")
        log_count_axis(ax.xaxis)
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    notes = result.get("warnings", [])
    if notes:
        fig.text(0.01, 0.01, "\n".join(f"note: {n}" for n in notes), fontsize=7, va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.035 * len(notes), 1, 1))
    fig.savefig(out)
    plt.close(fig)
