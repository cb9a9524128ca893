"""Kubelet restart signals: our socket removed, kubelet.sock re-created (inode and ctime), over real unix sockets."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from deviceplugin.kubelet.dpapi.kubeletwatch import KubeletWatch, file_identity


class Recorder:
    def __init__(self) -> None:
        self.restarts = 0
        self.removed: list[str] = []
        self.changed = asyncio.Event()

    def on_kubelet_restart(self) -> None:
        self.restarts += 1
        self.changed.set()

    async def on_socket_removed(self, name: str) -> None:
        self.removed.append(name)
        self.changed.set()


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "device-plugins"
    d.mkdir()
    yield d


def _serve(path: Path) -> socket.socket:
    """A listening unix socket at `path`, as kubelet or a plugin server leaves it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    return sock


def _watch(plugin_dir: Path, rec: Recorder) -> KubeletWatch:
    return KubeletWatch(plugin_dir, on_kubelet_restart=rec.on_kubelet_restart, on_socket_removed=rec.on_socket_removed)


def test_socket_found_at_start_is_not_a_restart(plugin_dir: Path) -> None:
    rec = Recorder()
    kubelet = _serve(plugin_dir / "kubelet.sock")
    watch = _watch(plugin_dir, rec)
    asyncio.run(watch.check())
    asyncio.run(watch.check())
    kubelet.close()
    assert rec.restarts == 0
    assert watch.kubelet_present


def test_recreated_kubelet_socket_is_a_restart(plugin_dir: Path) -> None:
    rec = Recorder()
    path = plugin_dir / "kubelet.sock"
    old = _serve(path)
    watch = _watch(plugin_dir, rec)
    asyncio.run(watch.check())
    path.unlink()
    new = _serve(path)  # while the old one is still open, so the inode cannot be reused here
    old.close()
    asyncio.run(watch.check())
    asyncio.run(watch.check())
    new.close()
    assert rec.restarts == 1


def test_same_inode_new_ctime_is_a_restart(plugin_dir: Path) -> None:
    """Inodes are reused: a socket with the inode of its predecessor is still new when its ctime moved."""
    rec = Recorder()
    path = plugin_dir / "kubelet.sock"
    kubelet = _serve(path)
    watch = _watch(plugin_dir, rec)
    asyncio.run(watch.check())
    before = file_identity(path)
    os.chmod(path, 0o600)  # moves ctime, keeps the inode: what a reused inode looks like to stat
    after = file_identity(path)
    assert before is not None and after is not None
    assert (before.inode, before.device) == (after.inode, after.device)
    asyncio.run(watch.check())
    kubelet.close()
    if before.ctime_ns == after.ctime_ns:
        pytest.skip("filesystem ctime did not move within this test")
    assert rec.restarts == 1


def test_kubelet_coming_up_is_a_restart(plugin_dir: Path) -> None:
    rec = Recorder()
    watch = _watch(plugin_dir, rec)
    asyncio.run(watch.check())
    assert not watch.kubelet_present
    kubelet = _serve(plugin_dir / "kubelet.sock")
    asyncio.run(watch.check())
    kubelet.close()
    assert rec.restarts == 1
    assert watch.kubelet_present


def test_kubelet_going_down_is_not_a_restart(plugin_dir: Path) -> None:
    rec = Recorder()
    path = plugin_dir / "kubelet.sock"
    kubelet = _serve(path)
    watch = _watch(plugin_dir, rec)
    asyncio.run(watch.check())
    kubelet.close()
    path.unlink()
    asyncio.run(watch.check())
    assert rec.restarts == 0
    assert not watch.kubelet_present


def test_removed_own_socket_fires_once(plugin_dir: Path) -> None:
    rec = Recorder()
    ours = _serve(plugin_dir / "vnfio-a.sock")
    other = _serve(plugin_dir / "vnfio-b.sock")
    watch = _watch(plugin_dir, rec)
    watch.watch("vnfio-a.sock")
    watch.watch("vnfio-b.sock")
    asyncio.run(watch.check())
    (plugin_dir / "vnfio-a.sock").unlink()
    asyncio.run(watch.check())
    asyncio.run(watch.check())
    assert rec.removed == ["vnfio-a.sock"]
    assert watch.watched() == ("vnfio-b.sock",)
    ours.close()
    other.close()


def test_replaced_own_socket_counts_as_removed(plugin_dir: Path) -> None:
    rec = Recorder()
    path = plugin_dir / "vnfio-a.sock"
    first = _serve(path)
    watch = _watch(plugin_dir, rec)
    watch.watch("vnfio-a.sock")
    path.unlink()
    second = _serve(path)  # someone else bound the name: our server no longer answers there
    asyncio.run(watch.check())
    first.close()
    second.close()
    assert rec.removed == ["vnfio-a.sock"]


def test_socket_gone_before_watch_counts_as_removed(plugin_dir: Path) -> None:
    """Kubelet may delete our socket between our bind and our watch(): that must still be noticed."""
    rec = Recorder()
    watch = _watch(plugin_dir, rec)
    watch.watch("vnfio-a.sock")
    asyncio.run(watch.check())
    asyncio.run(watch.check())
    assert rec.removed == ["vnfio-a.sock"]


def test_unwatched_socket_removal_is_silent(plugin_dir: Path) -> None:
    rec = Recorder()
    ours = _serve(plugin_dir / "vnfio-a.sock")
    watch = _watch(plugin_dir, rec)
    watch.watch("vnfio-a.sock")
    watch.unwatch("vnfio-a.sock")
    (plugin_dir / "vnfio-a.sock").unlink()
    asyncio.run(watch.check())
    ours.close()
    assert rec.removed == []


def test_running_watch_sees_kubelet_restart_sequence(plugin_dir: Path) -> None:
    """The whole kubelet start sequence under a running watch: every socket deleted, kubelet.sock created."""
    rec = Recorder()
    kubelet_path = plugin_dir / "kubelet.sock"

    async def scenario() -> None:
        kubelet = _serve(kubelet_path)
        ours = _serve(plugin_dir / "vnfio-a.sock")
        watch = _watch(plugin_dir, rec)
        watch.watch("vnfio-a.sock")
        task = asyncio.create_task(watch.run())
        try:
            await asyncio.sleep(0)
            for path in (plugin_dir / "vnfio-a.sock", kubelet_path):
                path.unlink()
            old, kubelet = kubelet, _serve(kubelet_path)
            old.close()
            while not (rec.removed and rec.restarts):
                rec.changed.clear()
                await asyncio.wait_for(rec.changed.wait(), 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            kubelet.close()
            ours.close()

    asyncio.run(scenario())
    assert rec.removed == ["vnfio-a.sock"]
    assert rec.restarts == 1


def test_failing_callback_keeps_watching(plugin_dir: Path) -> None:
    calls: list[str] = []

    def explode(name: str) -> None:
        calls.append(name)
        raise RuntimeError("re-serve failed")

    socks = [_serve(plugin_dir / n) for n in ("vnfio-a.sock", "vnfio-b.sock")]
    watch = KubeletWatch(plugin_dir, on_kubelet_restart=lambda: None, on_socket_removed=explode)
    watch.watch("vnfio-a.sock")
    watch.watch("vnfio-b.sock")
    (plugin_dir / "vnfio-a.sock").unlink()
    asyncio.run(watch.check())
    (plugin_dir / "vnfio-b.sock").unlink()
    asyncio.run(watch.check())
    for s in socks:
        s.close()
    assert calls == ["vnfio-a.sock", "vnfio-b.sock"]
