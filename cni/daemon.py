"""`vnfio-cni-daemon`: the node daemon that runs CNI commands for the thin `vnfio` executable.

It keeps pyroute2 and the modes imported (a fresh process pays ~150 ms for that) and serves requests from
`cni.client` on a root-only unix socket: the client's environment, stdin and the opened pod netns fd
(SCM_RIGHTS, so no hostPID and no access to the runtime's netns paths is needed). Each request runs through
the same `cni.skel.execute` as the in-process path, in a bounded number of threads so different containers
proceed in parallel. The daemon keeps no state of its own: reservations live on disk under flock, which the
kernel releases if the daemon dies, so a restart loses nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import pkgutil
import signal
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cni import deferred
from cni.client import (
    ACCEPTED,
    DEFAULT_SOCKET,
    GO,
    HEADER_SIZE,
    MAGIC,
    MAX_ENV,
    MAX_STDIN,
    encode_refusal,
    encode_reply,
)

log = logging.getLogger(__name__)

Execute = Callable[..., tuple[int, str]]
HANDSHAKE_TIMEOUT = 10.0  # seconds a connected client has to send its request and its GO
SHUTDOWN_GRACE = 60.0  # seconds SIGTERM waits for requests already running
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_NOT_WARMED = ("cni.main", "cni.client", "cni.daemon", "cni.bundle", "cni.install")


class ProtocolError(Exception):
    """A request that does not follow the wire format in `cni.client`."""


def warm_up() -> list[str]:
    """Import pyroute2 and every CNI module now, so the first pod does not pay for it; the names imported."""
    import pyroute2  # noqa: F401  the expensive one (~150 ms, 370 modules)

    import cni

    names = []
    for info in pkgutil.walk_packages(cni.__path__, "cni."):
        if info.name in _NOT_WARMED:
            continue
        importlib.import_module(info.name)
        names.append(info.name)
    return names


def _decode_env(blob: bytes) -> dict[str, str]:
    env = {}
    for item in blob.split(b"\0") if blob else ():
        key, sep, value = item.partition(b"=")
        if not sep or not key:
            raise ProtocolError(f"malformed environment entry {item[:60]!r}")
        env[os.fsdecode(key)] = os.fsdecode(value)
    return env


def read_request(conn: socket.socket) -> tuple[dict[str, str], bytes, int | None] | None:
    """One request: (env, stdin, netns fd or None); None if the peer hung up without a word (a liveness probe).
    The fd is the caller's to close."""
    data, fds, flags, _ = socket.recv_fds(conn, 1 << 16, 1)
    if not data and not fds:
        return None
    netns_fd = fds[0] if fds else None
    try:
        for extra in fds[1:]:
            os.close(extra)
        if flags & socket.MSG_CTRUNC:
            raise ProtocolError("more than one file descriptor sent")
        while len(data) < HEADER_SIZE:
            chunk = conn.recv(HEADER_SIZE - len(data))
            if not chunk:
                raise ProtocolError("connection closed inside the request header")
            data += chunk
        if not data.startswith(MAGIC):
            raise ProtocolError(f"not a vnfio CNI request (starts {data[:16]!r})")
        env_size = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 4], "big")
        stdin_size = int.from_bytes(data[len(MAGIC) + 4 : HEADER_SIZE], "big")
        if env_size > MAX_ENV or stdin_size > MAX_STDIN:
            raise ProtocolError(f"request too large (env {env_size} bytes, stdin {stdin_size} bytes)")
        total = HEADER_SIZE + env_size + stdin_size
        chunks = [data]
        have = len(data)
        while have < total:
            chunk = conn.recv(min(total - have, 1 << 20))
            if not chunk:
                raise ProtocolError(f"connection closed after {have} of {total} request bytes")
            chunks.append(chunk)
            have += len(chunk)
        body = b"".join(chunks)
        if len(body) != total:
            raise ProtocolError(f"{len(body) - total} bytes after the request")
        env = _decode_env(body[HEADER_SIZE : HEADER_SIZE + env_size])
        return env, body[HEADER_SIZE + env_size :], netns_fd
    except BaseException:
        if netns_fd is not None:
            os.close(netns_fd)
        raise


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected, as the kernel recorded them at connect()."""
    return _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))


def _default_execute(env: Mapping[str, str], stdin: bytes, netns_fd: int | None = None) -> tuple[int, str]:
    from cni.skel import execute

    return execute(env, stdin, netns_fd=netns_fd)


class CniDaemon:
    """The listening socket and the request handlers; `serve()` runs until `stop()` (or SIGTERM via main)."""

    def __init__(self, socket_path: Path, workers: int = 8, execute: Execute = _default_execute) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.socket_path = socket_path
        self.workers = workers
        self._execute = execute
        self._slots = threading.BoundedSemaphore(workers)
        self._listener: socket.socket | None = None
        self._wake_w: int | None = None  # per serving process, see serve()
        self._handlers: set[threading.Thread] = set()
        self._handlers_lock = threading.Lock()
        self._stopping = threading.Event()

    def bind(self) -> None:
        """Create the root-only socket, replacing a stale one; refuse if another daemon answers there."""
        directory = self.socket_path.parent
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True)
            os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
        self._remove_stale_socket()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # the socket is 0600 from the moment it exists
        try:
            listener.bind(str(self.socket_path))
        except OSError:
            listener.close()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)
        listener.listen(128)
        self._listener = listener
        log.info("listening on %s (%d workers)", self.socket_path, self.workers)

    def close(self) -> None:
        """Close the listener and remove the socket, for a parent whose forked processes did the serving."""
        if self._listener is not None:
            self._listener.close()
        self.socket_path.unlink(missing_ok=True)

    def _remove_stale_socket(self) -> None:
        try:
            mode = os.lstat(self.socket_path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise RuntimeError(f"{self.socket_path} exists and is not a socket; not touching it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            probe.connect(str(self.socket_path))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
            log.info("removing stale socket %s", self.socket_path)
            self.socket_path.unlink(missing_ok=True)
        else:
            raise RuntimeError(f"another daemon is already listening on {self.socket_path}")
        finally:
            probe.close()

    def stop(self) -> None:
        """Stop accepting; safe from a signal handler or another thread."""
        self._stopping.set()
        if self._wake_w is not None:
            with contextlib.suppress(BlockingIOError, OSError):  # a wake-up is already pending, or serve() ended
                os.write(self._wake_w, b"x")

    def serve(self, owns_socket: bool = True) -> None:
        """Accept until stopped, then finish the requests already running (and remove the socket if we own it:
        forked serving processes share the parent's)."""
        import select

        if self._listener is None:
            self.bind()
        assert self._listener is not None
        # Several processes may accept on this listener: whoever loses the race gets EAGAIN, not a blocked accept.
        self._listener.setblocking(False)
        wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        try:
            while not self._stopping.is_set():
                ready = {fd for fd, _ in poller.poll()}
                if wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 64)
                if self._listener.fileno() not in ready:
                    continue
                try:
                    conn, _ = self._listener.accept()
                except BlockingIOError:
                    continue
                except OSError as exc:
                    log.warning("accept failed: %s", exc)
                    continue
                handler = threading.Thread(target=self._handle, args=(conn,), name="vnfio-cni-request", daemon=True)
                with self._handlers_lock:
                    self._handlers.add(handler)
                handler.start()
        finally:
            self._listener.close()
            if owns_socket:
                self.socket_path.unlink(missing_ok=True)
            self._drain()
            wake_w, self._wake_w = self._wake_w, None
            os.close(wake_r)
            os.close(wake_w)
            log.info("stopped")

    def _drain(self) -> None:
        deadline = time.monotonic() + SHUTDOWN_GRACE
        with self._handlers_lock:
            running = list(self._handlers)
        if running:
            log.info("waiting for %d request(s) to finish", len(running))
        for handler in running:
            handler.join(max(0.0, deadline - time.monotonic()))

    def _handle(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._serve_connection(conn)
        except Exception:
            log.exception("request handler failed")
        finally:
            with self._handlers_lock:
                self._handlers.discard(threading.current_thread())

    def _serve_connection(self, conn: socket.socket) -> None:
        pid, uid, _ = peer_credentials(conn)
        if uid != 0:
            log.warning("refused a request from pid %d uid %d: only root may use %s", pid, uid, self.socket_path)
            conn.sendall(encode_refusal(f"only root (uid 0) may use {self.socket_path}; peer pid {pid} is uid {uid}"))
            return
        conn.settimeout(HANDSHAKE_TIMEOUT)
        try:
            request = read_request(conn)
        except (OSError, ProtocolError) as exc:
            log.warning("bad request from pid %d: %s", pid, exc)
            return
        if request is None:
            log.debug("pid %d connected and left without a request", pid)
            return
        env, stdin, netns_fd = request
        command = env.get("CNI_COMMAND", "")
        target = f"{env.get('CNI_CONTAINERID', '')}/{env.get('CNI_IFNAME', '')}"
        try:
            conn.sendall(ACCEPTED)
            try:
                go = conn.recv(1)
            except OSError:
                go = b""
            if go != GO:
                # The client gave up (its deadline passed) and is doing the work itself: we must not.
                log.info("CNI %s %s: client pid %d withdrew the request; not running it", command, target, pid)
                return
            conn.settimeout(None)
            started = time.perf_counter()
            with self._slots, deferred.collecting() as after_reply:
                code, out = self._execute(env, stdin, netns_fd=netns_fd)
        finally:
            if netns_fd is not None:
                os.close(netns_fd)
        log.debug("CNI %s %s: code %d in %.1f ms", command, target, code, (time.perf_counter() - started) * 1e3)
        try:
            conn.sendall(encode_reply(code, out.encode()))
        except OSError as exc:
            log.warning("CNI %s %s: the client left before the answer (code %d): %s", command, target, code, exc)
        finally:
            # What the answer need not wait for (the gratuitous ARP of an ADD): its own fds, so after the close.
            deferred.run(after_reply)


class Supervisor:
    """Several serving processes on one listener: the GIL lets one process use only one CPU for the Python part of
    the work (~14 ms of CPU per bridge ADD), while CNI calls for different pods arrive in parallel.

    The processes are forked after the warm-up and the bind, so each starts warm and the parent holds no threads
    when it forks. The parent only supervises: it restarts a serving process that dies, forwards SIGTERM, and
    removes the socket at the end. A serving process exits (finishing its running requests) if the parent dies.
    """

    def __init__(self, daemon: CniDaemon, processes: int) -> None:
        self.daemon = daemon
        self.processes = processes
        self._children: set[int] = set()
        self._stopping = False

    def _spawn(self) -> int:
        parent = os.getpid()
        pid = os.fork()
        if pid:
            return pid
        code = 0
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.daemon.stop())
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
            _die_with_parent(parent)
            self.daemon.serve(owns_socket=False)
        except BaseException:
            log.exception("serving process failed")
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def _spawn_blocked(self) -> None:
        # Signals wait until the child is in our set (so stop() reaches it), and until the child has its own
        # handlers (ours, inherited, would signal its siblings).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            if not self._stopping:
                self._children.add(self._spawn())
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})

    def stop(self) -> None:
        self._stopping = True
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def run(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())
        for _ in range(self.processes):
            self._spawn_blocked()
        log.info("%d serving processes: %s", self.processes, sorted(self._children))
        try:
            while self._children:
                try:
                    pid, status = os.wait()
                except ChildProcessError:
                    break
                self._children.discard(pid)
                if not self._stopping:
                    log.error("serving process %d ended (wait status %d); starting another", pid, status)
                    time.sleep(0.5)  # no tight loop if something kills them on sight
                    self._spawn_blocked()
        finally:
            self.daemon.close()
            log.info("stopped")


def _die_with_parent(parent: int) -> None:
    """Get SIGTERM when the supervisor dies, so no orphan keeps accepting on a socket nobody owns."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vnfio-cni-daemon",
        description="Node daemon for the vnfio CNI plugin: runs ADD/DEL/CHECK/GC/STATUS for the thin `vnfio` "
        "executable over a root-only unix socket, with pyroute2 already loaded.",
    )
    parser.add_argument(
        "--socket", type=Path, default=Path(DEFAULT_SOCKET), help="unix socket to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--workers", type=int, default=8, help="CNI commands run at once, for different containers (default: 8)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="serving processes, each with --workers threads (default: CPUs, at most 4: %(default)s)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(default: %(default)s)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1 or args.processes < 1:
        build_parser().error("--workers and --processes must be at least 1")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    # pyroute2 and asyncio log every netlink message at DEBUG: far too much even for debugging a CNI call.
    for noisy in ("pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    started = time.perf_counter()
    warmed = warm_up()
    elapsed_ms = (time.perf_counter() - started) * 1e3
    log.info("warm: pyroute2 and %d CNI modules imported in %.0f ms", len(warmed), elapsed_ms)
    daemon = CniDaemon(args.socket, workers=args.workers)
    try:
        daemon.bind()
    except (OSError, RuntimeError) as exc:
        log.error("cannot listen on %s: %s", args.socket, exc)
        return 1
    if args.processes > 1:
        Supervisor(daemon, args.processes).run()
        return 0
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: daemon.stop())
    daemon.serve()
    return 0
