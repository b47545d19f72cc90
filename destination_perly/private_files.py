"""Files that hold customer data or secrets (the store, the HTML report, configs): readable by their
owner only, whatever the umask. Files and directories that already exist keep their mode."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


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


def write_private(path: Path, data: bytes) -> Path:
    """Replaces `path` with `data` atomically (a reader never sees half a file), owner-only from the
    first byte: the temporary file is created 0600, not chmod-ed after it was written."""
    tmp = path.with_name(path.name + ".tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(descriptor, PRIVATE_FILE)  # a leftover .tmp from an older run may have another mode
        file.write(data)
    os.replace(tmp, path)
    return path


def private_temp_file(text: str, prefix: str) -> str:
    """A new temporary file holding `text`, owner-only (mkstemp creates it 0600); the caller removes it."""
    descriptor, path = tempfile.mkstemp(prefix=prefix)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    return path
