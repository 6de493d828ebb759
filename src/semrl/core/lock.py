"""An exclusive lock on an output directory, so that two `semrl run` (or sweeps, or transfers)
never train into the same folder at once.

The lock is a file created with O_CREAT|O_EXCL that holds the holder's pid and host. A lock whose
pid no longer exists on this host is stale (its process was killed): it is taken over, with a
message. A lock held by a live process, or by another host, is refused with a LockError naming the
holder and the file to delete if that holder is known to be gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from semrl.core.dist import is_main_process
from semrl.core.errors import SemrlError

_held: set[Path] = set()  # locks this process holds (a nested acquisition of one is a no-op)


class LockError(SemrlError):
    """The output directory is in use by another semrl process."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read_holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _try_create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
    return True


@contextlib.contextmanager
def directory_lock(lock_file: str | Path, what: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold `lock_file` (inside the directory it protects) for the duration of the block.

    Raises LockError when another live process on this host, or a process on another host, holds
    it. `what` names the directory in messages (e.g. "run directory runs/x"). Under a multi-process
    launch only the main process takes it; the others work under its lock.
    """
    if not is_main_process():
        yield
        return
    path = Path(lock_file).resolve()
    if path in _held:
        yield
        return
    for _ in range(3):  # a stale lock taken over by someone else between our read and unlink
        if _try_create(path):
            break
        holder = _read_holder(path)
        host = socket.gethostname()
        if holder is None:
            # Being written by its creator this instant, or damaged: never guess, let the user decide.
            raise LockError(
                f"{path}: the {what} is locked, but the lock file is unreadable. If no semrl process uses it, "
                f"delete {path} and run again."
            )
        pid, holder_host = holder.get("pid"), holder.get("host")
        if holder_host == host and isinstance(pid, int) and not _pid_alive(pid):
            log(f"[lock] {path}: taking over a stale lock of process {pid} on {host}, which is gone")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        raise LockError(
            f"{path}: the {what} is in use by process {pid} on host {holder_host}. Wait for it to finish, or use "
            f"another --out directory; if that process is gone, delete {path}."
        )
    else:
        raise LockError(f"{path}: could not take the lock of the {what}; another process keeps taking it")
    _held.add(path)
    try:
        yield
    finally:
        _held.discard(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def locked_directory(
    root: str | Path, lock_file: str | Path, what: str, log: Callable[[str], None] = print
) -> Iterator[None]:
    """Create `root` if it is missing and hold `lock_file` inside it for the duration of the block.

    When the block fails and this call created `root`, an empty `root` is removed again, so that a
    first run stopped by bad input (a missing data file, a bad key) leaves no empty folder behind;
    a folder that holds anything (a stage's checkpoints, a prepared split) stays, to resume from.
    """
    root = Path(root)
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        with directory_lock(lock_file, what, log=log):
            yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):  # not empty, or already gone: keep it as it is
                root.rmdir()
        raise
