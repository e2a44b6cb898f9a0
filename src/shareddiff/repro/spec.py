"""Experiment files (``configs/repro/NAME.toml``): tables read by the recipe parser of ``config.py``.

    [experiment]  recipe = "recipe.toml", description, evals = ["lm", "needle", "attention"]
    [needle] [attention]  settings of those evaluations
    [summary]     baseline, include, scaling, references, select
    [[run]]       group, preset, seeds = [1, ...], overrides = ["section.key=value", ...],
                  sweep = {"optim.lr" = [1e-3, 2e-3], ...}

A ``sweep`` expands one ``[[run]]`` into the cartesian product of its values: each point is its own
group ``GROUP-lr0.001`` (its ``family`` is ``GROUP``) and each seed of it its own run ``GROUP-lr0.001-s1``.
"""

from __future__ import annotations

import fnmatch
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shareddiff.config import read_toml, section_from_dict

REPO_CONFIGS = Path(__file__).resolve().parents[3] / "configs"
EVALS = ("lm", "needle", "attention")


@dataclass
class ExperimentTable:
    """[experiment]: the shared recipe (a file beside the experiment), what it is for, its evaluations."""

    recipe: str
    description: str = ""
    evals: list[str] = field(default_factory=lambda: ["lm"])


@dataclass
class NeedleTable:
    """[needle]: the multi-needle grid every run is evaluated on (``eval needle``)."""

    lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096])
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    configs: list[list[int]] = field(default_factory=lambda: [[1, 1], [2, 1], [2, 2], [4, 1], [4, 2], [6, 1], [6, 2]])
    samples: int = 10
    seed: int = 0


@dataclass
class AttentionTable:
    """[attention]: the attention-mass analysis (``eval attention``, the paper's Table 5)."""

    length: int = 1024
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    needles: int = 4
    samples: int = 10
    seed: int = 0


@dataclass
class SummaryTable:
    """[summary]: ``baseline`` a group to report deltas against; ``include`` runs of other experiments
    ("EXPERIMENT/RUN"); ``scaling`` fit loss against parameters, matching the ``references`` variants;
    ``select`` a swept key (e.g. "optim.lr") whose best value per family is reported; ``tokens_fit`` fit
    loss against training tokens over runs of one size trained to different budgets."""

    baseline: str | None = None
    include: list[str] = field(default_factory=list)
    scaling: bool = False
    references: list[str] = field(default_factory=lambda: ["standard", "diff"])
    select: str | None = None
    tokens_fit: bool = False


@dataclass
class RunTable:
    """[[run]]: one group of runs that differ only in their seed (or, with ``sweep``, several groups)."""

    group: str
    preset: str
    seeds: list[int] = field(default_factory=lambda: [1])
    overrides: list[str] = field(default_factory=list)
    sweep: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSpec:
    name: str  # "<group>-s<seed>", the run's folder
    group: str  # runs of one group differ only in their seed
    preset: str
    seed: int
    overrides: tuple[str, ...] = ()
    family: str = ""  # the [[run]] table's group: the groups of one sweep share it
    point: tuple[tuple[str, Any], ...] = ()  # the swept (key, value) pairs of this group


@dataclass
class Experiment:
    name: str
    path: Path
    description: str
    recipe: Path
    runs: list[RunSpec]
    evals: list[str]
    needle: dict[str, Any] = field(default_factory=dict)
    attention: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def run(self, name: str) -> RunSpec:
        for spec in self.runs:
            if spec.name == name:
                return spec
        raise self._selects_nothing(f"no run {name!r}", name)

    def select(self, patterns: list[str] | None) -> list[RunSpec]:
        """The runs named by ``patterns`` (all of them for None or []), in the experiment's order: each an exact
        run name or a shell-style pattern (``fnmatch``: ``*``, ``?``, ``[...]``), e.g. ``"*-n64-p4-*"`` for
        one MQAR cell, so that a large grid runs in pieces. Raises ``ValueError`` naming a pattern that
        matches no run (and a list or quotes given inside one pattern), with the experiment's run names."""
        if not patterns:
            return list(self.runs)
        chosen: set[str] = set()
        for pattern in patterns:
            if not any(c in pattern for c in "*?["):
                chosen.add(self.run(pattern).name)  # an exact name: run()'s error when there is none
                continue
            matched = {s.name for s in self.runs if fnmatch.fnmatchcase(s.name, pattern)}
            if not matched:
                raise self._selects_nothing(f"no run matching {pattern!r}", pattern)
            chosen |= matched
        return [s for s in self.runs if s.name in chosen]

    def run_names(self, limit: int | None = None) -> str:
        """The run names, comma-separated; beyond ``limit`` of them the first ``limit`` and the command listing all."""
        names = [s.name for s in self.runs]
        if limit is None or len(names) <= limit:
            return ", ".join(names)
        return (
            f"{', '.join(names[:limit])}, ... ({len(names)} runs; `shareddiff reproduce {self.name} --list` lists them)"
        )

    def _selects_nothing(self, what: str, pattern: str) -> ValueError:
        """The error for a --run name or pattern that selects no run: what went wrong where it shows (several
        names in one argument, quotes kept inside it), then the run names (the first 20 of a large grid)."""
        hints = []
        if "," in pattern or any(c.isspace() for c in pattern.strip()):
            hints.append("give each name or pattern its own --run (--run 'A' --run 'B'), not a list in one")
        if any(c in pattern for c in "'\""):
            hints.append("its quotes are part of it: quote a pattern once, for the shell only (--run '*-n64-*')")
        hint = "".join(f"; {h}" for h in hints)
        return ValueError(f"experiment {self.name!r} has {what}{hint}; its runs are: {self.run_names(limit=20)}")


def repro_dirs() -> list[Path]:
    return [Path("configs/repro"), REPO_CONFIGS / "repro"]


def experiment_names() -> list[str]:
    """Experiment files (those with an [experiment] table) of configs/repro/."""
    for folder in repro_dirs():
        if folder.is_dir():
            return sorted(p.stem for p in folder.glob("*.toml") if "experiment" in read_toml(p, "experiment"))
    return []


def find_experiment(name: str) -> Path:
    path = Path(name)
    if path.suffix == ".toml" and path.is_file():
        return path
    for folder in repro_dirs():
        if (folder / f"{name}.toml").is_file():
            return folder / f"{name}.toml"
    raise ValueError(f"no experiment {name!r}; the experiments are: {', '.join(experiment_names()) or 'none found'}")


def _format_value(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def expand_runs(table: RunTable, where: str) -> list[RunSpec]:
    """The runs of one [[run]] table: every point of its sweep × every seed."""
    if not table.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in table.seeds):
        raise ValueError(f"{where} {table.group!r} needs seeds = [integers, ...]")
    if len(set(table.seeds)) < len(table.seeds):
        raise ValueError(f"{where} {table.group!r}: seeds = {table.seeds} repeats a seed; list each seed once")
    for key, values in table.sweep.items():
        _section, dot, name = key.partition(".")
        if not dot or not name or not isinstance(values, list) or not values:
            raise ValueError(
                f'{where} {table.group!r}: sweep key {key!r} needs the form "section.key" = [values, ...], '
                'e.g. sweep = { "optim.lr" = [1e-3, 2e-3] }'
            )
        names = [_format_value(v) for v in values]
        if len(set(names)) < len(names):
            raise ValueError(
                f"{where} {table.group!r}: sweep {key} = {values} repeats a value (as run names: {names}); "
                "list each value once"
            )
    keys = list(table.sweep)
    specs = []
    for values in itertools.product(*(table.sweep[k] for k in keys)):
        point = tuple(zip(keys, values, strict=True))
        group = table.group + "".join(f"-{k.rpartition('.')[2]}{_format_value(v)}" for k, v in point)
        swept = tuple(f"{k}={_toml_literal(v)}" for k, v in point)
        for seed in table.seeds:
            specs.append(
                RunSpec(
                    f"{group}-s{seed}",
                    group,
                    table.preset,
                    seed,
                    (*table.overrides, *swept),
                    family=table.group,
                    point=point,
                )
            )
    return specs


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def load_experiment(name: str) -> Experiment:
    """Read and check ``configs/repro/NAME.toml`` (or a path to such a file); errors name the table and key."""
    path = find_experiment(name)
    data = read_toml(path, "experiment")
    if not isinstance(data.get("experiment"), dict):
        raise ValueError(f'{path} is not an experiment: it needs an [experiment] table with recipe = "..."')
    unknown_tables = sorted(set(data) - {"experiment", "needle", "attention", "summary", "run"})
    if unknown_tables:
        raise ValueError(
            f"{path}: unknown table(s) {unknown_tables}; known: experiment, needle, attention, summary, run"
        )
    head = section_from_dict(ExperimentTable, data["experiment"], f"{path}: [experiment]")
    recipe = path.parent / head.recipe
    if not recipe.is_file():
        raise ValueError(f"{path}: recipe {head.recipe!r} not found beside it ({recipe})")
    unknown = sorted(set(head.evals) - set(EVALS))
    if unknown:
        raise ValueError(f"{path}: unknown evals {unknown}; choose from {list(EVALS)}")
    tables = {t: section_from_dict(cls, data.get(t, {}), f"{path}: [{t}]") for t, cls in _TABLES.items()}
    runs: list[RunSpec] = []
    for i, entry in enumerate(data.get("run", [])):
        runs += expand_runs(section_from_dict(RunTable, entry, f"{path}: [[run]] number {i + 1}"), f"{path}: [[run]]")
    if not runs:
        raise ValueError(f"{path} lists no [[run]] tables")
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path}: runs {duplicates} appear twice; give each [[run]] its own group")
    return Experiment(
        name=path.stem,
        path=path,
        description=head.description,
        recipe=recipe,
        runs=runs,
        evals=list(head.evals),
        needle=vars(tables["needle"]),
        attention=vars(tables["attention"]),
        summary=vars(tables["summary"]),
    )


_TABLES = {"needle": NeedleTable, "attention": AttentionTable, "summary": SummaryTable}
