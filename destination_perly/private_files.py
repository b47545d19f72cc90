"""Files that hold customer data or secrets (the store, the HTML report, configs): readable by their
owner only, whatever the umask. Such a file made before Perly did this (a store left 0644) is made
owner-only when Perly next opens or rewrites it, with a notice; directories that exist keep their mode."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
# Group and others: any of their permission bits makes a file shared.
SHARED_BITS = 0o077

log = logging.getLogger("perly.files")


def make_private_dirs(directory: Path) -> None:
    """Creates `directory` and its missing parents, each readable by the owner only."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    for created in reversed(missing):
        created.mkdir(mode=PRIVATE_DIR, exist_ok=True)


def create_private_file(path: Path) -> None:
    """Creates `path` empty and owner-only when it does not exist yet (SQLite then keeps that mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        pass


def _shared_mode(path: Path) -> os.stat_result | None:
    """The file's status when group or others have any access to it; None otherwise, or when absent."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status if status.st_mode & SHARED_BITS else None


def _notice(path: Path, was: int, now: int) -> None:
    # Warning level: every process shows it (the connectors' LOG, the receiver's log, the report's stderr).
    log.warning("%s was open to other users (mode %04o): it is owner-only now (%04o)", path, was, now)


def tighten_existing(*paths: Path) -> None:
    """Makes each existing file that group or others may access owner-only (the owner's bits kept), with
    a notice naming it. A file this user does not own, or cannot chmod, is left as it is, with a warning."""
    for path in paths:
        status = _shared_mode(path)
        if status is None:
            continue
        mode = stat.S_IMODE(status.st_mode)
        if status.st_uid != os.geteuid():
            log.warning(
                "%s is open to other users (mode %04o) but owned by another user: left as it is",
                path,
                mode,
            )
            continue
        private = mode & ~SHARED_BITS
        try:
            os.chmod(path, private)
        except OSError as exc:
            log.warning(
                "%s is open to other users (mode %04o) and could not be made owner-only: %s",
                path,
                mode,
                exc.strerror,
            )
            continue
        _notice(path, mode, private)


def write_private(path: Path, data: bytes) -> Path:
    """Replaces `path` with `data` atomically (a reader never sees half a file), owner-only from the
    first byte: the temporary file is created 0600, not chmod-ed after it was written."""
    replaced = _shared_mode(path)  # an older file that others could read: said so once it is replaced
    tmp = path.with_name(path.name + ".tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(descriptor, PRIVATE_FILE)  # a leftover .tmp from an older run may have another mode
        file.write(data)
    os.replace(tmp, path)
    if replaced is not None:
        _notice(path, stat.S_IMODE(replaced.st_mode), PRIVATE_FILE)
    return path


def private_temp_file(text: str, prefix: str) -> str:
    """A new temporary file holding `text`, owner-only (mkstemp creates it 0600); the caller removes it."""
    descriptor, path = tempfile.mkstemp(prefix=prefix)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    return path
