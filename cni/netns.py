"""Entering a pod's network namespace without disturbing the calling thread.

pyroute2's `IPRoute(netns=path)` forks a child to create its socket (~7.5 ms per handle here). Instead a short-lived
thread `setns()`es into the target (network namespaces are per thread), creates the netlink socket or writes the
sysctl there, and exits; the socket stays bound to that namespace. The caller's thread never changes namespace,
so concurrent requests in the node daemon cannot leak into each other. A `Netlink` holds no state between
requests: nothing to share between the daemon's threads, nothing inherited across its fork.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from cni.errors import INVALID_NETNS, CniError

if TYPE_CHECKING:
    from pyroute2 import IPRoute

    from cni.rtnl import Rtnl

log = logging.getLogger(__name__)
T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_NETLINK_ROUTE = 0
_libc_lock = threading.Lock()
_libc: ctypes.CDLL | None = None


class NetnsGone(Exception):
    """The netns path does not exist (any more): DEL treats this as already cleaned up."""


def _setns(fd: int) -> None:
    global _libc
    with _libc_lock:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        libc = _libc
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_netns(path: str) -> int:
    """An O_RDONLY fd on the netns at `path`; `NetnsGone` if it does not exist, code 8 if it is not a netns.

    Only a regular file is opened (nsfs files are; devices, FIFOs and sockets are not), and without blocking, so no
    open has a side effect or waits: a FIFO would block the open until a writer came (issue 17, finding 11)."""
    import stat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise CniError(INVALID_NETNS, f"{path!r} is not a network namespace")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError as exc:
        raise NetnsGone(path) from exc
    except OSError as exc:
        raise CniError(INVALID_NETNS, f"failed to open netns {path!r}: {exc.strerror}") from exc
    try:
        check_netns_fd(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_netns_fd(fd: int, path: str) -> None:
    """Refuse a fd that is not a network namespace, or is the plugin's own (the reference skel's code 8)."""
    st = os.fstat(fd)
    own = os.stat("/proc/self/ns/net")
    if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
        raise CniError(INVALID_NETNS, f"netns {path!r} is the plugin's own network namespace")
    import fcntl

    ns_get_nstype = 0xB703  # NS_GET_NSTYPE = _IO(0xb7, 0x3): only nsfs files answer it
    try:
        nstype = fcntl.ioctl(fd, ns_get_nstype)
    except OSError as exc:
        raise CniError(INVALID_NETNS, f"{path!r} is not a network namespace: {exc.strerror}") from exc
    if nstype != _CLONE_NEWNET:
        raise CniError(INVALID_NETNS, f"{path!r} is not a network namespace")


def run_in_netns(fd: int, func: Callable[[], T]) -> T:
    """Run `func` in a fresh thread that has joined the netns `fd`; return its value or raise its exception."""
    outcome: dict[str, object] = {}

    def body() -> None:
        try:
            _setns(fd)
            outcome["value"] = func()
        except BaseException as exc:  # handed over to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=body, name="vnfio-netns", daemon=True)
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


class Netlink:
    """One namespace's netlink: `rtnl` (raw, `cni.rtnl`) for the calls every ADD makes, and a pyroute2 `IPRoute`,
    made on first use of `iproute` (~0.4 ms, plus a netns thread for a pod), for everything else."""

    def __init__(self, rtnl: Rtnl, netns_fd: int | None) -> None:
        self.rtnl = rtnl
        self._netns_fd = netns_fd
        self._iproute: IPRoute | None = None

    @property
    def iproute(self) -> IPRoute:
        if self._iproute is None:
            from pyroute2 import IPRoute

            if self._netns_fd is None:
                self._iproute = IPRoute(groups=0)
            else:
                sock_fd = run_in_netns(self._netns_fd, _netlink_socket)
                try:
                    self._iproute = IPRoute(fileno=sock_fd, groups=0)
                except BaseException:
                    os.close(sock_fd)
                    raise
        return self._iproute

    def close(self) -> None:
        self.rtnl.close()
        if self._iproute is not None:
            self._iproute.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _netlink_socket() -> int:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE).detach()


def netlink_in(fd: int) -> Netlink:
    """Netlink in the netns `fd`, which must stay open while it is used (the caller closes it)."""
    from cni.rtnl import Rtnl

    sock_fd = run_in_netns(fd, _netlink_socket)
    try:
        return Netlink(Rtnl(fileno=sock_fd), fd)
    except BaseException:
        os.close(sock_fd)
        raise


def host_netlink() -> Netlink:
    """Netlink in the namespace the plugin runs in (the host)."""
    from cni.rtnl import Rtnl

    return Netlink(Rtnl(), None)


def write_sysctl(path: str, value: str, missing_ok: bool = False) -> None:
    """Set `/proc/sys/<path>` in the current thread's netns (call through `run_in_netns` for a pod).

    A value that is already set is not written again, as the reference's `EnableForward` does: in a container
    `/proc/sys` is mounted read-only, and a node whose forwarding is already on must not fail every ADD for it.
    With `missing_ok`, a missing or read-only entry is logged and skipped (best-effort pod tuning)."""
    full = f"/proc/sys/{path}"
    try:
        with open(full) as f:
            if f.read().strip() == value:
                return
        with open(full, "w") as f:
            f.write(value)
    except FileNotFoundError:
        if not missing_ok:
            raise
    except OSError as exc:
        if exc.errno == errno.EROFS and missing_ok:
            log.warning("sysctl %s=%s not set: /proc/sys is read-only here", path, value)
            return
        if exc.errno == errno.EROFS:
            raise OSError(exc.errno, f"cannot set sysctl {path}={value}: /proc/sys is read-only here") from exc
        raise


def read_sysctl(path: str) -> str:
    with open(f"/proc/sys/{path}") as f:
        return f.read().strip()
