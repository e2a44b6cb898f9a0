"""The training loop: AdamW, warmup + cosine, clipping, accumulation, autocast, eval, checkpoints, resume.

Batch ``step`` is a pure function of (seed, step) and the LR a function of step, so a run resumed from
its checkpoint at step k continues exactly as the uninterrupted run would have (bitwise on the CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from shareddiff.config import ModelConfig, MQARConfig, OptimConfig, RunConfig
from shareddiff.data import Tokenizer, WindowLoader, eval_windows
from shareddiff.data.bundled import load_data_split
from shareddiff.data.mqar import MQARLoader
from shareddiff.data.needle import NeedleBuilder, parse_mix
from shareddiff.data.shards import content_sha256
from shareddiff.data.tokenizer import BUNDLED_TOKENIZERS
from shareddiff.model import build_model
from shareddiff.precision import upcast
from shareddiff.repro.runner import RECORD
from shareddiff.train.checkpoint import (
    CHECKPOINTS,
    choose_checkpoint,
    list_checkpoints,
    load_training_state,
    read_state,
    rejected_summary,
    save_checkpoint,
    set_aside,
)
from shareddiff.train.device import autocast_for, compute_precision
from shareddiff.train.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    check_same_recipe,
    gradient_sync,
    init_distributed,
    mean_across_ranks,
    parallelize,
    shutdown,
)
from shareddiff.train.loss import target_positions, token_loss
from shareddiff.train.metrics import MetricsLogger, read_metrics
from shareddiff.train.probes import MQARProbe, NeedleProbe
from shareddiff.train.runlock import RunLock

RUN_CONFIG = "run_config.json"
log = logging.getLogger(__name__)


class TrainingDiverged(ValueError):
    """The loss or gradient norm became NaN/inf; the last good checkpoint is kept."""


class ScheduleChanged(ValueError):
    """``--resume`` with other learning-rate schedule values than the checkpoint's (``changes``), not asked for."""

    def __init__(self, message: str, changes: list[str]) -> None:
        super().__init__(message)
        self.changes = changes


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped the run after ``step`` steps; ``checkpoint`` is the newest one to resume
    from; ``signum`` the signal (the CLI exits with 128 + it)."""

    def __init__(
        self,
        step: int,
        max_steps: int,
        checkpoint: Path | None,
        signum: int = signal.SIGINT,
        again: str = "continue with --resume",
    ) -> None:
        self.step, self.max_steps, self.checkpoint, self.signum = step, max_steps, checkpoint, int(signum)
        if checkpoint is None:
            super().__init__(
                f"interrupted at step {step} of {max_steps}; no checkpoint yet, so nothing to resume: "
                "run the same command again (without --resume) to start over"
            )
            return
        last = f"step {int(checkpoint.name.removeprefix('step_'))} ({checkpoint})"
        super().__init__(f"interrupted at step {step} of {max_steps}; last checkpoint {last}; {again}")


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    train_loss: float | None
    val_loss: float | None
    already_complete: bool = False  # --resume of a run that had reached train.max_steps: nothing was trained
    early_stop: dict | None = None  # a run stopped before train.max_steps (train.early_stop_accuracy): step, reason


def lr_at(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Linear warmup over ``warmup_steps`` (0-based ``step``), then cosine to ``lr · min_lr_ratio``."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    decay_steps = max(1, max_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / decay_steps)
    min_lr = optim.lr * optim.min_lr_ratio
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (optim.lr - min_lr)


def build_optimizer(model: torch.nn.Module, optim: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: norms, λ vectors and other vectors are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": optim.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, fused=device.type == "cuda"
    )


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, micro_batch: int, device: torch.device, autocast) -> float:
    """Mean next-token loss over every token of ``windows`` (rows of seq_len + 1)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), micro_batch):
        rows = windows[i : i + micro_batch].to(device)
        with autocast():
            logits = model(rows[:, :-1])
        logits = upcast(logits).flatten(0, 1)
        total += F.cross_entropy(logits, rows[:, 1:].flatten(), reduction="sum").item()
        count += rows[:, 1:].numel()
    model.train()
    return total / count


@torch.no_grad()
def layer_lambdas(model: torch.nn.Module) -> list[float] | None:
    """λ of every layer of a DIFF or Shared DIFF model (architecture §3: exp(λ_q1·λ_k1) − exp(λ_q2·λ_k2) +
    λ_init), None for variants without one scalar λ per layer. Under FSDP2 every rank must call it (the
    sharded λ vectors are gathered)."""
    layers = getattr(model, "module", model).layers  # DDP keeps the model in .module
    values = []
    for block in layers:
        lam = getattr(block.attention, "lam", None)
        if lam is None:
            return None
        value = lam()
        values.append(float(value.full_tensor() if hasattr(value, "full_tensor") else value))
    return values


def _recipe_overrides(recorded: dict, run: RunConfig) -> tuple[list[str], list[str]]:
    """(``section.key=value`` overrides, this run's model overrides to leave out) that turn ``run`` into the
    recipe ``recorded`` (a checkpoint's or run_config.json's ``run``): one per value that differs (train.out_dir
    aside: the same folder, spelled either way; a value TOML cannot write, None, as ``section.key unset``), each
    quoted for a shell. The ``[model]`` section holds only a preset and its overrides, hence the second list."""
    import shlex

    from shareddiff.config import parse_override_value

    now, items = run.to_dict(), []
    for section, values in recorded.items():
        if not isinstance(values, dict):
            continue
        for name, value in values.items():
            if (section, name) == ("train", "out_dir") or now.get(section, {}).get(name) == value:
                continue
            if value is None:
                items.append(f"{section}.{name} unset")
                continue
            text = value if isinstance(value, str) else json.dumps(value)
            if parse_override_value(text) != value:  # a string TOML would read as a number, a bool...
                text = json.dumps(value)
            items.append(shlex.quote(f"{section}.{name}={text}"))
    model = recorded.get("model", {})
    drop = [f"model.{k}={json.dumps(v)}" for k, v in now.get("model", {}).items() if k not in model and v is not None]
    return items, drop


def _recipe_hint(recorded: dict, run: RunConfig, record: Path) -> str:
    """How to resume with the recipe ``recorded`` (``record``: the run_config.json that holds it)."""
    overrides, drop = _recipe_overrides(recorded, run)
    if not overrides and not drop:
        return f"resume with the recipe it was made with ({record} records it)"
    changes = [f"with {' '.join(overrides)}"] * bool(overrides) + [f"without {' '.join(drop)}"] * bool(drop)
    return (
        f"resume with the recipe it was made with, as {record} records it: its --config FILE and overrides, or "
        f"this command {' and '.join(changes)}"
    )


def _check_resume_compatible(
    state: dict, model_config: ModelConfig, tokenizer: Tokenizer | None, ckpt: Path, run: RunConfig
) -> None:
    """A resume with another model config or tokenizer raises ValueError naming each difference and the recipe
    values to resume with. ``state``: a checkpoint's, or run_config.json's (``ckpt`` that file; it records no
    tokenizer hash: ``tokenizer`` None); ``run``: this run's recipe."""
    saved, was = state["model_config"], "checkpoint" if ckpt.name != RUN_CONFIG else "run"
    what = "checkpoint" if ckpt.name != RUN_CONFIG else "the run recorded in"
    diffs = [
        f"model.{k}: {was} {saved.get(k)!r}, this run {v!r}"
        for k, v in model_config.to_dict().items()
        if k != "notes" and saved.get(k) != v
    ]
    if diffs:
        raise ValueError(
            f"{what} {ckpt} was trained with another model config ({'; '.join(diffs)}); "
            f"{_recipe_hint(state['run'], run, Path(run.train.out_dir) / RUN_CONFIG)}; or start a new run folder"
        )
    if tokenizer is not None and state["tokenizer_sha256"] != tokenizer.sha256:
        raise ValueError(
            f"checkpoint {ckpt} was trained with another tokenizer (sha256 "
            f"{state['tokenizer_sha256'][:12]}…, this run's is {tokenizer.sha256[:12]}…); "
            "set data.tokenizer to the one it was trained with"
        )


def prepare_data(run: RunConfig, tokenizer: Tokenizer):
    """(train split, validation split) with the tokenizer check of their manifest."""
    return (load_data_split(run.data.path, tokenizer, "train"), load_data_split(run.data.path, tokenizer, "val"))


def train(
    run: RunConfig, resume: bool | Literal["if_present"] = False, progress: bool = True, new_schedule: bool = False
) -> TrainResult:
    """Train the model of ``run``; with ``resume`` continue from the latest good checkpoint of its folder.

    ``resume=True`` (``--resume``) requires a run to continue: a ``train.out_dir`` that does not exist or
    holds no checkpoint raises ValueError naming the folder, before anything is created; a run that was
    started there (its run_config.json) but stopped before its first checkpoint starts again from step 0,
    with the recipe it was started with, when it cannot have finished (no record.json, no metrics past its
    first checkpoint step); else ValueError. ``"if_present"`` (``reproduce``, ``demo``) resumes when there is
    a checkpoint and starts from step 0 otherwise. ``resume=False`` refuses a folder holding checkpoints or a
    finished run (record.json, eval/). Any resume refuses another model config or batch sequence (seed, data,
    window length, global batch, MQAR task); data and tokenizer count as the same by content (the prepared
    folder's shard hashes, the tokenizer file's hash), whatever their paths.

    Under torchrun every process calls this; they train data-parallel (``run.parallel``), each on its
    own rows of every global batch, so the loss curve does not depend on the number of processes.
    The run holds its folder's lock throughout (a second run into it is refused, naming this one).
    ``--resume`` refuses a changed learning-rate schedule (max_steps, lr, warmup, min_lr_ratio) unless
    ``new_schedule`` (ValueError without ``resume``). Ctrl-C raises TrainingInterrupted; in one process the
    first Ctrl-C finishes the step and saves a checkpoint first. Progress notes go to this module's logger
    (the CLI shows rank 0's).
    """
    if resume not in (False, True, "if_present"):
        raise ValueError(f"resume={resume!r}; use True (a run must exist), 'if_present' or False")
    run.validate()
    run.model_config(vocab_size=None)  # a wrong [model] table fails here, before the run folder is made
    dist, device = init_distributed(run.train.device)
    if run.train.attn_backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        shutdown(dist)
        raise ValueError(
            f"train.attn_backend='triton' runs on CUDA, and this run trains on {device.type}; use "
            "train.attn_backend=auto (SDPA) or eager (TRITON_INTERPRET=1 runs the kernel on the CPU, slowly)"
        )
    try:
        if new_schedule and not resume:
            raise ValueError(
                "--new-schedule accepts a changed learning-rate schedule when continuing a run; it needs --resume "
                "(a new run has no schedule to change): add --resume, or drop --new-schedule"
            )
        restart_of = _check_run_to_resume(Path(run.train.out_dir), dist) if resume is True else None
        if restart_of is not None:
            resume = "if_present"  # a run killed before its first checkpoint starts again from step 0
        with _run_folder_lock(Path(run.train.out_dir), dist):
            trainer = Trainer(run, dist, device, resume, progress and dist.is_main)
            if restart_of is not None:
                trainer.check_restart(restart_of, new_schedule)
                return trainer.train()
            finished = trainer.resume_from_checkpoint(new_schedule) if resume else None
            return finished if finished is not None else trainer.train()
    finally:
        shutdown(dist)


class Trainer:
    """One training run in named phases, as torchtitan's trainer: setup (the constructor: data, model,
    parallelism, optimizer), :meth:`resume_from_checkpoint`, then :meth:`train`, a loop of
    :meth:`train_step` that calls :meth:`log_metrics`, :meth:`validate` and :meth:`save_checkpoint` when due."""

    def __init__(
        self, run: RunConfig, dist: DistInfo, device: torch.device, resume: bool | Literal["if_present"], progress: bool
    ) -> None:
        check_same_recipe(run.to_dict(), dist)
        self.run_dir = Path(run.train.out_dir)
        self.dist, self.device, self.progress = dist, device, progress
        # how to go on after a Ctrl-C: a command that resumes by itself (reproduce, demo) is simply run again
        self.again = "run the same command again to continue" if resume == "if_present" else "continue with --resume"
        if list_checkpoints(self.run_dir) and not resume:
            raise ValueError(
                f"{self.run_dir} already holds checkpoints; pass --resume to continue that run "
                "or set train.out_dir to a new folder"
            )
        if not resume and (finished := _finished_run_files(self.run_dir)):
            raise ValueError(
                f"{self.run_dir} holds a finished run ({', '.join(finished)}); training into it would overwrite "
                "its metrics.jsonl and run_config.json: set train.out_dir to another folder"
            )
        self.tokenizer = Tokenizer(run.data.tokenizer)
        self.model_config = _checked_model_config(run, self.tokenizer)
        self.mqar = run.data.source == "mqar"  # the synthetic task: its own vocabulary, no corpus
        data = _load_data(run, self.tokenizer, dist, device, self.model_config.max_seq_len)
        self.loader, self.val_rows, train_tokens, self.probe = data
        self.data_sha256 = None if self.mqar else content_sha256(self.loader.data.manifest)

        self.autocast = autocast_for(run.train.precision, device)
        torch.manual_seed(run.train.seed)
        model = build_model(self.model_config, attn_backend=run.train.attn_backend).to(device)
        n_params = sum(p.numel() for p in model.parameters())
        self.run = run = run.sized(n_params, dist.world)  # a tokens-per-parameter budget becomes a step count
        if run.optim.warmup_steps >= run.train.max_steps:
            log.warning(
                "optim.warmup_steps=%d is not below train.max_steps=%d: the learning rate never leaves its warmup; "
                "set optim.warmup_steps (or optim.warmup_fraction, e.g. 0.03)",
                run.optim.warmup_steps,
                run.train.max_steps,
            )
        self.budget = _budget(run, n_params, train_tokens, dist.world)
        precision = compute_precision(run.train.precision, device)
        self.model = parallelize(
            model,
            run.parallel,
            dist,
            device,
            compile=run.train.compile,
            precision=precision,
            compile_mode=run.train.compile_mode,
        )
        self.optimizer = build_optimizer(self.model, run.optim, device)
        compile_model = run.train.compile and run.parallel.compile_unit == "model"
        self.step_model = torch.compile(self.model, mode=run.train.compile_mode) if compile_model else self.model
        self.tokens_per_step = run.train.micro_batch * run.train.grad_accum * run.data.seq_len * dist.world

        self.step, self.tokens_seen = 0, 0  # steps done, tokens trained
        self.last_ckpt: Path | None = None
        self.train_loss: float | None = None
        self.val_loss: float | None = None
        self.metrics: MetricsLogger | None = None  # rank 0's records
        self.bar = None
        self.window_start, self.window_tokens = 0.0, 0  # the tokens/s of the steps since the last record
        self.solved_evals: list[tuple[int, float]] = []  # (step, MQAR accuracy) of the latest evals ≥ the threshold
        self.early_stop: dict | None = None  # why and when the run stopped before train.max_steps

    def resume_from_checkpoint(self, new_schedule: bool) -> TrainResult | None:
        """Load the newest intact checkpoint of the run folder (after checking it was trained with this model,
        tokenizer and schedule); the run's result when that checkpoint already finished it, else None."""
        ckpt = _resume_point(self.run_dir, self.dist)
        if ckpt is None:
            log.info("no checkpoint in %s: starting from step 0", self.run_dir)
            return None
        state = read_state(ckpt)
        _check_resume_compatible(state, self.model_config, self.tokenizer, ckpt, self.run)
        _check_same_batches(state, self.run, self.dist.world, self.content_hashes(), f"checkpoint {ckpt.name}")
        _check_same_schedule(state, self.run, ckpt, new_schedule)
        if state["step"] >= self.run.train.max_steps:
            return _already_complete(self.run_dir, ckpt, state)
        solved = self._solved_evals_to_continue(state)
        if solved is None:
            return _already_complete(self.run_dir, ckpt, state)
        load_training_state(ckpt, self.model, self.optimizer, self.dist)
        self.step, self.tokens_seen, self.last_ckpt = state["step"], state["tokens"], ckpt
        self.solved_evals = solved
        log.info(
            "resuming %s from %s (step %d, saved by %d process(es), resumed on %d)",
            self.run_dir,
            ckpt.name,
            self.step,
            state["world_size"],
            self.dist.world,
        )
        return None

    def check_restart(self, recorded: dict, new_schedule: bool) -> None:
        """``--resume`` of a run killed before its first checkpoint (``recorded``: its run_config.json) starts
        it again from step 0: refuse, before anything is written, a recipe other than the one it was started
        with (model, batches, schedule) as a checkpoint resume does, then say that it starts again."""
        path = self.run_dir / RUN_CONFIG
        _check_resume_compatible(recorded, self.model_config, None, path, self.run)
        source = f"the run recorded in {path}"
        _check_same_batches(recorded, self.run, self.dist.world, self.content_hashes(), source)
        _check_same_schedule({**recorded, "step": 0}, self.run, path, new_schedule)
        log.warning(
            "--resume: the run in %s stopped before its first checkpoint; starting it again from step 0", self.run_dir
        )

    def content_hashes(self) -> dict[str, str | None]:
        """What the run trains on, by content (recorded with the run; a resume compares them): the prepared
        data's hash (None for MQAR, which has no corpus) and the tokenizer file's."""
        return {"data_sha256": self.data_sha256, "tokenizer_sha256": self.tokenizer.sha256}

    def _solved_evals_to_continue(self, state: dict) -> list[tuple[int, float]] | None:
        """The early stop's count of evaluations to resume with, or None when the checkpoint ends the run: a run
        stopped early stays complete while the current criterion (``train.early_stop_accuracy`` and
        ``early_stop_patience``, perhaps stricter than the stop's) is met by its recorded evaluations; one that
        is not (a stricter criterion, or early stop off) trains on, counting only the recorded evaluations that
        meet the current threshold (none with early stop off)."""
        train = self.run.train
        recorded = [tuple(e) for e in state.get("solved_evals", [])]
        if not train.early_stop_accuracy:
            return []
        streak = []  # the latest recorded evaluations in a row at or above the current threshold
        for step, accuracy in reversed(recorded):
            if accuracy < train.early_stop_accuracy:
                break
            streak.insert(0, (step, accuracy))
        stop = state.get("early_stop")
        if not stop:
            return streak
        if len(streak) >= train.early_stop_patience:
            return None
        log.info(
            "%s stopped early at step %d (%s); the current criterion, mqar_accuracy ≥ %g at %d consecutive "
            "evaluations, is not met by its recorded evaluations (%d in a row): training on to step %d",
            self.run_dir,
            stop["step"],
            stop["reason"],
            train.early_stop_accuracy,
            train.early_stop_patience,
            len(streak),
            train.max_steps,
        )
        return streak

    def train(self) -> TrainResult:
        """Steps from the current one to ``train.max_steps``; logging, validation and checkpoints when due."""
        max_steps = self.run.train.max_steps
        log.info(
            "training %s (%s, %s parameters) for %d steps of %s tokens into %s",
            self.run.model.get("preset", "a custom model") if isinstance(self.run.model, dict) else "the model",
            self.model_config.attention,
            f"{sum(p.numel() for p in self.model.parameters()):,}",
            max_steps,
            f"{self.tokens_per_step:,}",
            self.run_dir,
        )
        self._open_records()
        self.bar = bar = _progress(max_steps, self.step, self.progress)
        self.window_start = time.perf_counter()
        ctrl_c = _CtrlC(not self.dist.enabled)
        try:
            for step in range(self.step, max_steps):
                loss, grad_norm, lr = self.train_step(step)
                self.step = step + 1
                self.tokens_seen += self.tokens_per_step
                self.window_tokens += self.tokens_per_step
                if self._due(self.run.train.log_every):
                    self.log_metrics(loss, grad_norm, lr)
                if self._due(self.run.train.eval_every):
                    self.validate()
                stopping = ctrl_c.pressed and self.step < max_steps
                if self._due(self.run.checkpoint.every) or stopping or self.early_stop:
                    paused = time.perf_counter()
                    self.last_ckpt = self.save_checkpoint()
                    self.window_start += time.perf_counter() - paused  # tokens/s counts training steps only
                bar.update(1)
                if stopping:
                    raise TrainingInterrupted(self.step, max_steps, self.last_ckpt, ctrl_c.signum, self.again)
                if self.early_stop:
                    break
        except KeyboardInterrupt as err:
            if isinstance(err, TrainingInterrupted):
                raise
            raise TrainingInterrupted(self.step, max_steps, self.last_ckpt, ctrl_c.signum, self.again) from None
        finally:
            ctrl_c.restore()
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
        return TrainResult(
            self.run_dir, self.step, self.last_ckpt, self.train_loss, self.val_loss, early_stop=self.early_stop
        )

    def train_step(self, step: int) -> tuple[float, float, float]:
        """One optimizer step (0-based ``step``) over ``grad_accum`` micro-batches of every rank: (loss averaged
        over ranks, gradient norm before clipping, learning rate). Raises TrainingDiverged on NaN/inf."""
        run, dist = self.run, self.dist
        lr = lr_at(step, run.optim, run.train.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(run.train.grad_accum):
            x, y, weights = self.loader.batch(
                step, micro, run.train.micro_batch, run.train.grad_accum, dist.rank, dist.world
            )
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            at = self.answer_positions(y)
            with gradient_sync(self.model, run.parallel, micro == run.train.grad_accum - 1):
                with self.autocast():
                    logits = self.step_model(x) if at is None else self.step_model(x, logits_at=at)
                targets = y if at is None else y.gather(1, at)
                loss = token_loss(logits, targets, weights) / run.train.grad_accum
                loss.backward()
            loss_sum += loss.detach()
        clip = run.optim.grad_clip if run.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
            grad_norm = grad_norm.full_tensor()
        self.train_loss = train_loss = mean_across_ranks(loss_sum, dist).item()
        norm = grad_norm.item()
        if not (math.isfinite(train_loss) and math.isfinite(norm)):
            good = f"The last good checkpoint is kept ({self.last_ckpt})" if self.last_ckpt else "No checkpoint yet"
            again = "continue with --resume" if self.last_ckpt else "start again (without --resume)"
            raise TrainingDiverged(
                f"training diverged at step {step + 1}: loss={train_loss}, grad norm={norm}. "
                f"{good}. Lower optim.lr or raise optim.warmup_steps, check the data, then {again}"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return train_loss, norm, lr

    def answer_positions(self, targets: torch.Tensor) -> torch.Tensor | None:
        """MQAR: each row's answer positions (``loss.target_positions``), where the step computes the head only
        (``LanguageModel.forward(logits_at=...)``); None for other data, whose every position is a target."""
        return target_positions(targets, self.run.mqar.n_queries()) if self.mqar else None

    def log_metrics(self, loss: float, grad_norm: float, lr: float) -> None:
        """The training record of the step just done (loss, lr, norm, tokens, tokens/s, λ) on rank 0."""
        lambdas = layer_lambdas(self.model)  # every rank: FSDP2 gathers the λ vectors
        if self.metrics is None:
            return
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        record = {
            "step": self.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": self.tokens_seen,
            "tokens_per_s": self.window_tokens / elapsed,
        }
        if "train_tokens" in self.budget:  # a corpus (MQAR draws new sequences every step)
            record["passes"] = self.tokens_seen / self.budget["train_tokens"]
        if lambdas is not None:
            record["lambda"] = lambdas
        if self.device.type == "cuda":
            record["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.metrics.log(record)
        self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{self.window_tokens / elapsed:,.0f}")
        self.window_start, self.window_tokens = time.perf_counter(), 0

    def validate(self) -> None:
        """The validation loss on every rank (MQAR: loss and accuracy at the answer positions, at the training
        length and 2x; a needle mix adds its probe's exact match, per-token accuracy and answer log-prob),
        recorded by rank 0 with the seconds it took (``eval_s``, left out of the next record's tokens/s). An
        MQAR run with ``train.early_stop_accuracy`` also decides here whether it is solved (``early_stop``)."""
        start = time.perf_counter()
        micro_batch = self.run.train.micro_batch
        if self.mqar:  # eager: compiled blocks would recompile for no_grad, for 2N and for the last, short batch
            with torch.compiler.set_stance("force_eager"):
                scores = self.probe(self.model, micro_batch, self.autocast)
            self.val_loss = scores["val_loss"]
        else:
            self.val_loss = evaluate(self.model, self.val_rows, micro_batch, self.device, self.autocast)
            scores = {"val_loss": self.val_loss, "val_ppl": math.exp(min(self.val_loss, 50))}
            if self.probe is not None:
                scores |= self.probe(self.model, micro_batch, self.autocast)
        seconds = time.perf_counter() - start
        self.window_start += seconds  # tokens/s counts training steps only
        if self.metrics is not None:
            self.metrics.log({"step": self.step, **scores, "tokens": self.tokens_seen, "eval_s": seconds})
            if self.mqar:  # the accuracy is what an MQAR run is for: on the console too
                twice = scores.get("mqar_accuracy_2x")
                log.info(
                    "step %d: val loss %.4f, MQAR accuracy %.3f (2× the length: %s)", self.step, self.val_loss,
                    scores["mqar_accuracy"], "not measured" if twice is None else f"{twice:.3f}",
                )  # fmt: skip
            else:
                log.info("step %d: val loss %.4f", self.step, self.val_loss)
        if self.mqar and self.run.train.early_stop_accuracy > 0:
            self.watch_accuracy(scores["mqar_accuracy"])

    def watch_accuracy(self, accuracy: float) -> None:
        """Early stop of a solved MQAR run: once ``accuracy`` (at the training length) has been ≥
        ``train.early_stop_accuracy`` at ``train.early_stop_patience`` consecutive evaluations, set
        ``early_stop`` (the loop then saves a checkpoint and ends) and record why in metrics.jsonl. Rank 0's
        accuracy decides for every rank."""
        train = self.run.train
        accuracy = broadcast_object(accuracy, self.dist)
        if accuracy >= train.early_stop_accuracy:
            self.solved_evals.append((self.step, accuracy))
        else:
            self.solved_evals = []
        if len(self.solved_evals) < train.early_stop_patience or self.step >= train.max_steps:
            return
        recent = self.solved_evals[-train.early_stop_patience :]
        self.early_stop = {
            "step": self.step,
            "max_steps": train.max_steps,
            "reason": (
                f"mqar_accuracy ≥ {train.early_stop_accuracy:g} at {len(recent)} consecutive evaluations "
                f"(steps {', '.join(str(step) for step, _ in recent)})"
            ),
            "threshold": train.early_stop_accuracy,
            "patience": train.early_stop_patience,
            "accuracies": [accuracy for _, accuracy in recent],
        }
        if self.metrics is not None:
            self.metrics.log({"step": self.step, "tokens": self.tokens_seen, "early_stop": self.early_stop})
            log.info("step %d: stopping early of %d steps: %s", self.step, train.max_steps, self.early_stop["reason"])

    def save_checkpoint(self) -> Path:
        """A checkpoint of the step just done (model, optimizer, run and the losses so far)."""
        state = {
            "tokens": self.tokens_seen,
            "model_config": self.model_config.to_dict(),
            "run": self.run.to_dict(),
            **self.content_hashes(),
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "solved_evals": self.solved_evals,
            "early_stop": self.early_stop,
        }
        keep = self.run.checkpoint.keep_last
        return save_checkpoint(
            self.run_dir, self.step, self.model, self.optimizer, state, self.tokenizer.path, keep, self.dist
        )

    def _due(self, every: int) -> bool:
        return self.step % every == 0 or self.step == self.run.train.max_steps

    def _open_records(self) -> None:
        """Rank 0 writes run_config.json and opens metrics.jsonl (cut back to the resumed step)."""
        if not self.dist.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "run": self.run.to_dict(),
            "model_config": self.model_config.to_dict(),
            "world_size": self.dist.world,
            **self.content_hashes(),
            **self.budget,
        }
        (self.run_dir / RUN_CONFIG).write_text(json.dumps(record, indent=2))
        resume_step = self.step if self.last_ckpt is not None else None
        self.metrics = MetricsLogger(self.run_dir, resume_step=resume_step, log_every=self.run.train.log_every)


def _checked_model_config(run: RunConfig, tokenizer: Tokenizer) -> ModelConfig:
    """The run's model config with the vocabulary of its data (the tokenizer's, or MQAR's); an error when the
    vocabulary or the training length does not fit it."""
    mqar = run.data.source == "mqar"
    vocab, vocab_of = (run.mqar.vocab_size, "mqar.vocab_size") if mqar else (tokenizer.vocab_size, "the tokenizer's")
    preset = str(run.model.get("preset", ""))
    if preset.endswith("-mqar") and not mqar:
        log.warning(
            "preset %s is sized for the MQAR task, but data.source is %r: it trains on that data with %s "
            "vocabulary (%d); add data.source=mqar (or use configs/repro/recipe-mqar.toml) for the task",
            preset,
            run.data.source,
            vocab_of,
            vocab,
        )
    model_config = run.model_config(vocab_size=vocab)
    if model_config.vocab_size < vocab:
        raise ValueError(
            f"model.vocab_size={model_config.vocab_size} is smaller than {vocab_of} "
            f"{vocab}; remove model.vocab_size to take {vocab_of}"
        )
    if run.data.seq_len > model_config.max_seq_len:
        raise ValueError(
            f"data.seq_len={run.data.seq_len} exceeds model max_seq_len={model_config.max_seq_len}; "
            "lower data.seq_len or raise model.max_seq_len"
        )
    return model_config


def _load_data(run: RunConfig, tokenizer: Tokenizer, dist: DistInfo, device: torch.device, max_seq_len: int):
    """(the training loader, the validation windows, the training split's token count, the probe that
    validation adds): MQAR has no corpus (neither windows nor a count); a needle mix has its needle probe."""
    if run.data.source == "mqar":
        probe = MQARProbe(run.mqar, run.data.seq_len, max_seq_len)
        if probe.skipped:
            log.info(probe.skipped)
        return MQARLoader(run.mqar, run.data.seq_len, run.train.seed, device), None, None, probe
    if dist.is_main:
        train_data, val_data = prepare_data(run, tokenizer)  # rank 0 tokenizes the bundled corpus first
    barrier(dist)
    if not dist.is_main:
        train_data, val_data = prepare_data(run, tokenizer)
    mix = parse_mix(run.data.mix, tokenizer, train_data)
    loader = WindowLoader(train_data, run.data.seq_len, run.train.seed, mix)
    val_rows = eval_windows(val_data, run.data.seq_len, run.data.val_tokens)
    probe = None
    if mix is not None:  # the needle task's learning curve, on prompts from the validation split
        builder = NeedleBuilder(tokenizer, val_data, split_digits=mix.builder.split_digits)
        probe = NeedleProbe(builder, run.data.seq_len, mix.max_needles)
    return loader, val_rows, len(train_data), probe


@contextlib.contextmanager
def _run_folder_lock(run_dir: Path, dist: DistInfo):
    """Rank 0 holds ``run_dir``'s lock for the run; when another run holds it, every rank raises its message.
    A run that fails in a folder it created, before writing anything there (a config error), removes it."""
    lock = RunLock(run_dir)
    refusal, created = None, False
    if dist.is_main:
        created = not run_dir.exists()
        try:
            lock.acquire()
        except ValueError as err:
            refusal = str(err)
    refusal = broadcast_object(refusal, dist)
    if refusal is not None:
        raise ValueError(refusal)
    try:
        yield
    except BaseException:
        lock.release()
        if created and [p.name for p in run_dir.iterdir()] == [lock.path.name]:
            lock.path.unlink()
            run_dir.rmdir()
        raise
    finally:
        lock.release()


def _check_run_to_resume(run_dir: Path, dist: DistInfo) -> dict | None:
    """``--resume`` asks to continue a run: refuse (on every rank, before the folder is made) when ``run_dir``
    does not exist or holds neither a checkpoint folder nor a started run (its run_config.json), rather than
    silently starting a new run. A started run without a checkpoint starts again from step 0 only when it can
    have been killed before its first checkpoint: no record.json of ``reproduce`` (a finished run whose
    checkpoints were deleted) and no training step logged after its first checkpoint's step; else an error.
    The run's run_config.json (a dict) when it starts again, else None."""
    error, recorded = None, None
    if dist.is_main:
        looked_for = f"looked for {run_dir / CHECKPOINTS}/step_*"
        fix = "set train.out_dir to the folder of the run to continue, or drop --resume to start a new run"
        if not run_dir.is_dir():
            error = f"--resume: {run_dir} does not exist, so there is no run to continue ({looked_for}); {fix}"
        elif not list_checkpoints(run_dir):
            if (run_dir / RUN_CONFIG).is_file():
                try:
                    recorded = json.loads((run_dir / RUN_CONFIG).read_text())
                    error = _not_killed_before_first_checkpoint(run_dir, recorded)
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    error = (
                        f"--resume: {run_dir / RUN_CONFIG} is damaged ({err}) and there is no checkpoint, so the "
                        "recipe of the run to start again is unknown; drop --resume to start the run over there"
                    )
            else:
                error = f"--resume: {run_dir} holds no checkpoint to continue from ({looked_for}); {fix} there"
    error, recorded = broadcast_object((error, recorded), dist)
    if error is not None:
        raise ValueError(error)
    return recorded


def _not_killed_before_first_checkpoint(run_dir: Path, recorded: dict) -> str | None:
    """Why the checkpoint-less run in ``run_dir`` (``recorded``: its run_config.json) cannot be one killed
    before its first checkpoint, so that starting it again would overwrite a finished run's records; None when
    it can be."""
    finished = _finished_run_files(run_dir)
    if finished:
        return (
            f"--resume: {run_dir} holds a finished run ({', '.join(finished)}) whose checkpoints were deleted, so "
            "there is nothing to continue and starting it again would overwrite its records; set train.out_dir "
            "to another folder, or drop --resume there to train a new run (after moving that one aside)"
        )
    run = recorded.get("run", {})
    first = min(run.get("checkpoint", {}).get("every", 0), run.get("train", {}).get("max_steps", 0))
    steps = [r["step"] for r in read_metrics(run_dir) if "loss" in r]
    if steps and steps[-1] > first:  # the metrics of step `first` are logged just before its checkpoint is saved
        return (
            f"--resume: {run_dir} holds no checkpoint, but its metrics.jsonl logs step {steps[-1]}, after the run's "
            f"first checkpoint (step {first}): its checkpoints were deleted, so there is nothing to continue and "
            "starting it again would overwrite its records; set train.out_dir to another folder, or drop --resume"
        )
    return None


def _finished_run_files(run_dir: Path) -> list[str]:
    """What in ``run_dir`` shows a finished run: ``reproduce``'s record.json, evaluation results (eval/)."""
    return [name for name in (RECORD, "eval/") if (run_dir / name.rstrip("/")).exists()]


BATCH_FIELDS = ("train.seed", "data.seq_len", "data.path", "data.tokenizer", "data.source", "data.mix")
# what MQAR's training sequences are drawn from besides the seed and data.seq_len (eval_samples: its evaluation set)
MQAR_BATCH_FIELDS = tuple(f"mqar.{f.name}" for f in dataclasses.fields(MQARConfig) if f.name != "eval_samples")
# the fields that name data by a path, with the record's hash of that data and what the data is
CONTENT_FIELDS = {"data.path": ("data_sha256", "prepared data"), "data.tokenizer": ("tokenizer_sha256", "tokenizer")}


def _check_same_batches(recorded: dict, run: RunConfig, world: int, hashes: dict, source: str) -> None:
    """Batch ``step`` is a function of the seed, the data, the window length and the global batch (and, for
    MQAR, the task's ``[mqar]`` fields): a resume that changes one of them trains the rest of the run on
    another batch sequence than its record says. Refuse it naming each change. ``recorded``: a checkpoint's
    state or run_config.json (``run``, ``world_size``, the content hashes of ``Trainer.content_hashes``, which
    ``hashes`` gives for this run); a field it lacks (recorded before the field existed) counts as its
    default. A micro_batch × grad_accum × world size split of the same global batch is fine (memory only;
    docs/distributed.md); so is the same data or tokenizer under another path (``_content_change``)."""
    saved, saved_world, now, defaults = recorded["run"], recorded["world_size"], run.to_dict(), RunConfig().to_dict()
    mqar = "mqar" in (saved.get("data", {}).get("source"), run.data.source)
    diffs = []
    for key in BATCH_FIELDS + (MQAR_BATCH_FIELDS if mqar else ()):
        section, name = key.split(".")
        before, after = saved.get(section, {}).get(name, defaults[section][name]), now[section][name]
        if key in CONTENT_FIELDS:
            hash_key, what = CONTENT_FIELDS[key]
            change = _content_change(key, before, after, (recorded.get(hash_key), hashes[hash_key]), what)
        else:
            change = f"{key} {before!r} → {after!r}" if before != after else None
        if change:
            diffs.append(change)
    saved_train = saved.get("train", {})
    before = saved_train.get("micro_batch", 0) * saved_train.get("grad_accum", 0) * saved_world
    after = run.train.micro_batch * run.train.grad_accum * world
    if before != after:
        diffs.append(
            f"global batch (train.micro_batch × train.grad_accum × processes) {saved_train.get('micro_batch')} × "
            f"{saved_train.get('grad_accum')} × {saved_world} = {before} → {run.train.micro_batch} × "
            f"{run.train.grad_accum} × {world} = {after}"
        )
    if diffs:
        raise ValueError(
            f"{source} was trained on another batch sequence ({'; '.join(diffs)}); resuming with these values "
            "trains the remaining steps on other batches than its record says. Resume with the run's own values "
            "(micro_batch and grad_accum may change while their product × processes stays the same), or start a "
            "new run folder"
        )


def _content_change(key: str, before: str | None, after: str | None, hashes: tuple, what: str) -> str | None:
    """How ``key`` (data.path or data.tokenizer) changed between the record (``before``) and this run
    (``after``), or None when both name the same data: by content when both ``hashes`` (recorded, now) are
    known, so a copy or another spelling of the same data is the same and data prepared again in place is
    not; else (a record without them) by path, resolved (relative paths, symlinks, trailing slashes)."""
    recorded, now = hashes
    if recorded is not None and now is not None:
        if recorded != now:
            return f"{key} {before!r} → {after!r} (other content: sha256 {recorded[:12]}… → {now[:12]}…)"
        if before != after:
            log.info("%s %r → %r: the same %s (content sha256 %s…), continuing", key, before, after, what, now[:12])
        return None
    if _resolved(key, before) == _resolved(key, after):
        return None
    return f"{key} {before!r} → {after!r}"


def _resolved(key: str, value: str | None) -> Path | None:
    """The file or folder ``value`` of ``key`` names, resolved: a bundled tokenizer's name (None: the default
    one) is its file; a data.path of None (the bundled corpus) stays None."""
    if key == "data.tokenizer":
        value = BUNDLED_TOKENIZERS.get("bundled" if value is None else value, value)
    return None if value is None else Path(value).expanduser().resolve()


def _resume_point(run_dir: Path, dist: DistInfo) -> Path | None:
    """The newest checkpoint whose every file matches its manifest, chosen on rank 0 (incomplete or damaged
    newer ones are skipped with a logged warning naming them); an error when checkpoints exist but none is
    complete."""
    choice: tuple[Path | None, str | None] = (None, None)
    if dist.is_main:
        ckpt, rejected = choose_checkpoint(run_dir)
        if ckpt is not None:  # the skipped newer folders: out of the way of rotation, kept (rank 0, before any load)
            for err in rejected:
                if err.ckpt.is_dir() and err.ckpt.parent == run_dir / CHECKPOINTS:
                    log.warning("%s: %s; kept as %s", err.ckpt.name, err.kind, set_aside(err.ckpt))
        if ckpt is None and list_checkpoints(run_dir):
            choice = (
                None,
                f"no checkpoint of {run_dir} is intact ({rejected_summary(rejected)}); if the run folder was "
                f"copied from elsewhere, copy it again whole; otherwise move {run_dir / CHECKPOINTS} aside to "
                "start over, or start a new run folder (nothing was deleted)",
            )
        else:
            choice = (ckpt, None)
    ckpt, error = broadcast_object(choice, dist)
    if error is not None:
        raise ValueError(error)
    return ckpt


SCHEDULE_FIELDS = ("train.max_steps", "optim.lr", "optim.warmup_steps", "optim.min_lr_ratio")


def _check_same_schedule(state: dict, run: RunConfig, ckpt: Path, new_schedule: bool) -> None:
    """Resuming with other schedule values silently bends the learning rate of the rest of the run: refuse
    that unless asked (``new_schedule``), then say what changes."""
    saved, now = state["run"], run.to_dict()
    diffs = []
    for key in SCHEDULE_FIELDS:
        section, name = key.split(".")
        before, after = saved.get(section, {}).get(name), now[section][name]
        if before != after:
            diffs.append(f"{key} {before!r} → {after!r}")
    if not diffs:
        return
    if not new_schedule:
        what = f"checkpoint {ckpt.name}" if ckpt.name != RUN_CONFIG else f"the run recorded in {ckpt}"
        raise ScheduleChanged(
            f"{what} was trained on another learning-rate schedule ({'; '.join(diffs)}); "
            "resuming with these values changes the learning rate of every remaining step. Resume with "
            "the run's own values, or pass --new-schedule to continue on the new schedule",
            diffs,
        )
    log.info("continuing on a new learning-rate schedule from step %d: %s", state["step"], "; ".join(diffs))


def _already_complete(run_dir: Path, ckpt: Path, state: dict) -> TrainResult:
    return TrainResult(
        run_dir,
        state["step"],
        ckpt,
        state.get("train_loss"),
        state.get("val_loss"),
        already_complete=True,
        early_stop=state.get("early_stop"),
    )


_STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}  # what a stop request is called in the log


class _CtrlC:
    """The first Ctrl-C (SIGINT) or SIGTERM (what schedulers, ``timeout`` and ``kill`` send) lets the current step
    finish (the loop then saves a checkpoint and stops); a second one interrupts at once. Only in one process, on the
    main thread: under torchrun every rank gets the signal and stops where it is."""

    def __init__(self, enabled: bool) -> None:
        self.pressed, self.signum, self._previous = False, signal.SIGINT, {}
        if enabled and threading.current_thread() is threading.main_thread():
            for signum in _STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed, self.signum = True, signum
        name = _STOP_SIGNALS.get(signum, f"signal {signum}")
        log.warning("\n%s: stopping after this step with a checkpoint (send it again to stop at once)", name)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


def _budget(run: RunConfig, n_params: int, train_tokens: int | None, world: int) -> dict:
    """The run's size in the terms of the budget protocol (docs/results.md): parameters, tokens per
    parameter and passes over the training split (neither for MQAR: every batch is new), recorded in
    run_config.json."""
    tokens = run.train.max_steps * run.tokens_per_step(world)
    budget = {
        "params": n_params,
        "tokens_per_step": run.tokens_per_step(world),
        "planned_tokens": tokens,
        "tokens_per_param": tokens / n_params,
    }
    if train_tokens is not None:
        budget |= {"train_tokens": train_tokens, "passes": tokens / train_tokens}
    return budget


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)
