"""Atomic writes: an interrupted run never leaves a half-written model, metrics or report behind."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
STAGING_PREFIX = ".incomplete-"  # staged_folders' hidden folder next to the destination
STAGING_OWNER = ".owner"  # in it: "pid@host" of the run building it, so that the next run knows a dead one's


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed over `path` in one step.

    The file's bytes reach the disk before the rename and the rename itself after it (fsync of the file, then of
    its folder), so neither a crash nor a power cut can leave an empty or half-written `path`: it holds the old
    content or the new one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a folder cannot be opened on Windows, where the rename is durable on its own
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_folders(parent: str | os.PathLike, names: list[str]) -> Iterator[Path]:
    """Yield an empty hidden folder inside `parent` to build the folders `names` in; on success each is renamed
    into `parent` (never over a folder with anything in it). On any failure or Ctrl-C, nothing of it is left.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(parent)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
    (staging / STAGING_OWNER).write_text(f"{os.getpid()}@{socket.gethostname()}\n")
    moved: list[Path] = []
    try:
        yield staging
        for name in names:
            target = parent / name
            if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
                target.rmdir()  # an empty folder left by hand; rename cannot replace it everywhere
            os.rename(staging / name, target)
            moved.append(target)
    except BaseException:
        for target in moved:
            shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging(parent: Path) -> list[Path]:
    """Remove the hidden staging folders that a killed run (SIGKILL, power loss: no cleanup ran) left in `parent`:
    those whose owner process is gone on this host. A folder of a run still going, or of another host, is kept
    and named; one without an owner file (an older version's) is removed once an hour old."""
    removed = []
    for folder in sorted(parent.glob(STAGING_PREFIX + "*")):
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:
            owner = (folder / STAGING_OWNER).read_text().strip()
        except OSError:
            owner = None
        pid, _, host = (owner or "").partition("@")
        if owner is None:
            stale = time.time() - folder.stat().st_mtime > 3600
        elif host == socket.gethostname() and pid.isdigit():
            stale = not _process_exists(int(pid))
        else:
            stale = False
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            log.warning(
                "removed %s, left by an interrupted run (%s)",
                folder,
                f"process {pid} is gone" if owner else "over an hour old",
            )
            removed.append(folder)
        else:
            log.warning(
                "%s is another run's unfinished copy (%s); remove it by hand if no run is going",
                folder,
                owner or "no owner recorded",
            )
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def project_root(start: Path | None = None) -> Path:
    """The repository root; inside a `dvc exp run --temp` copy, the root of the repository it was copied from."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir() or (candidate / ".git").exists():
            return candidate
    return here


def project_path(path: str | os.PathLike) -> Path:
    """A relative path taken from the project root (see project_root); absolute paths unchanged."""
    return Path(path) if Path(path).is_absolute() else project_root() / path
