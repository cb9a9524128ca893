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
import socket
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import VNFIO, CniDaemonProcess, Scenario, cni_env, random_subnet, reservation_files

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
