"""Hostile paths and names: refused with a clear error, nothing wired, nothing written outside `dataDir`.

CNI_NETNS that is a regular file, a directory, a device, a FIFO, a unix socket, another kind of namespace, the
host's own network namespace (directly or through a symlink) or nothing at all; CNI_IFNAME, CNI_CONTAINERID and
the network name carrying path characters or too long. Each goes through an executable a node may run (the static
`vnfio`, whose fallback is `vnfio-inproc`, and the Python start-up path), once forwarding to a running
`vnfio-cni-daemon` (which gets the opened netns as a file descriptor) and once without a daemon.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import (
    EXECUTABLES,
    CniDaemonProcess,
    Outcome,
    Scenario,
    cni_env,
    pod_links,
    random_subnet,
    reservation_files,
    suffix,
)

from cni import client

pytestmark = pytest.mark.hardening  # attacks and faults: tried as an attacker or a careless operator would

INVALID_ENV, UNKNOWN_CONTAINER, INVALID_CONFIG, INVALID_NETNS = 4, 3, 7, 8


@dataclass(frozen=True)
class Hostile:
    """One hostile input: what to change in a valid ADD, the code it must get, and a word the message must say."""

    label: str
    env: dict[str, str | None]
    conf: dict[str, Any]
    code: int
    says: str
    commands: tuple[str, ...] = ("ADD", "DEL", "CHECK")


def netns_cases(tmp: Path) -> list[Hostile]:
    (tmp / "a-file").write_text("not a namespace\n")
    (tmp / "host-ns").symlink_to("/proc/1/ns/net")
    (tmp / "self-ns").symlink_to("/proc/self/ns/net")
    (tmp / "dir").mkdir()
    os.mkfifo(tmp / "a-fifo")  # opened without O_NONBLOCK, it would hang the executable until a writer came
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(tmp / "a-socket"))  # a socket file cannot be opened at all (ENXIO)
    listening.close()
    return [
        Hostile("netns is a FIFO", {"CNI_NETNS": str(tmp / "a-fifo")}, {}, INVALID_NETNS, "namespace"),
        Hostile("netns is a unix socket", {"CNI_NETNS": str(tmp / "a-socket")}, {}, INVALID_NETNS, "a-socket"),
        Hostile("netns is a regular file", {"CNI_NETNS": str(tmp / "a-file")}, {}, INVALID_NETNS, "namespace"),
        Hostile("netns is a directory", {"CNI_NETNS": str(tmp / "dir")}, {}, INVALID_NETNS, "namespace"),
        Hostile("netns is /dev/null", {"CNI_NETNS": "/dev/null"}, {}, INVALID_NETNS, "namespace"),
        Hostile("netns is a mount namespace", {"CNI_NETNS": "/proc/self/ns/mnt"}, {}, INVALID_NETNS, "namespace"),
        # Refused as "the plugin's own network namespace", or where pid 1 is out of reach, as unopenable.
        Hostile("netns is pid 1's, by symlink", {"CNI_NETNS": str(tmp / "host-ns")}, {}, INVALID_NETNS, "netns"),
        Hostile("netns is /proc/1/ns/net", {"CNI_NETNS": "/proc/1/ns/net"}, {}, INVALID_NETNS, "netns"),
        Hostile("netns is our own, by symlink", {"CNI_NETNS": str(tmp / "self-ns")}, {}, INVALID_NETNS, "own"),
        Hostile("netns does not exist", {"CNI_NETNS": str(tmp / "gone")}, {}, UNKNOWN_CONTAINER, "does not exist"),
        # DEL needs no netns (it releases IPAM): only ADD and CHECK must refuse.
        Hostile("netns is empty", {"CNI_NETNS": ""}, {}, INVALID_ENV, "CNI_NETNS", ("ADD", "CHECK")),
        Hostile("netns unset", {"CNI_NETNS": None}, {}, INVALID_ENV, "CNI_NETNS", ("ADD", "CHECK")),
    ]


IFNAMES = ["/", "a/b", "../eth0", "..", ".", "a b", "a\tb", " eth0", "a:b", "x" * 16, "é" * 8, ""]
CONTAINER_IDS = ["../x", "a/b", "/etc", "-x", ".x", "_x", "a b", "a\nb", "a:b", ""]
NETWORK_NAMES = ["../x", "a/b", "/etc", "..", ".", "-x", "a b", "", "a:b"]


def name_cases() -> list[Hostile]:
    cases = [Hostile(f"ifname {v!r}", {"CNI_IFNAME": v}, {}, INVALID_ENV, "CNI_IFNAME") for v in IFNAMES]
    cases += [Hostile(f"container ID {v[:20]!r}", {"CNI_CONTAINERID": v}, {}, INVALID_ENV, "CNI_CONTAINERID")
              for v in CONTAINER_IDS]
    # Valid characters, but too long for a file name under dataDir: refused up front, before any link exists
    # (CHECK would stop earlier, at its missing prevResult).
    cases.append(Hostile("container ID of 300 bytes", {"CNI_CONTAINERID": "x" * 300}, {}, INVALID_ENV,
                         "CNI_CONTAINERID", ("ADD", "DEL")))
    cases += [Hostile(f"network name {v!r}", {}, {"name": v}, INVALID_CONFIG, "name") for v in NETWORK_NAMES]
    # A trailing newline passes a regex that ends in `$` (issue 17, finding 11). Without IPAM, whose store would
    # refuse it on its own, nothing else stands in the way: the skeleton must.
    cases += [
        Hostile("container ID ending in a newline, L2-only", {"CNI_CONTAINERID": "c1\n"}, {"ipam": None},
                INVALID_ENV, "CNI_CONTAINERID"),
        Hostile("network name ending in a newline, L2-only", {}, {"name": "n1\n", "ipam": None}, INVALID_CONFIG,
                "name"),
        Hostile("mac ending in a newline", {}, {"mac": "02:00:00:00:00:01\n"}, INVALID_CONFIG, "MAC"),
    ]
    cases.append(Hostile("network name of 300 bytes", {}, {"name": "x" * 300}, INVALID_CONFIG, "longer than",
                         ("ADD", "DEL")))
    return cases


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    scenario = Scenario(tmp_path_factory.mktemp("paths"))
    # dataDir two levels down: everything the plugin writes must stay inside it, not in the levels above.
    scenario.data_dir = scenario.data_dir.parent / "var" / "lib" / "ipam"
    try:
        yield scenario
    finally:
        scenario.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CniDaemonProcess]:
    with CniDaemonProcess(log_path=tmp_path_factory.mktemp("paths-daemon") / "daemon.log", processes=1) as running:
        yield running


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


def run(env: dict[str, str], conf: dict[str, Any], socket_path: Path, exe: Path) -> tuple[Outcome, str]:
    proc = subprocess.run([str(exe)], input=json.dumps(conf).encode(), capture_output=True, check=False,
                          timeout=120, env={**env, "PATH": os.environ.get("PATH", ""),
                                            client.SOCKET_ENV: str(socket_path)})
    return Outcome(proc.returncode, proc.stdout.decode()), proc.stderr.decode(errors="replace")


@pytest.mark.parametrize("executable", EXECUTABLES)
@pytest.mark.parametrize("how", ["daemon", "executable"])
def test_hostile_paths_and_names_are_refused_and_nothing_is_wired_or_written(
    world: Scenario, daemon: CniDaemonProcess, tmp_path: Path, how: str, executable: str
) -> None:
    exe = EXECUTABLES[executable]
    pod = world.netns()
    ifname = f"h{suffix()}"  # unique, so a link wired into the host by mistake would be found by name
    bridge = world.link_name("pb")
    conf = {"cniVersion": "1.1.0", "name": f"p{world.tag}", "type": "vnfio", "mode": "bridge", "bridge": bridge,
            "isGateway": True, "ipam": world.host_local(str(random_subnet()))}
    socket_path = daemon.socket if how == "daemon" else tmp_path / "no-daemon.sock"
    root = world.data_dir.parent.parent.parent  # the test's own directory, above dataDir
    before = files_under(root)
    cases = netns_cases(tmp_path) + name_cases()
    for case in cases:
        for command in case.commands:
            env = {**cni_env(command, f"c{world.tag}", pod.path, ifname=ifname), **case.env}
            env = {k: v for k, v in env.items() if v is not None}
            if command == "DEL" and case.code in (INVALID_NETNS, UNKNOWN_CONTAINER):
                continue  # DEL of a netns that is not one (or is gone) releases IPAM only: it may succeed
            outcome, stderr = run(env, {**conf, **case.conf}, socket_path, exe)
            assert "Traceback" not in stderr, (case.label, stderr)
            assert outcome.code != 0 and outcome.error_code == case.code, (case.label, command, outcome.out)
            assert case.says in outcome.json["msg"], (case.label, outcome.json["msg"])
        # Nothing wired anywhere: not in the host, not in the pod, no port, no reservation.
        assert not Path(f"/sys/class/net/{ifname}").exists(), case.label
        assert pod_links(pod) == ["lo"], case.label
        assert not Path(f"/sys/class/net/{bridge}/brif").exists() or os.listdir(f"/sys/class/net/{bridge}/brif") == []
        assert reservation_files(world.data_dir) == [], case.label
    # Refused requests wrote nothing at all, not even dataDir.
    assert files_under(root) == before
    # And the same plugin, with sane input, works: the refusals were about the input, not a broken set-up.
    good = cni_env("ADD", f"c{world.tag}", pod.path, ifname=ifname)
    outcome, _ = run(good, conf, socket_path, exe)
    assert outcome.code == 0, outcome.out
    assert ifname in pod.links() and not Path(f"/sys/class/net/{ifname}").exists()
    assert run({**good, "CNI_COMMAND": "DEL"}, conf, socket_path, exe)[0].code == 0
    assert reservation_files(world.data_dir) == []
    made = {p for p in files_under(root) - before if p not in world.data_dir.parents}  # dataDir's own levels
    assert {p for p in made if world.data_dir not in (p, *p.parents)} == set()


@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_a_fifo_as_netns_does_not_hang_the_in_process_skeleton(world: Scenario, tmp_path: Path, command: str) -> None:
    """Issue 17, finding 11: `cni.skel.execute` opens CNI_NETNS itself when no fd is handed to it (the in-process
    path of a caller that has none); a FIFO there must be refused (code 8; DEL then releases IPAM only), not block
    the open until a writer comes. Run in a child, so the old behaviour shows as a child that never answers."""
    os.mkfifo(tmp_path / "fifo")
    env = cni_env(command, f"c{world.tag}", str(tmp_path / "fifo"))
    conf = {"cniVersion": "1.1.0", "name": f"f{world.tag}", "type": "vnfio", "mode": "veth"}
    code = ("import json, sys; from cni.skel import execute; "
            "c, out = execute(json.loads(sys.argv[1]), sys.argv[2].encode()); print(json.dumps([c, out]))")
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(env), json.dumps(conf)], capture_output=True,
                              text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command} with a FIFO as CNI_NETNS still blocked after 60 s")
    assert proc.returncode == 0, proc.stderr
    exit_code, out = json.loads(proc.stdout)
    if command == "ADD":
        assert (exit_code, json.loads(out)["code"]) == (1, INVALID_NETNS), out
        assert "namespace" in json.loads(out)["msg"]
    else:
        assert exit_code == 0, out
