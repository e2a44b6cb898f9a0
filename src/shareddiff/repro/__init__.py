"""``shareddiff reproduce NAME``: the reproduction experiments of ``configs/repro/``.

``spec`` reads an experiment file (a shared recipe, runs with seeds and sweeps, evaluations), ``runner``
trains and evaluates each run and keeps its record, ``summary`` turns the records into tables, fits
and plots. A run with a ``record.json`` is done and skipped; a run killed before that resumes from its
last checkpoint, so the same command continues an interrupted experiment.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from shareddiff.repro.runner import (
    RECORD,
    check_recorded_recipe,
    has_started,
    resolve_run,
    run_one,
    run_parallel,
    run_recipe,
)
from shareddiff.repro.spec import Experiment, RunSpec, experiment_names, load_experiment
from shareddiff.repro.summary import summarize

__all__ = [
    "RECORD",
    "Experiment",
    "RunSpec",
    "check_recorded_recipe",
    "experiment_names",
    "load_experiment",
    "reproduce",
    "run_recipe",
    "summarize",
]

log = logging.getLogger(__name__)


def reproduce(
    name: str,
    runs: list[str] | None = None,
    out: str = "results/repro",
    overrides: list[str] | None = None,
    keep_checkpoints: bool = False,
    jobs: int = 1,
    summary_only: bool = False,
    summary: bool = True,
    progress: bool = True,
    start_by: float | None = None,
) -> str:
    """Run (or resume) the experiment's runs, ``jobs`` at a time, then write its summary.

    One after another (``jobs`` 1), a run whose folder another process is training (two reproduce commands
    into one ``out``) is skipped with a warning and the others go on; the command then raises ValueError
    naming the skipped runs, before the summary: run it again once the other has finished.

    ``start_by``: seconds after the command starts past which no run starts afresh (a run with a checkpoint
    still resumes, a finished one is still reused): within a time budget (``scripts/gpu_reproduce.sh``), the
    runs under way get the machine to themselves instead of sharing it with runs the budget would cut off
    (whose checkpoints a borrowed machine takes with it). The runs left out are named, and the same command
    starts them. Raises ``ValueError`` for a negative ``start_by``."""
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: runs at once must be ≥ 1")
    if start_by is not None and not start_by >= 0:
        raise ValueError(f"--start-by {start_by} must be ≥ 0 seconds (the time after which no run starts afresh)")
    started = time.monotonic()
    exp = load_experiment(name)
    out_path, overrides = Path(out), list(overrides or [])
    specs = exp.select(runs)
    command = f"shareddiff reproduce {name}" + ("" if out == "results/repro" else f" --out {out}")

    def too_late(spec) -> bool:
        """Whether ``spec`` would start afresh past ``start_by``."""
        late = start_by is not None and time.monotonic() - started > start_by
        return late and not has_started(out_path / exp.name / spec.name)

    unstarted: list[str] = []
    if not summary_only:
        for spec in specs:  # check every recipe before any training starts
            resolve_run(exp, spec, out_path, overrides)
        busy: dict[str, str] = {}
        if jobs <= 1:
            for spec in specs:
                if too_late(spec):
                    unstarted.append(spec.name)
                    continue
                holder = _busy(out_path / exp.name / spec.name)
                if holder is not None:
                    busy[spec.name] = holder
                    log.warning("%s/%s: skipped, another process is training it (%s)", exp.name, spec.name, holder)
                    continue
                run_one(exp, spec, out_path, overrides, keep_checkpoints, progress)
        else:
            unstarted = run_parallel(exp, specs, out_path, overrides, keep_checkpoints, jobs, too_late)
        if unstarted:
            log.warning(
                "%d run(s) of %s not started, past --start-by %g s: %s; `%s` with the same options starts them",
                len(unstarted), exp.name, start_by, ", ".join(unstarted), command,
            )  # fmt: skip
        if busy:
            raise ValueError(
                f"runs {list(busy)} of {exp.name} are being trained by another process (another reproduce into "
                f"{out}? {'; '.join(busy.values())}); the other runs are done. Run `{command}` again once it "
                "has finished (finished runs are skipped), or give this one another --out or other --run options"
            )
    left = f"; {len(unstarted)} not started (past --start-by {start_by:g} s)" if unstarted else ""
    if not summary:
        return f"{len(specs) - len(unstarted)} run(s) of {exp.name} done under {out_path / exp.name}{left}"
    return f"summary: {summarize(exp, out_path, command)}{left}"


def _busy(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s run lock (pid, host, start, command), or None when it is free. The check is a
    moment's: a run that another process starts just after it still meets the trainer's own refusal."""
    from shareddiff.train.runlock import RunFolderBusy, RunLock

    if not run_dir.is_dir():
        return None
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except RunFolderBusy as err:
        return err.holder
    lock.release()
    return None
