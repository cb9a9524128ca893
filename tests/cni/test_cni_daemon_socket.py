"""The node daemon's socket lets nobody but root in, and the CNI leaves no file anyone could write.

A real `vnfio-cni-daemon` serves the real ADD; hostile peers are forked children of the test that drop to uid
65534 (and, in one case, become "root" of a user namespace of their own) before they connect. Refused means
refused: the pod netns stays empty and no address is reserved.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import (
    VNFIO,
    CniDaemonProcess,
    Scenario,
    cni_env,
    gated_ipam,
    random_subnet,
    reservation_files,
    socket_answers,
    wait_until,
)

from cni import client

pytestmark = pytest.mark.hardening  # attacks and faults: tried as an attacker or a careless operator would

NOBODY = 65534


def _conf(world: Scenario) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": f"hs{world.tag}", "type": "vnfio", "mode": "bridge",
            "bridge": world.link_name("hs"), "isGateway": True, "ipam": world.host_local(str(random_subnet()))}


def _writable_by_others(*roots: Path) -> list[str]:
    """Every file or directory under `roots` (the roots too) that a user other than its owner could write."""
    found = []
    for root in roots:
        for path in [root, *root.rglob("*")]:
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            if mode & (stat.S_IWOTH | stat.S_IWGRP):
                found.append(f"{oct(stat.S_IMODE(mode))} {path}")
    return found


# --- hostile peers: forked children of this (root) process that give up root before they connect --------------


_CLONE_NEWUSER = 0x10000000
_PR_SET_DUMPABLE = 4


def _become_nobody(user_namespace_root: bool) -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    if user_namespace_root:
        # Unprivileged: a user namespace of our own where we are uid 0. The kernel translates credentials for the
        # daemon's namespace, where we are still 65534.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)  # setuid() made /proc/self root's; we must write our own maps
        if libc.unshare(_CLONE_NEWUSER) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {NOBODY} 1")
        Path("/proc/self/gid_map").write_text(f"0 {NOBODY} 1")
        assert os.getuid() == 0


def forward_as_nobody(env: Mapping[str, str], stdin: bytes, netns_path: str, socket_path: Path,
                      user_namespace_root: bool = False) -> str:
    """Send a complete request (with the pod netns fd, opened while still root) from a child that has dropped to
    uid 65534 before connecting; what the child saw: "REFUSED <message>", "SERVED ..." or "ERROR ..."."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no return
        status = 0
        try:
            os.close(read_end)
            netns_fd = os.open(netns_path, os.O_RDONLY)
            _become_nobody(user_namespace_root)
            environ = {k.encode(): v.encode() for k, v in env.items()}
            try:
                code, out = client.forward(environ, stdin, netns_fd, str(socket_path), 10.0)
                answer = f"SERVED {code} {out.decode(errors='replace')}"
            except client.Refused as exc:
                answer = f"REFUSED {exc}"
            except Exception as exc:
                answer = f"ERROR {type(exc).__name__}: {exc}"
            os.write(write_end, answer.encode())
        except BaseException as exc:
            os.write(write_end, f"ERROR {type(exc).__name__}: {exc}".encode())
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode(errors="replace")
    os.waitpid(pid, 0)
    return answer


# --- the tests ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("peer", ["uid 65534", "root of its own user namespace"])
def test_a_non_root_peer_is_refused_and_nothing_is_done(world: Scenario, tmp_path: Path, peer: str) -> None:
    pod = world.netns()
    conf = _conf(world)
    env = cni_env("ADD", f"c{world.tag}", pod.path)
    with CniDaemonProcess(log_path=tmp_path / "daemon.log") as daemon:
        # Open the modes on purpose: only the SO_PEERCRED check stands between the peer and the daemon.
        os.chmod(daemon.dir, 0o755)
        os.chmod(daemon.socket.parent, 0o755)
        os.chmod(daemon.socket, 0o666)
        answer = forward_as_nobody(env, json.dumps(conf).encode(), pod.path, daemon.socket,
                                   user_namespace_root=peer != "uid 65534")
        if "unshare" in answer and "Operation not permitted" in answer:
            pytest.skip("this kernel allows no unprivileged user namespaces")
        assert answer.startswith("REFUSED"), answer
        assert f"uid {NOBODY}" in answer
        # Nothing was done: no interface in the pod, no bridge, no reservation.
        assert set(pod.links()) == {"lo"}
        assert not Path(f"/sys/class/net/{conf['bridge']}").exists()
        assert reservation_files(world.data_dir) == []
        assert "refused a request" in daemon.log_text()
        # Root, on the same daemon, is served.
        assert daemon.run(env, conf).code == 0
        assert daemon.run({**env, "CNI_COMMAND": "DEL"}, conf).code == 0
    assert reservation_files(world.data_dir) == []


def test_socket_modes_and_no_world_writable_file_even_with_umask_0(world: Scenario, tmp_path: Path) -> None:
    """Started with umask 000 (a careless init system), the daemon still makes its directory 0700, its socket
    0600, and neither it nor the in-process path creates a file or directory that others could write."""
    pods = [world.netns() for _ in range(2)]
    conf = _conf(world)
    conf["ipMasq"] = False
    with CniDaemonProcess(log_path=tmp_path / "daemon.log", umask=0) as daemon:
        socket_dir = daemon.socket.parent
        assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600
        assert (socket_dir.stat().st_uid, daemon.socket.stat().st_uid) == (0, 0)
        first = daemon.run(cni_env("ADD", f"a{world.tag}", pods[0].path), conf)
        assert first.code == 0, first.out
        # The in-process fallback (no daemon at that path), also under umask 000.
        proc = subprocess.run(
            [str(VNFIO)], input=json.dumps(conf).encode(), capture_output=True, check=False, timeout=60,
            umask=0, env={**cni_env("ADD", f"b{world.tag}", pods[1].path), "PATH": os.environ.get("PATH", ""),
                          client.SOCKET_ENV: str(daemon.dir / "none.sock")},
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert len(reservation_files(world.data_dir)) == 2
        assert _writable_by_others(world.data_dir, daemon.dir) == []
        for n, pod in enumerate(pods):
            assert daemon.run(cni_env("DEL", f"{'ab'[n]}{world.tag}", pod.path), conf).code == 0
        assert _writable_by_others(world.data_dir, daemon.dir) == []
    assert reservation_files(world.data_dir) == []


def test_a_client_that_connects_and_sends_garbage_or_nothing_leaves_the_daemon_serving(
    world: Scenario, tmp_path: Path
) -> None:
    pod = world.netns()
    conf = _conf(world)
    with CniDaemonProcess(log_path=tmp_path / "daemon.log", processes=1) as daemon:
        junk = [b"", b"GET / HTTP/1.0\r\n\r\n", client.MAGIC + b"\xff" * 8, client.MAGIC + b"\0\0\0\x10\0\0\0\0abc",
                os.urandom(4096)]
        for data in junk:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(15)
                conn.connect(str(daemon.socket))
                if data:
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
                with contextlib.suppress(OSError):
                    assert conn.recv(1) in (b"", client.ACCEPTED)
        assert set(pod.links()) == {"lo"}
        added = daemon.run(cni_env("ADD", f"c{world.tag}", pod.path), conf)
        assert added.code == 0, added.out
        assert daemon.run(cni_env("DEL", f"c{world.tag}", pod.path), conf).code == 0
        assert daemon.proc is not None and daemon.proc.poll() is None
    assert "Traceback" not in daemon.log_text()
    assert reservation_files(world.data_dir) == []


# --- misbehaving clients: bounded time, threads and memory; SIGTERM stops accepting first (issue 17, finding 9) ---


MAGIC_V1 = b"VNFIO-CNI/1\n"  # the first wire version (cni.client.MAGIC_V1), which every daemon reads
MAX_CONNECTIONS = 64  # the daemon's default limit per serving process (checked against cni.daemon at the end)


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no thread count for pid {pid}")


def _closed_by_peer(conn: socket.socket) -> bool:
    try:
        return conn.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_a_client_dribbling_its_request_is_cut_off_at_the_handshake_deadline(socket_dir: Path) -> None:
    """One byte every 0.5 s never trips a per-recv timeout: the daemon must end the connection when the request
    is not complete HANDSHAKE_TIMEOUT (10 s) after the connect, however the bytes trickle in."""
    from cni.daemon import HANDSHAKE_TIMEOUT

    env = b"CNI_COMMAND=DEL"
    # The first wire version, which every daemon reads: the old behaviour shows the same way.
    request = MAGIC_V1 + len(env).to_bytes(4, "big") + (10).to_bytes(4, "big") + env
    budget = int((HANDSHAKE_TIMEOUT + 5) / 0.5)
    assert len(request) >= budget, "the request must last longer than the deadline at this pace"
    with CniDaemonProcess(socket_dir / "cni.sock", processes=1) as daemon, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(daemon.socket))
        started = time.monotonic()
        cut_off_after = None
        for byte in request[:budget]:
            try:
                conn.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut_off_after = time.monotonic() - started
                break
            if _closed_by_peer(conn):
                cut_off_after = time.monotonic() - started
                break
            time.sleep(0.5)
        print(f"FIGURE dribbling client (1 byte / 0.5 s) held the daemon for "
              f"{cut_off_after if cut_off_after is not None else time.monotonic() - started:.1f} s "
              f"(handshake deadline {HANDSHAKE_TIMEOUT:g} s)")
        assert cut_off_after is not None, f"still connected after {budget} bytes over {budget * 0.5:g} s"
        assert "handshake deadline" in daemon.log_text()


def test_idle_connections_beyond_the_limit_are_closed_and_threads_stay_bounded(world: Scenario,
                                                                                socket_dir: Path) -> None:
    """300 clients connect and say nothing. A serving process keeps MAX_CONNECTIONS of them (one thread each) and
    closes the rest at once; then a real pod is still served."""
    idle = []
    with CniDaemonProcess(socket_dir / "cni.sock", processes=1) as daemon:
        assert daemon.proc is not None
        baseline = _threads(daemon.proc.pid)
        try:
            for _ in range(300):
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.connect(str(daemon.socket))
                idle.append(conn)
            wait_until(lambda: sum(_closed_by_peer(c) for c in idle) >= 300 - MAX_CONNECTIONS, timeout=10)
            closed = sum(_closed_by_peer(c) for c in idle)
            threads = _threads(daemon.proc.pid)
            print(f"FIGURE 300 idle connections: {300 - closed} held, {closed} closed at once, daemon threads "
                  f"{baseline} -> {threads} (limit {MAX_CONNECTIONS} connections)")
            assert threads <= baseline + MAX_CONNECTIONS
            assert closed >= 300 - MAX_CONNECTIONS
        finally:
            for conn in idle:
                conn.close()
        pod = world.netns()
        conf = _conf(world)
        added = daemon.run(cni_env("ADD", f"c{world.tag}", pod.path), conf)
        assert added.code == 0, added.out
        assert daemon.run(cni_env("DEL", f"c{world.tag}", pod.path), conf).code == 0
    assert reservation_files(world.data_dir) == []
    from cni.daemon import MAX_CONNECTIONS as limit

    assert limit == MAX_CONNECTIONS


def test_a_request_claiming_more_than_a_request_can_be_is_refused_from_its_header(socket_dir: Path) -> None:
    """A header announcing a 2 MiB config (a real one is KiB): the daemon hangs up after the header instead of
    buffering it, so the sender's write fails."""
    size = 2 << 20
    header = MAGIC_V1 + (0).to_bytes(4, "big") + size.to_bytes(4, "big")  # every daemon reads this version
    with CniDaemonProcess(socket_dir / "cni.sock", processes=1) as daemon, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(daemon.socket))
        conn.sendall(header)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            conn.settimeout(30)
            conn.sendall(b"{" * size)
        assert "request too large" in daemon.log_text()


def test_sigterm_stops_accepting_first_so_a_replacement_can_start_while_requests_drain(
    tmp_path: Path, socket_dir: Path
) -> None:
    """Two serving processes, one of them inside a slow delegated IPAM call. On SIGTERM the socket must stop
    answering and its file go at once, so that a replacement daemon starts on the same path while the old one still
    finishes that call; the old one's exit must not remove the replacement's socket."""
    slow = gated_ipam(tmp_path / "cni-bin")
    conf = {"cniVersion": "1.1.0", "name": "slow", "type": "vnfio", "mode": "veth", "ipam": {"type": slow.name}}
    path = socket_dir / "cni.sock"
    old = CniDaemonProcess(path, processes=2, workers=2)
    with old:
        assert old.proc is not None
        running = subprocess.Popen([str(VNFIO)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   env={**cni_env("DEL", "slow", path=str(slow.cni_path)),
                                        "PATH": os.environ.get("PATH", ""), client.SOCKET_ENV: str(path)})
        try:
            assert running.stdin is not None
            running.stdin.write(json.dumps(conf).encode())
            running.stdin.close()
            assert wait_until(lambda: slow.running() == 1), "the slow delegate never started"
            old.proc.send_signal(signal.SIGTERM)
            assert wait_until(lambda: not path.exists() and not socket_answers(path)), \
                "the old daemon still listens after SIGTERM"
            assert old.proc.poll() is None, "the old daemon should still be finishing its request"
            with CniDaemonProcess(path, processes=1) as replacement:
                quick = replacement.run(cni_env("DEL", "quick"), {**conf, "ipam": None})
                assert quick.code == 0, quick.out
                slow.open()
                assert running.wait(timeout=60) == 0
                assert old.proc.wait(timeout=60) == 0
                assert socket_answers(path), "the old daemon removed the replacement's socket"
        finally:
            slow.open()
            running.wait(timeout=60)
