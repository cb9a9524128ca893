"""Notice a kubelet restart the two ways kubelet shows it: our own socket removed, and `kubelet.sock` created anew.

At start kubelet deletes every socket in the device-plugin directory and then creates a fresh `kubelet.sock`.
Either signal alone can be missed (a plugin that starts while kubelet is down has no socket to lose yet; a
kubelet that crashes keeps its old socket file until it starts again), so both are watched. A re-created
`kubelet.sock` often gets the inode its predecessor had, so identity is inode *and* ctime.

Polling two-or-so `stat` calls every 100 ms costs nothing and keeps re-registration well inside one second;
it also works on every filesystem a hostPath can be, where inotify sometimes does not.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KUBELET_SOCKET = "kubelet.sock"
DEFAULT_POLL_INTERVAL = 0.1


def kubelet_socket(plugin_dir: Path) -> Path:
    """Where kubelet serves Registration, in the device-plugin directory."""
    return Path(plugin_dir) / KUBELET_SOCKET


@dataclass(frozen=True)
class FileIdentity:
    """What tells one incarnation of a file from the next one at the same path."""

    device: int
    inode: int
    ctime_ns: int


def file_identity(path: Path) -> FileIdentity | None:
    """The identity of the file at `path` (not following a symlink); None when there is none."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return FileIdentity(st.st_dev, st.st_ino, st.st_ctime_ns)


KubeletCallback = Callable[[], Awaitable[None] | None]
SocketCallback = Callable[[str], Awaitable[None] | None]


class KubeletWatch:
    """Polls the device-plugin directory and calls back when kubelet restarted.

    `on_kubelet_restart()` fires when `kubelet.sock` appears or is replaced (not for the one found at start:
    the daemon registers on its own then). `on_socket_removed(name)` fires once when a socket we `watch()`
    disappears or is replaced by another file; watch it again after serving it anew.
    """

    def __init__(
        self,
        plugin_dir: Path,
        *,
        on_kubelet_restart: KubeletCallback,
        on_socket_removed: SocketCallback,
        interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        self.plugin_dir = Path(plugin_dir)
        self._on_kubelet_restart = on_kubelet_restart
        self._on_socket_removed = on_socket_removed
        self._interval = interval
        self._kubelet: FileIdentity | None = None
        self._ours: dict[str, FileIdentity | None] = {}
        self._started = False

    @property
    def kubelet_socket(self) -> Path:
        return kubelet_socket(self.plugin_dir)

    @property
    def kubelet_present(self) -> bool:
        return self._kubelet is not None

    def watch(self, name: str) -> None:
        """Start watching our socket `name` as it is now (call right after serving it). A socket already gone
        (kubelet deleted it between our bind and this call) is reported as removed at the next check."""
        self._ours[name] = file_identity(self.plugin_dir / name)

    def unwatch(self, name: str) -> None:
        """Stop watching `name` (we remove it ourselves: a pool went away or the daemon stops)."""
        self._ours.pop(name, None)

    def watched(self) -> tuple[str, ...]:
        return tuple(sorted(self._ours))

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await self.check()
            await asyncio.sleep(self._interval)

    async def check(self) -> None:
        """One poll: compare what is on disk with what we saw last, and call back for every change."""
        kubelet = file_identity(self.kubelet_socket)
        previous, self._kubelet = self._kubelet, kubelet
        first, self._started = not self._started, True
        removed = []
        for name, identity in list(self._ours.items()):
            if identity is None or file_identity(self.plugin_dir / name) != identity:
                del self._ours[name]
                removed.append(name)
        for name in removed:
            log.info("socket %s was removed (kubelet restarted?)", name, extra={"socket": name})
            await self._call(self._on_socket_removed, name)
        if kubelet is None and previous is not None:
            log.info("kubelet.sock disappeared: kubelet is down", extra={"socket": str(self.kubelet_socket)})
        if kubelet is not None and kubelet != previous and not first:
            log.info("kubelet.sock was created anew: kubelet restarted", extra={"inode": kubelet.inode})
            await self._call(self._on_kubelet_restart)

    @staticmethod
    async def _call(callback: Callable[..., Awaitable[None] | None], *args: str) -> None:
        try:
            result = callback(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # The next restart must still be noticed: a failing handler cannot end the watch.
            log.exception("handling a kubelet restart signal failed")
