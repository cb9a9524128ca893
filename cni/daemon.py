"""`vnfio-cni-daemon`: the node daemon that runs CNI commands for the thin `vnfio` executable.

It keeps pyroute2 and the modes imported (a fresh process pays ~150 ms for that) and serves requests from
`cni.client` on a root-only unix socket: the client's environment, stdin and the opened pod netns fd
(SCM_RIGHTS, so no hostPID and no access to the runtime's netns paths is needed). Each request runs through
the same `cni.skel.execute` as the in-process path, in a bounded number of threads so different containers
proceed in parallel.

What a misbehaving client can cost it is bounded: a connection has HANDSHAKE_TIMEOUT seconds in all to deliver
its request and its GO (a deadline, not a per-recv timeout); a serving process holds at most `max_connections`
connections (one thread each) and closes any beyond them at once; a request is at most MAX_ENV + MAX_STDIN bytes,
refused from its header when it claims more. A request is ACCEPTED only once a worker is free to run it, so a
client waits for a busy daemon no longer than its own timeout, after which it does the work itself. SIGTERM first
stops accepting (the listening socket is closed and removed, so a replacement can start at once), then lets the
running requests finish. The daemon keeps no state of its own: reservations live on disk under flock, which the
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
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cni import deferred
from cni.client import (
    ACCEPTED,
    DEFAULT_SOCKET,
    GO,
    encode_refusal,
    encode_reply,
)
from cni.supervisor import Supervisor
from cni.wire import ProtocolError, peer_credentials, read_request

log = logging.getLogger(__name__)

Execute = Callable[..., tuple[int, str]]
HANDSHAKE_TIMEOUT = 10.0  # seconds a connected client has, in all, to send its request and its GO
SHUTDOWN_GRACE = 60.0  # seconds SIGTERM waits for requests already running
MAX_CONNECTIONS = 64  # per serving process: connections (one thread each) being read, waiting or served
_WORKER_POLL = 0.05  # seconds between checks, while waiting for a worker, that the client is still there
_NOT_WARMED = ("cni.main", "cni.client", "cni.daemon", "cni.bundle", "cni.install")


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


def _default_execute(env: Mapping[str, str], stdin: bytes, netns_fd: int | None = None,
                     mount_ns_fd: int | None = None) -> tuple[int, str]:
    from cni.skel import execute

    return execute(env, stdin, netns_fd=netns_fd, mount_ns_fd=mount_ns_fd)


class CniDaemon:
    """The listening socket and the request handlers; `serve()` runs until `stop()` (or SIGTERM via main)."""

    def __init__(self, socket_path: Path, workers: int = 8, execute: Execute = _default_execute,
                 max_connections: int = MAX_CONNECTIONS, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        if workers < 1 or max_connections < 1:
            raise ValueError(f"workers and max_connections must be at least 1, got {workers} and {max_connections}")
        self.socket_path = socket_path
        self.workers = workers
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self._execute = execute
        self._slots = threading.BoundedSemaphore(workers)
        self._listener: socket.socket | None = None
        self._socket_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket file we bound
        self._turned_away = 0  # connections closed at once because max_connections were open
        self._turned_away_logged = 0.0
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
        st = os.lstat(self.socket_path)
        self._socket_id = (st.st_dev, st.st_ino)
        listener.listen(128)
        self._listener = listener
        log.info("listening on %s (%d workers)", self.socket_path, self.workers)

    def close(self) -> None:
        """Close the listener and remove the socket, for a parent whose forked processes did the serving. Idempotent;
        safe from a signal handler."""
        if self._listener is not None:
            self._listener.close()
        self._unlink_own_socket()

    def _unlink_own_socket(self) -> None:
        """Remove the socket file if it is still the one we bound: after SIGTERM a replacement daemon may already
        have bound its own at the same path, which is not ours to remove."""
        try:
            st = os.lstat(self.socket_path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._socket_id:
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
                    full = len(self._handlers) >= self.max_connections
                    if not full:
                        self._handlers.add(handler)
                if full:
                    conn.close()  # the client sees the connection end before ACCEPTED and does the work itself
                    self._turn_away()
                    continue
                try:
                    handler.start()
                except RuntimeError as exc:  # no thread to be had (a pids limit): as if we were full
                    with self._handlers_lock:
                        self._handlers.discard(handler)
                    conn.close()
                    log.warning("closed a connection: cannot start a thread for it: %s", exc)
        finally:
            # Stop accepting first: with the listener closed (in every serving process) and its file removed, new
            # clients fall back at once and a replacement daemon can bind while we finish what is running.
            self._listener.close()
            if owns_socket:
                self._unlink_own_socket()
            self._drain()
            wake_w, self._wake_w = self._wake_w, None
            os.close(wake_r)
            os.close(wake_w)
            log.info("stopped")

    def _turn_away(self) -> None:
        self._turned_away += 1
        now = time.monotonic()
        if now - self._turned_away_logged >= 1.0:  # at most once a second, however hard we are hit
            self._turned_away_logged = now
            log.warning("%d connection(s) closed at once so far: %d already open (the limit)", self._turned_away,
                        self.max_connections)

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
        deadline = time.monotonic() + self.handshake_timeout
        try:
            request = read_request(conn, deadline)
        except (OSError, ProtocolError) as exc:
            log.warning("bad request from pid %d: %s", pid, exc)
            return
        if request is None:
            log.debug("pid %d connected and left without a request", pid)
            return
        command = request.env.get("CNI_COMMAND", "")
        target = f"{request.env.get('CNI_CONTAINERID', '')}/{request.env.get('CNI_IFNAME', '')}"
        try:
            if not self._wait_for_worker(conn, deadline):
                log.info("CNI %s %s: no worker free before client pid %d left (or the handshake deadline); not "
                         "accepted, the client runs it itself", command, target, pid)
                return
            try:
                conn.sendall(ACCEPTED)
                try:
                    conn.settimeout(max(deadline - time.monotonic(), 0.001))
                    go = conn.recv(1)
                except OSError:
                    go = b""
                if go != GO:
                    # The client gave up (its deadline passed) and is doing the work itself: we must not.
                    log.info("CNI %s %s: client pid %d withdrew the request; not running it", command, target, pid)
                    return
                conn.settimeout(None)
                started = time.perf_counter()
                with deferred.collecting() as after_reply:
                    code, out = self._execute(request.env, request.stdin, netns_fd=request.netns_fd,
                                              mount_ns_fd=request.mount_ns_fd)
            finally:
                self._slots.release()
        finally:
            request.close()
        log.debug("CNI %s %s: code %d in %.1f ms", command, target, code, (time.perf_counter() - started) * 1e3)
        try:
            conn.sendall(encode_reply(code, out.encode()))
        except OSError as exc:
            log.warning("CNI %s %s: the client left before the answer (code %d): %s", command, target, code, exc)
        finally:
            # What the answer need not wait for (the gratuitous ARP of an ADD): its own fds, so after the close.
            deferred.run(after_reply)

    def _wait_for_worker(self, conn: socket.socket, deadline: float) -> bool:
        """Take a worker slot for this connection; False if the client hangs up first (its timeout passed: it runs the
        request itself), the handshake deadline passes, or we are stopping. Only then is ACCEPTED sent, so a busy
        daemon never holds a client past the client's own timeout."""
        import select

        poller = select.poll()
        poller.register(conn, select.POLLIN)  # a client says nothing before ACCEPTED: readable means it left
        while True:
            if self._slots.acquire(timeout=max(0.0, min(_WORKER_POLL, deadline - time.monotonic()))):
                return True
            if self._stopping.is_set() or time.monotonic() >= deadline or poller.poll(0):
                return False


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
        "--max-connections", type=int, default=MAX_CONNECTIONS,
        help="connections a serving process holds at once; more are closed at once (default: %(default)s)",
    )
    parser.add_argument(
        "--handshake-timeout", type=float, default=HANDSHAKE_TIMEOUT,
        help="seconds a client has, in all, to send its request and its GO (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(default: %(default)s)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1 or args.processes < 1 or args.max_connections < 1:
        build_parser().error("--workers, --processes and --max-connections must be at least 1")
    if not args.handshake_timeout > 0:
        build_parser().error("--handshake-timeout must be positive")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    # pyroute2 and asyncio log every netlink message at DEBUG: far too much even for debugging a CNI call.
    for noisy in ("pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    started = time.perf_counter()
    warmed = warm_up()
    elapsed_ms = (time.perf_counter() - started) * 1e3
    log.info("warm: pyroute2 and %d CNI modules imported in %.0f ms", len(warmed), elapsed_ms)
    daemon = CniDaemon(args.socket, workers=args.workers, max_connections=args.max_connections,
                       handshake_timeout=args.handshake_timeout)
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
