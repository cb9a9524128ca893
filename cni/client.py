"""Forward one CNI invocation to the node daemon, or run it in-process when no daemon takes it.

This is the hot start-up path of every pod start, so it uses only modules that are built into the interpreter
(`_socket`, `posix`, `sys`): `import socket` alone costs ~10 ms (cni.md 4.4). The bundled host executable
execs this file's source directly, so it must not import anything from the `cni` package either, until it falls
back. The wire format lives here, on the side that must stay light; the daemon imports it.

Wire format (a unix stream socket, one request per connection):

    client -> daemon  MAGIC, u32 flags, u32 env length, u32 stdin length, env ("K=V" joined by NUL), stdin;
                      file descriptors ride on the first byte as SCM_RIGHTS, those the flags name, in this order:
                      FD_NETNS the opened pod netns (none when CNI_NETNS is unset or absent), FD_MOUNT_NS our own
                      mount namespace (the runtime's), which delegated IPAM plugins run in
    daemon -> client  ACCEPTED, or REFUSED + u32 length + message
    client -> daemon  GO
    daemon -> client  u32 exit code, u32 stdout length, stdout

The daemon also takes the first version (MAGIC_V1, no flags word, at most the netns fd), so an older `vnfio`
left on a node keeps working against a newer daemon. A daemon sends ACCEPTED only once a worker is free to run
the request; until then the client's timeout runs, and after it the client does the work itself.

Why the ACCEPTED/GO handshake: the client may give up on a silent daemon and do the work itself, but a
request must never run twice (a second ADD would collide with the first). The daemon starts the work only
after it has read GO, and the client sends GO only before its deadline; after GO it waits for the answer
however long it takes (the runtime has its own timeout). A client that gives up closes without GO, and the
daemon then drops the request unrun. If the daemon dies after GO the outcome is unknown: DEL, CHECK, GC
and STATUS are safe to repeat and run in-process; ADD answers code 11 (try again), and the runtime's DEL
cleans up whatever the dead daemon had made.
"""

from __future__ import annotations

import _socket
import posix
import sys

DEFAULT_SOCKET = "/run/vnfio/cni.sock"
SOCKET_ENV = "VNFIO_CNI_SOCKET"
TIMEOUT_ENV = "VNFIO_CNI_TIMEOUT"  # seconds the daemon has to accept a request before we do it ourselves
DEFAULT_TIMEOUT = 5.0
FORWARDED = ("ADD", "DEL", "CHECK", "GC", "STATUS")

MAGIC = b"VNFIO-CNI/2\n"
MAGIC_V1 = b"VNFIO-CNI/1\n"  # no flags word; the one fd, if any, is the netns
FD_NETNS, FD_MOUNT_NS = 0x1, 0x2  # request flags: which fds ride along, in this order
ACCEPTED = b"A"
REFUSED = b"R"
GO = b"G"
HEADER_SIZE = len(MAGIC) + 12
HEADER_SIZE_V1 = len(MAGIC_V1) + 8
# What a request can legitimately be, and all a daemon buffers per connection: a runtime's environment is a few
# KiB, a network config (with prevResult and runtimeConfig) rarely 64 KiB. The daemon refuses anything larger
# from the header alone; `vnfio` refuses a larger config itself (code 6).
MAX_ENV = 256 << 10
MAX_STDIN = 1 << 20
MOUNT_NS = b"/proc/self/ns/mnt"
TRY_AGAIN = 11  # cni.errors.TRY_AGAIN, repeated to keep cni.errors (and json) off this path


class NotForwarded(Exception):
    """The daemon did not take the request (absent, refused, silent): doing the work in-process is safe."""


class Refused(NotForwarded):
    """The daemon read who we are and said no (not root): worth telling the operator on stderr."""


class DaemonLost(Exception):
    """The daemon took the request, then went away before answering: the work may be half done."""


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def encode_request(environ: dict[bytes, bytes], stdin: bytes, flags: int = 0) -> bytes:
    env = b"\0".join(key + b"=" + value for key, value in environ.items())
    return MAGIC + u32(flags) + u32(len(env)) + u32(len(stdin)) + env + stdin


def encode_reply(code: int, stdout: bytes) -> bytes:
    return u32(code & 0xFFFFFFFF) + u32(len(stdout)) + stdout


def encode_refusal(message: str) -> bytes:
    data = message.encode()
    return REFUSED + u32(len(data)) + data


def recv_exact(sock: _socket.socket, size: int) -> bytes:
    """Exactly `size` bytes, or EOFError if the peer closes first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def forward(
    environ: dict[bytes, bytes], stdin: bytes, netns_fd: int | None, socket_path: str, timeout: float,
    mount_ns_fd: int | None = None,
) -> tuple[int, bytes]:
    """Run the request in the daemon; NotForwarded if it did not start it, DaemonLost if it died after."""
    env_size = sum(len(key) + len(value) + 2 for key, value in environ.items())
    if env_size > MAX_ENV or len(stdin) > MAX_STDIN:
        raise NotForwarded(f"the request (environment ~{env_size} bytes, config {len(stdin)} bytes) is larger than "
                           f"the daemon takes ({MAX_ENV} and {MAX_STDIN})")
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
            fds = [fd for fd in (netns_fd, mount_ns_fd) if fd is not None]
            flags = (FD_NETNS if netns_fd is not None else 0) | (FD_MOUNT_NS if mount_ns_fd is not None else 0)
            data = encode_request(environ, stdin, flags)
            rights = []
            if fds:
                payload = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
                rights.append((_socket.SOL_SOCKET, _socket.SCM_RIGHTS, payload))
            try:
                sent = sock.sendmsg([data], rights)
                if sent < len(data):
                    sock.sendall(data[sent:])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon may have refused us before reading: its answer is still there to read
            answer = recv_exact(sock, 1)
            if answer == REFUSED:
                size = int.from_bytes(recv_exact(sock, 4), "big")
                raise Refused("the daemon refused: " + recv_exact(sock, min(size, 4096)).decode(errors="replace"))
            if answer != ACCEPTED:
                raise NotForwarded(f"the daemon answered {answer!r}, not {ACCEPTED!r}")
            sock.sendall(GO)
        except (OSError, EOFError) as exc:
            # Covers ENOENT/ECONNREFUSED (no daemon), the timeout and a daemon dying before GO arrived.
            raise NotForwarded(f"no daemon at {socket_path}: {exc}") from None
        # Committed: the daemon may be running it now, so wait for the answer, however long.
        sock.settimeout(None)
        try:
            head = recv_exact(sock, 8)
            stdout = recv_exact(sock, int.from_bytes(head[4:], "big"))
        except (OSError, EOFError) as exc:
            raise DaemonLost(f"the daemon at {socket_path} went away during the request: {exc}") from None
        return int.from_bytes(head[:4], "big"), stdout
    finally:
        sock.close()


def _read_stdin() -> bytes:
    chunks = []
    while True:
        chunk = posix.read(0, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_stdout(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[posix.write(1, view) :]


def _open_netns(path: bytes | None) -> tuple[int | None, bool]:
    """The pod netns, opened here so the daemon needs neither hostPID nor our mount namespace; and whether the
    daemon may take the request.

    Unset or absent: no fd, and the skeleton decides what that means (DEL succeeds, ADD fails with code 3), the
    same in the daemon as here. Present but unopenable (permissions, not a file...): the daemon must not guess
    from its own view of that path, so the skeleton reports it here, in-process.
    """
    if not path:
        return None, True
    try:
        # O_NONBLOCK: a FIFO named as the netns must not hang us; the skeleton then says it is no netns.
        return posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NONBLOCK | posix.O_NOCTTY), True
    except FileNotFoundError:
        return None, True
    except OSError:
        return None, False


def _open_mount_ns() -> int | None:
    """Our mount namespace (the runtime's view of the node's files), for the daemon to run delegated IPAM plugins
    in, as the runtime's own exec of them would. None if it cannot be opened: the daemon then uses its own."""
    try:
        return posix.open(MOUNT_NS, posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:
        return None


def in_process(stdin: bytes, netns_fd: int | None, archive: str | None = None) -> tuple[int, bytes]:
    """The same work the daemon does, here: the fallback path (imports pyroute2, ~150 ms)."""
    if archive is not None and archive not in sys.path:
        sys.path.insert(0, archive)
    import os

    from cni.skel import execute

    code, out = execute(dict(os.environ), stdin, netns_fd=netns_fd)
    return code, out.encode()


def _try_again(message: str, stdin: bytes) -> bytes:
    import json

    try:
        version = json.loads(stdin).get("cniVersion") or "1.1.0"
    except (ValueError, AttributeError):
        version = "1.1.0"
    return (json.dumps({"cniVersion": version, "code": TRY_AGAIN, "msg": message}) + "\n").encode()


def run(command: str, archive: str | None = None, forward_first: bool = True) -> int:
    """Serve one forwarded command (ADD, DEL, CHECK, GC, STATUS) end to end; the process exit code.

    `archive` is the bundled executable's own path, put on sys.path only if we fall back. `forward_first` is False
    when the static `vnfio` execs us (`vnfio-inproc --in-process`) because no daemon took the request: asking the
    daemon again would only add a second timeout.
    """
    environ = posix.environ
    stdin = _read_stdin()
    netns_fd, forwardable = _open_netns(environ.get(b"CNI_NETNS"))
    mount_ns_fd = _open_mount_ns() if forward_first and forwardable else None
    try:
        socket_path = environ.get(SOCKET_ENV.encode(), b"").decode() or DEFAULT_SOCKET
        try:
            timeout = float(environ.get(TIMEOUT_ENV.encode(), b"") or DEFAULT_TIMEOUT)
        except ValueError:
            timeout = DEFAULT_TIMEOUT
        try:
            if not forward_first:
                raise NotForwarded("handed over by the static vnfio: no daemon took the request")
            if not forwardable:
                raise NotForwarded("CNI_NETNS exists but cannot be opened here")
            code, out = forward(environ, stdin, netns_fd, socket_path, timeout, mount_ns_fd)
        except NotForwarded as exc:
            if isinstance(exc, Refused):
                sys.stderr.write(f"vnfio: {exc}; running in-process\n")
            code, out = in_process(stdin, netns_fd, archive)
        except DaemonLost as exc:
            if command == "ADD":
                sys.stderr.write(f"vnfio: {exc}\n")
                code, out = 1, _try_again(f"{exc}; the ADD may be half done, retry after DEL", stdin)
            else:
                code, out = in_process(stdin, netns_fd, archive)
    finally:
        for fd in (netns_fd, mount_ns_fd):
            if fd is not None:
                posix.close(fd)
    _write_stdout(out)
    return code
