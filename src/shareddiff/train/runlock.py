"""One training run per run folder: an OS-level lock on ``RUN/.lock``, held for the run's lifetime.

The lock is ``fcntl.flock`` on an open file, so the kernel releases it when the process ends in any way
(exit, exception, SIGKILL): a stale lock file never blocks a later run. The holder writes its pid, host,
start time and command line into the file, and a refused run names them.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

LOCK_FILE = ".lock"


class RunFolderBusy(ValueError):
    """Another live process holds the run folder's lock; ``holder`` describes it (pid, host, start, command)."""

    def __init__(self, message: str, holder: str = "") -> None:
        super().__init__(message)
        self.holder = holder


class RunLock:
    """``with RunLock(run_dir):`` holds ``run_dir/.lock`` (exclusive, non-blocking) until the block ends.

    Raises RunFolderBusy naming the holder (pid, host, start time, command) if another process has it.
    The file is left in place on release: removing it would let two runs lock two different files.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderBusy(
                f"{self.path.parent} is in use by another training run ({holder}); wait for it to finish, "
                "stop it, or set train.out_dir to another folder",
                holder,
            ) from None
        except OSError as err:  # a filesystem without locks (some network mounts): run, but say so
            os.close(fd)
            warnings.warn(
                f"cannot lock {self.path} ({err.strerror}): nothing stops a second run from writing into "
                f"{self.path.parent} at the same time",
                stacklevel=2,
            )
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_info()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder_info() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join(sys.argv),
    }


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or not info:
        return "holder not yet recorded: it is just starting"
    return (
        f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}: "
        f"{info.get('command', '?')}"
    )
