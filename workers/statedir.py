"""The state directory is its owner's alone: the directory 0700, every file in it 0600.

The conversations, the traces, the development token and the sandbox's endpoints live there;
another user of the machine must not read them. Files are created with their mode (never
created readable and tightened after: another user could open one in between). SQLite gives
a database's ``-wal`` and ``-shm`` files the mode of the database file, so creating the
database file 0600 before SQLite opens it covers all three.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path, *, tighten: bool = True) -> Path:
    """``path`` as a directory only its owner may enter (created 0700 with its missing
    parents); with ``tighten``, an existing one that others may read is made 0700, and the
    log says so."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if tighten:
        _tighten(path, DIR_MODE, "directory")
    return path


def private_file(path: Path) -> Path:
    """``path`` as a file only its owner may read: created empty, 0600, if missing; an
    existing one that others may read is made 0600 (the log says so)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    os.close(fd)
    _tighten(path, FILE_MODE, "file")
    return path


def write_private(path: Path, data: str) -> None:
    """Write ``data`` to ``path`` atomically (a reader never sees half of it), 0600."""
    partial = path.with_name(path.name + ".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as out:
        out.write(data)
    partial.chmod(FILE_MODE)  # an older partial file kept its mode
    partial.replace(path)


def _tighten(path: Path, mode: int, what: str) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if not current & 0o077:
        return
    try:
        path.chmod(mode)
    except OSError as exc:
        log.warning("%s %s is open to others (%04o) and stays so: %s", what, path, current, exc)
        return
    log.warning("%s %s was open to other users (%04o): now %04o", what, path, current, mode)
