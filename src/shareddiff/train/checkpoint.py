"""Checkpoints: one folder per step, written atomically; model + optimizer through PyTorch's
distributed checkpoint (sharded, resumable on any number of processes), weights also as safetensors.

    OUT/checkpoints/step_00000100/
        dcp/                  model + AdamW state, torch.distributed.checkpoint (one shard per rank)
        model.safetensors     the full weights, gathered on rank 0 (generate / export / eval read these)
        rng_rank{R}.pt        each rank's torch / CUDA / Python RNG states (torch.load(weights_only=True))
        tokenizer.json        the tokenizer the run used
        state.json            step, tokens, configs, tokenizer and data hashes, world size
        manifest.json         every other file's size and sha256 — written last

Every rank writes into ``step_X.tmp``; once all have finished, rank 0 writes the manifest, fsyncs the
files and renames the folder, so a run killed mid-write (any rank, any moment) leaves only a ``.tmp``
folder, never loaded. A checkpoint is trusted only once each file it needs matches the manifest: a
truncated or altered file (weights or distributed state alike) makes it skipped, by name, for the
previous one. A step folder without its manifest (a partial or foreign copy: the trainer writes the manifest
last, inside the rename) is incomplete and skipped the same way; nothing skipped is ever deleted: a run that
resumes past skipped folders moves them to ``checkpoints/rejected/step_X-<time>-<pid>``, which resume and rotation
ignore (so that rotation cannot delete them once newer checkpoints exist). A write
that fails (a full disk) removes its ``.tmp`` folder and says why.
A multi-node run needs the run folder on a filesystem every node sees.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from shareddiff.train.distributed import DistInfo, all_gather_objects, broadcast_object

CHECKPOINTS = "checkpoints"
STATE = "state.json"
MANIFEST = "manifest.json"
REJECTED = "rejected"  # skipped step folders, set aside by the run that resumed past them, kept under checkpoints/
FORMAT = "shareddiff-checkpoint/2"
DCP_DIR = "dcp"
FILES = ("model.safetensors", "rng_rank0.pt", "tokenizer.json", STATE, f"{DCP_DIR}/.metadata")
WEIGHT_FILES = (STATE, "model.safetensors", "tokenizer.json")  # what generate / eval / export read
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
log = logging.getLogger(__name__)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        _fsync(path)
    _fsync(root)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _single_process_is_fine():
    """Silence DCP's notice that it runs without a process group: one process is a supported setup here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (e.g. the disk is full); its partial folder is removed, earlier ones kept."""


class _PeerWriteFailed(OSError):
    """Another rank's part of a checkpoint write failed; carries that rank's message."""

    def __init__(self, rank: int, message: str, no_space: bool) -> None:
        super().__init__(f"rank {rank}: {message}")
        self.no_space = no_space


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    tokenizer_path: str | Path,
    keep_last: int,
    dist: DistInfo | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step_{step}`` (a collective: every rank calls it), then prune to ``keep_last``.

    Raises CheckpointWriteError on every rank when any rank's write fails, naming the cause (for a full
    disk: the device, the path and the free space); the ``.tmp`` folder is removed, earlier checkpoints
    are untouched.
    """
    from torch.distributed.checkpoint.api import CheckpointException

    dist = dist or DistInfo()
    root = Path(run_dir) / CHECKPOINTS
    final, tmp = root / f"step_{step:08d}", root / f"step_{step:08d}.tmp"
    try:
        _on_every_rank(dist, root, _fresh_folder, tmp, main_only=True)
        full = _on_every_rank(dist, root, _write_sharded, tmp, model, optimizer, dist)
        _on_every_rank(dist, root, _write_main_files, tmp, full, step, state, tokenizer_path, dist, main_only=True)
        names = broadcast_object(_relative_files(tmp) if dist.is_main else None, dist)
        share = _on_every_rank(dist, root, _hash_files, tmp, names[dist.rank :: dist.world])
        listed = {name: entry for part in all_gather_objects(share, dist) for name, entry in part.items()}
        _on_every_rank(dist, root, _finish, tmp, final, listed, run_dir, keep_last, main_only=True)
    except (OSError, RuntimeError, CheckpointException) as err:
        no_space = _no_space(err, root)
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if any(isinstance(e, KeyboardInterrupt) for e in _causes(err)):  # DCP wraps a Ctrl-C in its own error
            raise KeyboardInterrupt from None
        raise CheckpointWriteError(_write_failure_message(err, no_space, root, final, run_dir)) from None
    return final


def _fresh_folder(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)


def _write_sharded(tmp: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, dist: DistInfo) -> dict:
    """Every rank: its DCP shards of model + optimizer and its RNG state; returns the full weights (rank 0's use)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _single_process_is_fine():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / DCP_DIR))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    torch.save(rng_state(), tmp / f"rng_rank{dist.rank}.pt")
    return full


def _write_main_files(
    tmp: Path, full: dict, step: int, state: dict[str, Any], tokenizer_path: str | Path, dist: DistInfo
) -> None:
    """Rank 0: the gathered weights as safetensors, the tokenizer and ``state.json``."""
    weights = {k: v.detach().to("cpu").contiguous() for k, v in full.items()}
    save_file(weights, tmp / "model.safetensors", metadata={"format": FORMAT})
    make_readable(tmp / "model.safetensors")
    shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
    (tmp / STATE).write_text(json.dumps({"format": FORMAT, "step": step, "world_size": dist.world, **state}, indent=2))


def _finish(tmp: Path, final: Path, listed: dict, run_dir: str | Path, keep_last: int) -> None:
    """Rank 0: the manifest last, fsync everything, rename into place, prune old checkpoints."""
    (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": dict(sorted(listed.items()))}, indent=2))
    _fsync_tree(tmp)
    if final.exists():  # a step folder the resume skipped (incomplete or damaged): keep it, out of the way
        aside = set_aside(final)
        log.warning("%s was skipped on resume and is saved again: the skipped folder is kept as %s", final, aside)
    os.replace(tmp, final)
    _fsync(final.parent)
    for old in _with_manifest(run_dir)[:-keep_last]:  # step folders without one are never deleted
        shutil.rmtree(old, ignore_errors=True)


def set_aside(ckpt: Path) -> Path:
    """Move a checkpoint folder that is not trusted to ``checkpoints/rejected/step_X-<time>-<pid>`` (which resume
    and rotation ignore) and return its new path: skipped folders are kept for the user, never deleted."""
    aside = ckpt.parent / REJECTED / f"{ckpt.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    aside.parent.mkdir(exist_ok=True)
    os.replace(ckpt, aside)
    return aside


def _on_every_rank(dist: DistInfo, root: Path, fn: Callable[..., Any], *args: Any, main_only: bool = False) -> Any:
    """``fn(*args)`` here (on rank 0 only with ``main_only``); when it failed on any rank, raise on every
    rank, so that none is left waiting in a collective."""
    from torch.distributed.checkpoint.api import CheckpointException

    result, error = None, None
    try:
        if dist.is_main or not main_only:
            result = fn(*args)
    except (OSError, RuntimeError, CheckpointException) as err:
        error = err
    report = None if error is None else (dist.rank, _first_line(error), _no_space(error, root))
    failures = [r for r in all_gather_objects(report, dist) if r is not None]
    if error is not None:
        raise error
    if failures:
        raise _PeerWriteFailed(*failures[0])
    return result


def _causes(err: BaseException) -> Iterable[BaseException]:
    """``err``, its causes and contexts, and the per-rank failures a DCP CheckpointException carries."""
    seen, stack = set(), [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__]
        stack += [pair[0] for pair in getattr(e, "failures", {}).values()]


def _no_space(err: BaseException, root: Path) -> bool:
    """Whether a failed write ran out of space: ENOSPC/EDQUOT anywhere in ``err``, or (for writers that hide
    the errno, like torch.save's "unexpected pos") less than 64 MiB left where ``root`` lies."""
    if any(getattr(e, "no_space", False) for e in _causes(err)):
        return True
    if any(isinstance(e, OSError) and e.errno in NO_SPACE for e in _causes(err)):
        return True
    try:
        return shutil.disk_usage(root).free < 64 * 2**20
    except OSError:
        return False


def _first_line(err: BaseException) -> str:
    """A one-line description of ``err``, looking through DCP's CheckpointException to the rank's own error."""
    inner = [pair[0] for pair in getattr(err, "failures", {}).values()]
    err = inner[0] if inner else err
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _write_failure_message(err: BaseException, no_space: bool, root: Path, final: Path, run_dir: str | Path) -> str:
    previous = _with_manifest(run_dir)
    kept = f"the last checkpoint ({previous[-1].name}) is intact" if previous else "there is no earlier checkpoint"
    if no_space:
        free = shutil.disk_usage(root).free if root.exists() else 0
        return (
            f"could not write checkpoint {final.name}: no space left on device {filesystem_of(root)}, "
            f"{_bytes(free)} free at {root}. The partial folder was removed and {kept}. Free space on that "
            "device (or move the run folder to a larger one), then continue with --resume"
        )
    return (
        f"could not write checkpoint {final.name} in {root} ({_first_line(err)}). The partial folder was "
        f"removed and {kept}; fix the cause, then continue with --resume"
    )


def filesystem_of(path: Path) -> str:
    """'DEVICE (mounted on MOUNT POINT)' for the filesystem holding ``path``, from /proc/self/mounts on Linux."""
    path = Path(path).resolve()
    best: tuple[str, str] | None = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            device, mount = line.split()[:2]
            mount = mount.replace("\\040", " ")
            if (path == Path(mount) or Path(mount) in path.parents) and (best is None or len(mount) > len(best[1])):
                best = (device, mount)
    if best is not None:
        return f"{best[0]} (mounted on {best[1]})"
    dev = os.stat(path).st_dev
    return f"{os.major(dev)}:{os.minor(dev)}"


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _relative_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _sha256(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex digest) of a file, read in 4 MiB blocks."""
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _hash_files(root: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in names:
        size, digest = _sha256(root / name)
        out[name] = {"bytes": size, "sha256": digest}
    return out


def make_readable(path: str | Path) -> None:
    """Give a written file the mode the user's umask asks for (safetensors writes 0600 files), so that another
    user (a server) can read exported weights."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def load_training_state(
    ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, dist: DistInfo | None = None
) -> None:
    """Load model + optimizer from the checkpoint's DCP shards (any saving world size) and this rank's RNG."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    dist = dist or DistInfo()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    target = {"model": model_sd, "optim": optim_sd}
    try:
        with _single_process_is_fine():
            dcp.load(target, checkpoint_id=str(ckpt / DCP_DIR))
    except (Exception, CheckpointException) as err:
        raise ValueError(
            f"checkpoint {ckpt}: its distributed state ({DCP_DIR}/) does not load ({_first_line(err)}); "
            "move that checkpoint folder aside to resume from the one before"
        ) from None
    set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
    rng_file = ckpt / f"rng_rank{dist.rank}.pt"
    set_rng_state(torch.load(rng_file if rng_file.is_file() else ckpt / "rng_rank0.pt", weights_only=True))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (``.tmp`` leftovers excluded)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.suffix != ".tmp")


def _with_manifest(run_dir: str | Path) -> list[Path]:
    """The checkpoint folders of a run that hold a manifest (not verified), oldest first."""
    return [p for p in list_checkpoints(run_dir) if (p / MANIFEST).is_file()]


def read_state(ckpt: str | Path) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint folder; a clear error if it is not one of ours or is damaged."""
    path = Path(ckpt) / STATE
    if not path.is_file():
        raise ValueError(
            f"{ckpt} is not a shareddiff checkpoint (no {STATE}); pass a folder under RUN/checkpoints/ or a run folder"
        )
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"checkpoint {ckpt} is damaged: {STATE} is not valid JSON ({err.msg})") from err
    if state.get("format") != FORMAT:
        raise ValueError(f"{ckpt} is not a {FORMAT} checkpoint (format={state.get('format')!r})")
    return state


def load_weights(ckpt: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(Path(ckpt) / "model.safetensors")
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"checkpoint {ckpt} has unreadable weights ({err}); use an earlier checkpoint") from err


class CheckpointRejected(ValueError):
    """A checkpoint folder that is not trusted: ``kind`` is "incomplete" (a file or the manifest missing) or
    "damaged" (a file that does not match the manifest); ``reason`` says which file and how."""

    def __init__(self, ckpt: Path, kind: str, reason: str, fix: str) -> None:
        super().__init__(f"checkpoint {ckpt} is {kind}: {reason}; {fix}")
        self.ckpt, self.kind, self.reason = ckpt, kind, reason


def read_manifest(ckpt: Path) -> dict[str, dict[str, Any]]:
    """``{file: {"bytes", "sha256"}}`` from the checkpoint's manifest; CheckpointRejected when it is missing
    (the trainer writes it last, so its absence means a partial or foreign copy) or not a manifest."""
    path = ckpt / MANIFEST
    if not path.is_file():
        raise _rejected(
            ckpt,
            {},
            "incomplete",
            MANIFEST,
            "is missing (the trainer writes it last, inside the rename: this folder is a partial or foreign copy, "
            "or was written before checkpoints had manifests)",
        )
    try:
        files = json.loads(path.read_text())["files"]
        if not all(isinstance(e, dict) and {"bytes", "sha256"} <= set(e) for e in files.values()):
            raise TypeError("an entry without bytes and sha256")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise _rejected(ckpt, {}, "damaged", MANIFEST, f"is not a valid manifest ({err})") from None
    return files


def verify_checkpoint(ckpt: Path, files: Iterable[str] | None = None) -> dict[str, Any]:
    """Check ``files`` of ``ckpt`` (default: every file) against its manifest's sizes and sha256, and return
    its state. Raises CheckpointRejected (a ValueError) naming the first problem: no ``state.json`` or
    manifest, a state of another step than the folder's name, a file missing, truncated or altered."""
    ckpt = Path(ckpt)
    if not (ckpt / STATE).is_file():
        raise _rejected(ckpt, {}, "incomplete", STATE, "is missing")
    try:
        state = json.loads((ckpt / STATE).read_text())
    except json.JSONDecodeError as err:
        raise _rejected(ckpt, {}, "damaged", STATE, f"is not valid JSON ({err.msg})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise _rejected(ckpt, {}, "damaged", STATE, f"is not of a {FORMAT} checkpoint (format={found!r})")
    folder_step = ckpt.name.removeprefix("step_")
    if ckpt.name.startswith("step_") and folder_step.isdigit() and state.get("step") != int(folder_step):
        raise _rejected(ckpt, state, "damaged", STATE, f"says step {state.get('step')}, the folder's name {ckpt.name}")
    manifest = read_manifest(ckpt)
    wanted = sorted(set(manifest) | set(FILES)) if files is None else list(files)
    for name in wanted:
        path = ckpt / name
        entry = manifest.get(name)
        if entry is None:
            raise _rejected(ckpt, state, "damaged", name, f"is not listed in {MANIFEST}")
        if not path.is_file():
            raise _rejected(ckpt, state, "incomplete", name, "is missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise _rejected(ckpt, state, "damaged", name, f"has {size} bytes, the manifest says {entry['bytes']}")
        if _sha256(path)[1] != entry["sha256"]:
            raise _rejected(ckpt, state, "damaged", name, "differs from the manifest (sha256)")
    return state


_EARLIER = "use an earlier checkpoint of the run, or copy this folder again whole from where it was written"


def _rejected(ckpt: Path, state: dict[str, Any], kind: str, name: str, what: str) -> CheckpointRejected:
    if name != "tokenizer.json":
        return CheckpointRejected(ckpt, kind, f"{name} {what}", _EARLIER)
    from shareddiff.data.tokenizer import BUNDLED_TOKENIZERS

    spec = state.get("run", {}).get("data", {}).get("tokenizer") or "bundled"
    source = BUNDLED_TOKENIZERS.get(spec, spec)
    fix = (
        f"copy the tokenizer this run was trained with (data.tokenizer: {source}, sha256 "
        f"{state.get('tokenizer_sha256', '?')[:12]}…) to {ckpt / 'tokenizer.json'}, or use an earlier checkpoint"
    )
    return CheckpointRejected(ckpt, kind, f"{name} {what}", fix)


def choose_checkpoint(
    run_dir: str | Path, files: Iterable[str] | None = None
) -> tuple[Path | None, list[CheckpointRejected]]:
    """(the newest checkpoint of ``run_dir`` whose ``files`` (default: all) match its manifest, or None; the
    newer ones rejected on the way, newest first). Each rejected folder is logged as a warning naming it,
    why, and the step used instead; none is deleted."""
    files = None if files is None else tuple(files)
    rejected: list[CheckpointRejected] = []
    chosen = None
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(ckpt, files)
        except CheckpointRejected as err:
            rejected.append(err)
            continue
        chosen = ckpt
        break
    instead = f"using {chosen.name} instead" if chosen else "no earlier checkpoint is complete"
    for err in rejected:
        log.warning("skipping %s checkpoint %s: %s; %s", err.kind, err.ckpt, err.reason, instead)
    return chosen, rejected


def latest_checkpoint(run_dir: str | Path, files: Iterable[str] | None = None) -> Path | None:
    """The newest checkpoint of ``run_dir`` whose ``files`` (default: all) match its manifest; newer incomplete
    or damaged ones are skipped with a logged warning that names them, why, and the one used instead."""
    return choose_checkpoint(run_dir, files)[0]


def rejected_summary(rejected: list[CheckpointRejected]) -> str:
    """'step_00000006: dcp/__0_0.distcp is missing; step_00000003: ...' for an error message."""
    return "; ".join(f"{err.ckpt.name}: {err.kind}, {err.reason}" for err in rejected)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or the newest checkpoint of a run folder, whose weights and tokenizer are intact
    (ValueError naming the problem otherwise)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist; pass a run folder or one of its checkpoints/step_* folders")
    if (path / STATE).is_file():
        _check_belongs_to_run(path, read_state(path))  # a foreign folder is named as such before its files are checked
        verify_checkpoint(path, WEIGHT_FILES)
        return path
    ckpt, rejected = choose_checkpoint(path, WEIGHT_FILES)
    if ckpt is None:
        if rejected:
            raise ValueError(
                f"no checkpoint of {path} is intact ({rejected_summary(rejected)}); if the run folder was copied "
                "from elsewhere, copy it again whole; otherwise train it again (nothing was deleted)"
            )
        raise ValueError(f"{path} holds no checkpoint; pass a run folder with checkpoints/ or a step_* folder")
    _check_belongs_to_run(ckpt, read_state(ckpt))
    return ckpt


def _check_belongs_to_run(ckpt: Path, state: dict[str, Any]) -> None:
    """A checkpoint inside a run folder (RUN/checkpoints/step_*) must have that run's model config (RUN's
    run_config.json), as ``train --resume`` requires: a step folder copied in from another run is refused
    (ValueError naming the differing fields) rather than used under this run's name."""
    if ckpt.parent.name != CHECKPOINTS or not (ckpt.parent.parent / "run_config.json").is_file():
        return
    run_dir = ckpt.parent.parent
    try:
        run_model = json.loads((run_dir / "run_config.json").read_text()).get("model_config") or {}
    except (json.JSONDecodeError, AttributeError):
        return  # a damaged record decides nothing; the checkpoint's own state stands
    saved = state.get("model_config") or {}
    diffs = [
        f"model.{k}: checkpoint {saved[k]!r}, run {v!r}"
        for k, v in run_model.items()
        if k != "notes" and k in saved and saved[k] != v
    ]
    if diffs:
        raise ValueError(
            f"checkpoint {ckpt} does not belong to the run {run_dir}: its model config differs from the run's "
            f"run_config.json ({'; '.join(diffs)}), as a step folder copied in from another run would; pass the "
            "folder of the run it came from, or move it out of this run's checkpoints/"
        )


def load_model(path: str | Path, device: str | torch.device = "cpu", attn_backend: str = "auto", text: bool = True):
    """(model in eval mode, Tokenizer, state) from a checkpoint or run folder. With ``text`` (the default: the
    caller feeds it the tokenizer's ids), a run trained on MQAR, whose embedding holds the task's synthetic
    vocabulary rather than the tokenizer's, is refused with a ValueError that names ``shareddiff eval mqar``."""
    from shareddiff.config import ModelConfig
    from shareddiff.data.tokenizer import Tokenizer
    from shareddiff.model import build_model

    ckpt = resolve_checkpoint(path)
    state = read_state(ckpt)
    if text and state.get("run", {}).get("data", {}).get("source") == "mqar":
        raise ValueError(
            f"{path} was trained on MQAR (synthetic vocabulary {state['model_config']['vocab_size']}), not on text: "
            f"the tokenizer's ids do not fit its embedding; use `shareddiff eval mqar {path}`"
        )
    config = ModelConfig.from_dict(state["model_config"])
    model = build_model(config, attn_backend=attn_backend)
    load_state_into(model, load_weights(ckpt), ckpt)
    tokenizer = Tokenizer(ckpt / "tokenizer.json")
    return model.to(device).eval(), tokenizer, state


def load_state_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``weights`` strictly, naming missing, unexpected or mis-shaped tensors on failure."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [
        f"{k}: {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"weights in {source} do not fit the model config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}"
        )
    model.load_state_dict(weights)
