"""The CNI node daemon and the forwarding `vnfio` executable: same results as in-process, safe fallbacks.

Every scenario execs the installed `vnfio` console script, as a runtime would, against a real
`vnfio-cni-daemon` process on a per-test socket, in real network namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import (
    BIN,
    EXECUTABLES,
    VNFIO,
    CniDaemonProcess,
    Netns,
    Outcome,
    Scenario,
    assert_no_debris,
    cni_env,
    random_subnet,
    reservation_files,
    settled,
    socket_answers,
    suffix,
)

from cni import client
from cni.daemon import CniDaemon


@pytest.fixture
def daemon(socket_dir: Path) -> Iterator[CniDaemonProcess]:
    with CniDaemonProcess(socket_dir / "cni.sock", workers=4) as running:
        yield running


def vnfio(env: Mapping[str, str], conf: Mapping[str, Any], socket_path: Path, exe: Path = VNFIO, **extra: str
          ) -> Outcome:
    """Exec the node's `vnfio` (or `exe`) like a runtime: env, config on stdin, result on stdout."""
    proc = subprocess.run(
        [str(exe)],
        input=json.dumps(conf).encode(),
        env={**env, "PATH": os.environ.get("PATH", ""), client.SOCKET_ENV: str(socket_path), **extra},
        capture_output=True,
        check=False,
        timeout=60,
    )
    return Outcome(proc.returncode, proc.stdout.decode())


def _shape(result: dict[str, Any]) -> dict[str, Any]:
    """The result with what differs between two pods (names of host veths, MACs, sandbox, address) blanked."""
    shaped = json.loads(json.dumps(result))
    for iface in shaped.get("interfaces", []):
        iface["mac"] = "MAC"
        if iface.get("sandbox"):
            iface["sandbox"] = "NETNS"
        elif iface["name"].startswith("veth"):
            iface["name"] = "HOSTVETH"
    for ip in shaped.get("ips", []):
        ip["address"] = "ADDR/" + ip["address"].split("/")[1]
    return shaped


def _attachment(ns: Netns, ifname: str = "eth0") -> tuple[str, set[str]]:
    link = ns.links()[ifname]
    return link["operstate"], {a for a in ns.addresses(ifname) if not a.startswith("fe80:")}


@pytest.mark.parametrize("mode", ["veth", "bridge", "macvlan"])
def test_daemon_and_in_process_give_the_same_results(world: Scenario, daemon: CniDaemonProcess, mode: str) -> None:
    subnet = str(random_subnet())
    conf = world.mode_conf(mode, subnet, gateway=True)
    absent = daemon.socket.with_name("absent.sock")
    paths = {"daemon": daemon.socket, "in-process": absent}
    shapes, host_names, addresses = {}, set(), set()
    for via, sock in paths.items():
        ns = world.netns()
        cid = f"{via}-{world.tag}"
        added = vnfio(cni_env("ADD", cid, ns.path), conf, sock)
        assert added.code == 0, (via, added.out)
        result = added.json
        shapes[via] = _shape(result)
        address = result["ips"][0]["address"]
        assert address not in addresses
        addresses.add(address)
        assert _attachment(ns) == ("UP", {address}), via
        host_names |= {i["name"] for i in result["interfaces"] if not i.get("sandbox") and i["name"].startswith("veth")}
        checked = vnfio(cni_env("CHECK", cid, ns.path), {**conf, "prevResult": result}, sock)
        assert (checked.code, checked.out) == (0, ""), (via, checked.out)
        deleted = vnfio(cni_env("DEL", cid, ns.path), {**conf, "prevResult": result}, sock)
        assert (deleted.code, deleted.out) == (0, ""), (via, deleted.out)
        assert settled(lambda ns=ns: set(ns.links()) - {"lo"}) == set(), via
    assert shapes["daemon"] == shapes["in-process"]
    assert_no_debris(world, host_names)


def test_errors_are_the_same_through_the_daemon(world: Scenario, daemon: CniDaemonProcess, tmp_path: Path) -> None:
    conf = world.mode_conf("veth", str(random_subnet()), gateway=True)
    missing = f"/run/netns/vnfio-absent-{world.tag}"
    loop = tmp_path / "loop"
    loop.symlink_to(loop)  # exists, cannot be opened (ELOOP): the client does not forward it
    for env, stdin_conf in [
        (cni_env("ADD", "c1", missing), conf),  # no such netns: code 3
        (cni_env("DEL", "c1", missing), conf),  # DEL succeeds without its netns
        (cni_env("ADD", "c1", str(loop)), conf),  # unopenable: code 8
        (cni_env("ADD", "c1", str(tmp_path)), conf),  # a directory, not a netns: code 8
        (cni_env("ADD", "c1", world.netns().path, ifname="x" * 16), conf),  # bad ifname: code 4
        (cni_env("ADD", "c1", world.netns().path), {**conf, "mode": "tunnel"}),  # unknown mode
    ]:
        via_daemon = vnfio(env, stdin_conf, daemon.socket)
        in_process = vnfio(env, stdin_conf, daemon.socket.with_name("absent.sock"))
        assert via_daemon.code != 0 or env["CNI_COMMAND"] == "DEL"
        assert (via_daemon.code, via_daemon.json) == (in_process.code, in_process.json)
    assert reservation_files(world.data_dir) == []


def test_no_daemon_or_a_stale_socket_falls_back_in_process(world: Scenario, socket_dir: Path) -> None:
    conf = world.mode_conf("veth", str(random_subnet()), gateway=True)
    stale = socket_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))  # bound, never listening: connect() gets ECONNREFUSED
    for sock in (socket_dir / "absent.sock", stale):
        ns = world.netns()
        added = vnfio(cni_env("ADD", "c1", ns.path), conf, sock)
        assert added.code == 0, added.out
        assert _attachment(ns)[0] == "UP"
        assert vnfio(cni_env("DEL", "c1", ns.path), conf, sock).code == 0
    assert reservation_files(world.data_dir) == []


def test_a_silent_daemon_is_given_up_on_before_go_so_the_work_runs_exactly_once(
    world: Scenario, socket_dir: Path
) -> None:
    """A daemon that accepts the connection but never answers: the client does the ADD itself, and never sends GO,
    so a daemon that wakes up late would drop the request instead of running it a second time."""
    conf = world.mode_conf("veth", str(random_subnet()), gateway=True)
    path = socket_dir / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    late: dict[str, bytes] = {}

    def wake_up_late() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while len(data) < client.HEADER_SIZE:
                data += conn.recv(65536)
            time.sleep(1.0)  # well past the client's 0.3 s deadline
            with contextlib.suppress(OSError):
                conn.sendall(client.ACCEPTED)
            conn.settimeout(10)
            try:
                late["after accept"] = conn.recv(1)
            except OSError as exc:
                late["after accept"] = repr(exc).encode()

    sleeper = threading.Thread(target=wake_up_late)
    sleeper.start()
    ns = world.netns()
    try:
        added = vnfio(cni_env("ADD", "c1", ns.path), conf, path, VNFIO_CNI_TIMEOUT="0.3")
        sleeper.join(15)
    finally:
        listener.close()
    assert added.code == 0, added.out
    assert _attachment(ns)[0] == "UP"
    assert late["after accept"] in (b"", b"ConnectionResetError(104, 'Connection reset by peer')")  # never GO
    assert vnfio(cni_env("DEL", "c1", ns.path), conf, path).code == 0


def _serve_once(listener: socket.socket, answer: bytes) -> threading.Thread:
    """A fake daemon that takes one request, accepts it, reads GO, then `answer`s and hangs up."""

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while len(data) < client.HEADER_SIZE:
                data += conn.recv(65536)
            conn.sendall(client.ACCEPTED)
            assert conn.recv(1) == client.GO
            conn.sendall(answer)

    thread = threading.Thread(target=serve)
    thread.start()
    return thread


@pytest.mark.parametrize("executable", EXECUTABLES)
def test_a_daemon_lost_after_go_fails_add_with_try_again_but_repeats_del(
    world: Scenario, socket_dir: Path, executable: str
) -> None:
    exe = EXECUTABLES[executable]
    conf = world.mode_conf("veth", str(random_subnet()), gateway=True)
    path = socket_dir / "dying.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(4)
        ns = world.netns()
        dying = _serve_once(listener, b"")
        added = vnfio(cni_env("ADD", "c1", ns.path), conf, path, exe)
        dying.join(10)
        assert added.code != 0
        assert added.error_code == 11
        assert added.json["cniVersion"] == "1.1.0"
        assert set(ns.links()) == {"lo"}  # the fake daemon did nothing, and the client did not redo it
        dying = _serve_once(listener, b"\0\0")  # half an answer, then gone
        deleted = vnfio(cni_env("DEL", "c1", ns.path), conf, path, exe)
        dying.join(10)
        assert (deleted.code, deleted.out) == (0, "")  # DEL is idempotent: repeated in-process


def test_a_daemon_restart_mid_run_loses_nothing(world: Scenario, socket_dir: Path) -> None:
    subnet = str(random_subnet())
    conf = world.mode_conf("bridge", subnet, gateway=True)
    sock = socket_dir / "cni.sock"
    pods: list[tuple[Netns, str, dict[str, Any]]] = []
    with CniDaemonProcess(sock, workers=4) as first:
        for i in range(3):
            ns = world.netns()
            added = vnfio(cni_env("ADD", f"p{i}", ns.path), conf, sock)
            assert added.code == 0, added.out
            pods.append((ns, f"p{i}", added.json))
        first.stop(signal.SIGKILL)  # no goodbye: a stale socket and possibly held flocks die with it
        assert sock.exists()
        deadline = time.monotonic() + 30
        while socket_answers(sock) and time.monotonic() < deadline:  # its serving processes follow it (PDEATHSIG)
            time.sleep(0.05)
    with CniDaemonProcess(sock, workers=4):
        for i in range(3, 6):
            ns = world.netns()
            added = vnfio(cni_env("ADD", f"p{i}", ns.path), conf, sock)
            assert added.code == 0, added.out
            pods.append((ns, f"p{i}", added.json))
        addresses = [result["ips"][0]["address"] for _, _, result in pods]
        assert len(set(addresses)) == 6
        for ns, _, result in pods:
            assert _attachment(ns)[1] == {result["ips"][0]["address"]}
        for ns, cid, result in pods:
            deleted = vnfio(cni_env("DEL", cid, ns.path), {**conf, "prevResult": result}, sock)
            assert (deleted.code, deleted.out) == (0, "")
    assert_no_debris(world)


def test_parallel_adds_through_the_daemon_get_distinct_addresses(world: Scenario, daemon: CniDaemonProcess) -> None:
    conf = world.mode_conf("bridge", str(random_subnet()), gateway=True)
    namespaces = [world.netns() for _ in range(12)]
    outcomes: dict[int, Outcome] = {}

    def add(i: int) -> None:
        outcomes[i] = vnfio(cni_env("ADD", f"par{i}", namespaces[i].path), conf, daemon.socket)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(len(namespaces))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(outcome.code == 0 for outcome in outcomes.values()), [o.out for o in outcomes.values() if o.code]
    addresses = {outcome.json["ips"][0]["address"] for outcome in outcomes.values()}
    assert len(addresses) == len(namespaces)
    for i, ns in enumerate(namespaces):
        result = outcomes[i].json
        assert vnfio(cni_env("DEL", f"par{i}", ns.path), {**conf, "prevResult": result}, daemon.socket).code == 0
    assert reservation_files(world.data_dir) == []


def test_the_daemon_uses_the_passed_fd_and_never_the_netns_path(world: Scenario, daemon: CniDaemonProcess) -> None:
    """The client runs in a private mount namespace where CNI_NETNS is a bind mount on a private tmpfs: the path
    does not exist for the daemon at all, so only the fd passed over the socket can have reached the netns."""
    conf = world.mode_conf("veth", str(random_subnet()), gateway=True)
    ns = world.netns()
    private_dir = f"/tmp/vnfio-private-{os.getpid()}-{suffix()}"
    private_path = f"{private_dir}/pod-netns"
    os.mkdir(private_dir)
    try:
        script = (
            f"mount -t tmpfs none {private_dir} && touch {private_path} && "
            f"mount --bind {ns.path} {private_path} && exec {VNFIO}"
        )

        def run(command: str, stdin_conf: dict[str, Any]) -> Outcome:
            proc = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                input=json.dumps(stdin_conf).encode(),
                env={**cni_env(command, "c1", private_path), "PATH": os.environ["PATH"],
                     client.SOCKET_ENV: str(daemon.socket)},
                capture_output=True,
                check=False,
                timeout=60,
            )
            return Outcome(proc.returncode, proc.stdout.decode())

        added = run("ADD", conf)
        assert not os.path.exists(private_path)  # the host (and the daemon) never saw it
        assert added.code == 0, added.out
        result = added.json
        assert result["interfaces"][1]["sandbox"] == private_path
        assert _attachment(ns)[1] == {result["ips"][0]["address"]}
        assert run("CHECK", {**conf, "prevResult": result}).code == 0
        assert run("DEL", {**conf, "prevResult": result}).code == 0
        assert settled(lambda: set(ns.links()) - {"lo"}) == set()
    finally:
        os.rmdir(private_dir)
    assert reservation_files(world.data_dir) == []


def test_the_socket_is_root_only_and_a_non_root_peer_is_refused(socket_dir: Path) -> None:
    ran: list[Mapping[str, str]] = []

    def execute(env: Mapping[str, str], stdin: bytes, netns_fd: int | None = None, **_: object) -> tuple[int, str]:
        ran.append(env)
        return 0, "{}\n"

    path = socket_dir / "run" / "cni.sock"
    server = CniDaemon(path, workers=2, execute=execute)
    server.bind()
    serving = threading.Thread(target=server.serve)
    serving.start()
    try:
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert (path.stat().st_uid, path.parent.stat().st_uid) == (0, 0)
        # Open the file modes on purpose, so only the SO_PEERCRED check stands between nobody and the daemon.
        os.chmod(socket_dir, 0o755)
        os.chmod(path.parent, 0o755)
        os.chmod(path, 0o666)
        probe = (
            "import sys\n"
            "from cni import client\n"
            "try:\n"
            "    client.forward({b'CNI_COMMAND': b'ADD'}, b'{}', None, sys.argv[1], 5.0)\n"
            "except client.Refused as exc:\n"
            "    print('REFUSED', exc)\n"
            "else:\n"
            "    print('SERVED')\n"
        )
        # The probe imports a world-readable copy of the client: the checkout itself may sit in a 0700 folder.
        source_dir = socket_dir / "src"
        shutil.copytree(Path(client.__file__).parent, source_dir / "cni", ignore=shutil.ignore_patterns("__pycache__"))
        for entry in (source_dir, *source_dir.rglob("*")):
            os.chmod(entry, 0o755 if entry.is_dir() else 0o644)
        nobody = subprocess.run(
            ["/usr/bin/python3", "-I", "-c", f"import sys; sys.path.insert(0, {str(source_dir)!r})\n" + probe,
             str(path)],
            user=65534,
            group=65534,
            extra_groups=[],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert nobody.stdout.startswith("REFUSED"), nobody.stdout + nobody.stderr
        assert "uid 65534" in nobody.stdout
        assert ran == []
        # Root is served by the same daemon.
        code, out = client.forward({b"CNI_COMMAND": b"ADD"}, b"{}", None, str(path), 5.0)
        assert (code, out) == (0, b"{}\n")
        assert len(ran) == 1
    finally:
        server.stop()
        serving.join(30)
    assert not path.exists()


def test_a_request_withdrawn_before_go_is_not_run(socket_dir: Path) -> None:
    ran: list[Mapping[str, str]] = []
    path = socket_dir / "cni.sock"
    server = CniDaemon(path, workers=1, execute=lambda env, stdin, netns_fd=None, **_: (ran.append(env), (0, ""))[1])
    server.bind()
    serving = threading.Thread(target=server.serve)
    serving.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(path))
            conn.sendall(client.encode_request({b"CNI_COMMAND": b"ADD"}, b"{}"))
            assert conn.recv(1) == client.ACCEPTED
        # Closed without GO. A second, complete request proves the first was dropped rather than queued.
        code, _ = client.forward({b"CNI_COMMAND": b"DEL"}, b"{}", None, str(path), 5.0)
        assert code == 0
        assert [env["CNI_COMMAND"] for env in ran] == ["DEL"]
    finally:
        server.stop()
        serving.join(30)


def test_a_stale_socket_is_replaced_but_a_live_daemon_is_not(socket_dir: Path) -> None:
    path = socket_dir / "cni.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
    with CniDaemonProcess(path, workers=4) as first:
        second = subprocess.run(
            [str(BIN / "vnfio-cni-daemon"), "--socket", str(path)], capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 1
        assert "another daemon is already listening" in second.stderr
        assert socket_answers(path)
        assert first.stop(signal.SIGTERM) == 0
    assert not path.exists()  # a clean SIGTERM shutdown removes its socket


def test_stop_lets_a_running_request_finish(socket_dir: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    def execute(env: Mapping[str, str], stdin: bytes, netns_fd: int | None = None, **_: object) -> tuple[int, str]:
        entered.set()
        release.wait(30)
        return 0, "done\n"

    path = socket_dir / "cni.sock"
    server = CniDaemon(path, workers=1, execute=execute)
    server.bind()
    serving = threading.Thread(target=server.serve)
    serving.start()
    answers: list[tuple[int, bytes]] = []
    requester = threading.Thread(
        target=lambda: answers.append(client.forward({b"CNI_COMMAND": b"ADD"}, b"{}", None, str(path), 5.0))
    )
    requester.start()
    try:
        assert entered.wait(30)
        server.stop()  # what SIGTERM does
        serving.join(0.5)
        assert serving.is_alive()  # still waiting for the request
        assert not path.exists()  # but no longer accepting
    finally:
        release.set()
        requester.join(30)
        serving.join(30)
    assert answers == [(0, b"done\n")]
    assert not serving.is_alive()


def _children(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def test_a_dead_serving_process_is_replaced_and_sigterm_stops_them_all(world: Scenario, socket_dir: Path) -> None:
    conf = world.mode_conf("veth", str(random_subnet()), gateway=True)
    with CniDaemonProcess(socket_dir / "cni.sock", processes=2, workers=4) as daemon:
        assert daemon.proc is not None
        deadline = time.monotonic() + 30
        while len(_children(daemon.proc.pid)) < 2 and time.monotonic() < deadline:  # the socket listens before
            time.sleep(0.05)
        serving = _children(daemon.proc.pid)
        assert len(serving) == 2
        victim = min(serving)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (len(_children(daemon.proc.pid) - {victim}) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        replaced = _children(daemon.proc.pid)
        assert len(replaced) == 2 and victim not in replaced
        for i in range(4):  # whichever process accepts, each request is served
            ns = world.netns()
            added = vnfio(cni_env("ADD", f"s{i}", ns.path), conf, daemon.socket)
            assert added.code == 0, added.out
            assert vnfio(cni_env("DEL", f"s{i}", ns.path), conf, daemon.socket).code == 0
        assert daemon.stop(signal.SIGTERM) == 0
        assert not daemon.socket.exists()
        for pid in replaced:  # checked before the helper's exit would SIGKILL the process group
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_a_request_in_the_first_wire_version_is_still_served(world: Scenario, daemon: CniDaemonProcess) -> None:
    """An older `vnfio` left on a node speaks version 1 (no flags word, the netns as the only fd): a newer daemon
    still serves it, with the pod wired as usual (its delegates then run in the daemon's own mount namespace)."""
    conf = world.mode_conf("veth", str(random_subnet()), gateway=True)
    ns = world.netns()
    env = b"\0".join(f"{k}={v}".encode() for k, v in cni_env("ADD", "v1pod", ns.path).items())
    stdin = json.dumps(conf).encode()
    request = client.MAGIC_V1 + len(env).to_bytes(4, "big") + len(stdin).to_bytes(4, "big") + env + stdin
    netns_fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(30)
            conn.connect(str(daemon.socket))
            socket.send_fds(conn, [request], [netns_fd])
            assert conn.recv(1) == client.ACCEPTED
            conn.sendall(client.GO)
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
    finally:
        os.close(netns_fd)
    code, size = int.from_bytes(answer[:4], "big"), int.from_bytes(answer[4:8], "big")
    assert code == 0 and len(answer) == 8 + size, answer
    result = json.loads(answer[8:])
    assert _attachment(ns)[1] == {result["ips"][0]["address"]}
    assert vnfio(cni_env("DEL", "v1pod", ns.path), conf, daemon.socket).code == 0
    assert reservation_files(world.data_dir) == []
