"""The node daemon's side of the wire protocol (`cni.client` is the other): read one request from a connection,
with its file descriptors, within a deadline, refusing from the header what no real request can be.

Version 2 (`VNFIO-CNI/2`) carries a flags word saying which fds ride on the first byte (the pod netns, then the
runtime's mount namespace); version 1 (the netns fd only) is still read, so an older `vnfio` left on a node keeps
working against a newer daemon.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass

from cni.client import FD_MOUNT_NS, FD_NETNS, HEADER_SIZE, HEADER_SIZE_V1, MAGIC, MAGIC_V1, MAX_ENV, MAX_STDIN

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ProtocolError(Exception):
    """A request that does not follow the wire format in `cni.client`."""


def _decode_env(blob: bytes) -> dict[str, str]:
    env = {}
    for item in blob.split(b"\0") if blob else ():
        key, sep, value = item.partition(b"=")
        if not sep or not key:
            raise ProtocolError(f"malformed environment entry {item[:60]!r}")
        env[os.fsdecode(key)] = os.fsdecode(value)
    return env


@dataclass(frozen=True)
class Request:
    """One request as read from the socket; its fds (CLOEXEC) are the reader's to `close()`."""

    env: dict[str, str]
    stdin: bytes
    netns_fd: int | None
    mount_ns_fd: int | None

    def close(self) -> None:
        for fd in (self.netns_fd, self.mount_ns_fd):
            if fd is not None:
                os.close(fd)


def _recv(conn: socket.socket, size: int, deadline: float) -> bytes:
    """Up to `size` bytes, before `deadline` (time.monotonic) passes however slowly they come."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise ProtocolError("no complete request within the handshake deadline")
    conn.settimeout(left)
    try:
        return conn.recv(size)
    except TimeoutError:
        raise ProtocolError("no complete request within the handshake deadline") from None


def _fill(conn: socket.socket, data: bytearray, size: int, deadline: float) -> None:
    while len(data) < size:
        chunk = _recv(conn, min(size - len(data), 1 << 20), deadline)
        if not chunk:
            raise ProtocolError(f"connection closed after {len(data)} of {size} request bytes")
        data += chunk


def read_request(conn: socket.socket, deadline: float) -> Request | None:
    """One request, complete before `deadline` (time.monotonic); None if the peer hung up without a word (a liveness
    probe). Both wire versions of `cni.client`; a size beyond MAX_ENV/MAX_STDIN is refused from the header."""
    left = deadline - time.monotonic()
    conn.settimeout(max(left, 0.001))
    try:
        first, fds, flags, _ = socket.recv_fds(conn, HEADER_SIZE, 2, socket.MSG_CMSG_CLOEXEC)
    except TimeoutError:
        raise ProtocolError("no request within the handshake deadline") from None
    if not first and not fds:
        return None
    try:
        if flags & socket.MSG_CTRUNC:
            raise ProtocolError("more than two file descriptors sent")
        data = bytearray(first)
        _fill(conn, data, len(MAGIC), deadline)
        if data.startswith(MAGIC):
            header = HEADER_SIZE
            _fill(conn, data, header, deadline)
            fd_flags, env_size, stdin_size = struct.unpack(">III", data[len(MAGIC) : header])
        elif data.startswith(MAGIC_V1):
            header = HEADER_SIZE_V1
            _fill(conn, data, header, deadline)
            fd_flags = FD_NETNS if fds else 0
            env_size, stdin_size = struct.unpack(">II", data[len(MAGIC_V1) : header])
        else:
            raise ProtocolError(f"not a vnfio CNI request (starts {bytes(data[:16])!r})")
        if fd_flags & ~(FD_NETNS | FD_MOUNT_NS):
            raise ProtocolError(f"unknown request flags {fd_flags:#x}")
        named = bin(fd_flags).count("1")
        if len(fds) != named:
            raise ProtocolError(f"{len(fds)} file descriptor(s) sent, the request names {named}")
        if env_size > MAX_ENV or stdin_size > MAX_STDIN:
            raise ProtocolError(f"request too large (env {env_size} bytes, stdin {stdin_size} bytes; at most "
                                f"{MAX_ENV} and {MAX_STDIN})")
        total = header + env_size + stdin_size
        if len(data) > total:
            raise ProtocolError(f"{len(data) - total} bytes after the request")
        _fill(conn, data, total, deadline)
        env = _decode_env(bytes(data[header : header + env_size]))
        given = iter(fds)
        netns_fd = next(given) if fd_flags & FD_NETNS else None
        mount_ns_fd = next(given) if fd_flags & FD_MOUNT_NS else None
        return Request(env, bytes(data[header + env_size :]), netns_fd, mount_ns_fd)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected, as the kernel recorded them at connect()."""
    return _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
