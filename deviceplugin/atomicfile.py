"""Whole-file writes that a reader never sees half done: the CDI specs and device-info files a runtime or Multus
may read at any moment, and the DRA checkpoint a restart must find intact."""

from __future__ import annotations

import os
import tempfile
from contextlib import suppress
from pathlib import Path


def write_atomically(target: Path, text: str, *, mode: int = 0o644, sync_dir: bool = False) -> None:
    """Write `text` to a temporary file beside `target`, fsync it, give it `mode` and rename it over `target`: a
    reader sees the old file or the new one. `sync_dir` also syncs the directory, so the rename itself survives a
    power cut (the checkpoint needs that; files that are rewritten on every rescan do not)."""
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.rename(temp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise
    if sync_dir:
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
