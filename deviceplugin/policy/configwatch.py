"""Notice that the config file changed, the way a ConfigMap volume changes it: kubelet writes the new content into
a fresh timestamped directory and atomically swaps the `..data` symlink, so the path we were given never changes
but what it resolves to does.

The watch compares (resolved path, inode, mtime, size) on every poll, which catches a symlink swap, an in-place
rewrite and an editor's rename-over alike, and reads the content only when one of those moved; it reports a
change only when the content hash differs from what it reported last, so a swap to identical content (kubelet
refreshes projected volumes periodically) does not trigger a reload.

Whatever stands in the way (a missing file, a symlink loop, a permission error) is logged once per distinct
problem and the watch carries on: the next valid config must still be applied, without a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 1.0


@dataclass(frozen=True)
class FileStamp:
    """Cheap identity of what a path resolves to right now: when it is unchanged, the content is too."""

    resolved: Path
    inode: int
    mtime_ns: int
    size: int


def file_stamp(path: Path) -> FileStamp | None:
    """The stamp of the file `path` resolves to; None when it (or a link on the way) is missing. Other
    errors (ELOOP from a symlink loop, EACCES) raise OSError: the caller says what it skipped."""
    try:
        resolved = Path(os.path.realpath(path, strict=True))
        st = os.stat(resolved)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return FileStamp(resolved, st.st_ino, st.st_mtime_ns, st.st_size)


_CHUNK = 1 << 16


def content_digest(path: Path) -> str | None:
    """SHA-256 of the file, read in chunks so a huge file costs no memory here (the loader bounds the size);
    None when it went away meanwhile. Other errors raise OSError."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    return digest.hexdigest()


ConfigCallback = Callable[[Path], Awaitable[None] | None]


class ConfigWatch:
    """Polls `path` and calls `on_change(resolved_path)` when the content it resolves to changed.

    The callback gets the resolved file, so it reads one consistent version even if another swap follows.
    The content present when the watch starts (or at `baseline()`) is the baseline: it is not reported.
    A vanished or unreadable file is logged once per distinct problem and not reported; its return with new
    content is.
    """

    def __init__(self, path: Path, on_change: ConfigCallback, *, interval: float = DEFAULT_POLL_INTERVAL) -> None:
        self.path = Path(path)
        self._on_change = on_change
        self._interval = interval
        self._stamp: FileStamp | None = None
        self._digest: str | None = None
        self._problem: str | None = None  # what the last poll could not get past, logged once
        self._has_baseline = False

    def baseline(self) -> None:
        """Take the current content as known (call right after loading the config yourself)."""
        try:
            self._stamp = file_stamp(self.path)
            self._digest = content_digest(self._stamp.resolved) if self._stamp else None
        except OSError:
            self._stamp, self._digest = None, None  # the first poll says what is wrong
        self._has_baseline = True

    async def run(self) -> None:
        """Poll until cancelled."""
        if not self._has_baseline:
            self.baseline()
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except Exception as exc:  # anything unforeseen: skip this poll, never stop following the file
                self._skipped(f"config file {self.path} could not be checked ({exc!r})")

    async def check(self) -> None:
        """One poll: call back if the content behind the path changed since the last report."""
        try:
            stamp = file_stamp(self.path)
            digest = content_digest(stamp.resolved) if stamp is not None and stamp != self._stamp else None
        except OSError as exc:
            self._skipped(f"config file {self.path} cannot be read ({exc.strerror or exc})")
            self._stamp = None
            return
        if stamp is None:
            self._skipped(f"config file {self.path} is missing")
            self._stamp = None
            return
        self._problem = None
        if stamp == self._stamp:
            return
        if digest is None:  # swapped again between stat and read: the next poll sees the newer one
            return
        self._stamp = stamp
        if digest == self._digest:
            return
        self._digest = digest
        log.info("config file %s changed (now %s)", self.path, stamp.resolved, extra={"sha256": digest[:12]})
        try:
            result = self._on_change(stamp.resolved)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # The reload decides what an unusable config means; a crash there must not end the watch.
            log.exception("reloading config %s failed", stamp.resolved)

    def _skipped(self, problem: str) -> None:
        """Say once what stops us from reading the config; the next poll tries again."""
        if problem != self._problem:
            log.warning("%s; keeping the pools as they are, still watching", problem)
            self._problem = problem
