"""Load and exhaustion: many pods at once on one bridge lose nothing, and a full range fails cleanly.

64 installed `vnfio` executables run at once (ADD, then DEL), through a `vnfio-cni-daemon` and, in a mixed round,
half of them doing the work themselves next to the daemon (the two paths share the IPAM lock across processes).
Every round: zero errors, 64 distinct addresses each on its pod's interface, and nothing left after the DELs.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import (
    VNFIO,
    CniDaemonProcess,
    Netns,
    Outcome,
    Scenario,
    cni_env,
    gated_ipam,
    held_locks,
    pod_links,
    random_subnet,
    reservation_files,
    settled,
    wait_until,
)

from cni import client

pytestmark = pytest.mark.hardening  # attacks and faults: tried as an attacker or a careless operator would

PODS = 64
ROUNDS = ("daemon", "daemon", "daemon", "mixed")


@dataclass
class LoadWorld:
    scenario: Scenario
    pods: list[Netns]
    bridge: str
    conf: dict[str, Any]

    def leftovers(self) -> list[str]:
        found = [f"pod {pod.name} link {name}" for pod in self.pods for name in pod_links(pod) if name != "lo"]
        found += [f"bridge port {port}" for port in bridge_ports(self.bridge)]
        found += [f"reservation {path}" for path in reservation_files(self.scenario.data_dir)]
        found += [f"lock held: {lock}" for lock in held_locks(self.scenario.data_dir)]
        return found


def bridge_ports(bridge: str) -> list[str]:
    try:
        return os.listdir(f"/sys/class/net/{bridge}/brif")
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadWorld]:
    scenario = Scenario(tmp_path_factory.mktemp("load"))
    try:
        bridge = scenario.link_name("lb")
        conf = {"cniVersion": "1.1.0", "name": f"l{scenario.tag}", "type": "vnfio", "mode": "bridge",
                "bridge": bridge, "isGateway": True, "ipam": scenario.host_local(str(random_subnet(24)))}
        yield LoadWorld(scenario, [scenario.netns() for _ in range(PODS)], bridge, conf)
    finally:
        scenario.close()


def vnfio(env: dict[str, str], conf: dict[str, Any], socket_path: Path) -> Outcome:
    proc = subprocess.run([str(VNFIO)], input=json.dumps(conf).encode(), capture_output=True, check=False,
                          timeout=300, env={**env, "PATH": os.environ.get("PATH", ""),
                                            client.SOCKET_ENV: str(socket_path)})
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    return Outcome(proc.returncode, proc.stdout.decode())


def all_at_once(command: str, world: LoadWorld, sockets: list[Path], tag: str) -> list[Outcome]:
    """`command` for every pod at the same moment; pod n goes to sockets[n % len(sockets)]."""
    def one(n: int) -> Outcome:
        env = cni_env(command, f"{tag}-{n}", world.pods[n].path)
        return vnfio(env, world.conf, sockets[n % len(sockets)])

    with ThreadPoolExecutor(max_workers=PODS) as pool:
        return list(pool.map(one, range(len(world.pods))))


@pytest.mark.parametrize("round_no", range(len(ROUNDS)))
def test_64_concurrent_adds_then_dels_on_one_bridge(world: LoadWorld, tmp_path: Path, round_no: int) -> None:
    how = ROUNDS[round_no]
    with CniDaemonProcess(log_path=tmp_path / "daemon.log", processes=2, workers=8) as daemon:
        # mixed: every other pod's executable finds no daemon at its socket path and does the work itself.
        sockets = [daemon.socket] if how == "daemon" else [daemon.socket, tmp_path / "no-daemon.sock"]
        tag = f"r{round_no}{world.scenario.tag}"
        added = all_at_once("ADD", world, sockets, tag)
        errors = [o.out for o in added if o.code != 0]
        assert errors == [], errors
        addresses = [ip["address"] for o in added for ip in o.json["ips"]]
        assert len(addresses) == PODS and len(set(addresses)) == PODS, "duplicate or missing addresses"
        for pod, outcome in zip(world.pods, added, strict=True):
            assert pod.addresses("eth0") >= {ip["address"] for ip in outcome.json["ips"]}
        assert len(bridge_ports(world.bridge)) == PODS
        deleted = all_at_once("DEL", world, sockets, tag)
        assert [o.out for o in deleted if o.code != 0] == []
        assert settled(world.leftovers) == []
    assert "Traceback" not in daemon.log_text()
    sys.__stderr__.write(f"load round {round_no + 1} ({how}): {PODS} concurrent ADDs and {PODS} DELs on one bridge, "
                         f"0 errors, {len(set(addresses))} distinct addresses, nothing left\n")


# --- exhaustion ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["daemon", "in-process"])
def test_a_range_of_n_addresses_serves_n_pods_and_the_next_fails_without_debris(
    world: LoadWorld, tmp_path: Path, how: str
) -> None:
    """A /29 cut to N=4 addresses by rangeStart/rangeEnd: N+2 ADDs at once give N pods an address and fail two with
    the reference's "no IP addresses available" (code 999), leaving neither a link nor a reservation; one more ADD
    later fails the same way, and STATUS says 50 while the range is full."""
    subnet = ipaddress.ip_network(f"{random_subnet(24).network_address}/29")
    hosts = list(subnet.hosts())  # .1 is the gateway
    capacity = 4
    conf = {**world.conf, "name": f"x{world.scenario.tag}", "bridge": world.scenario.link_name("xb"),
            "ipam": {**world.scenario.host_local(), "ranges": [[{"subnet": str(subnet), "rangeStart": str(hosts[1]),
                                                                "rangeEnd": str(hosts[capacity])}]]}}
    pods = world.pods[: capacity + 3]
    with CniDaemonProcess(log_path=tmp_path / "daemon.log", processes=2) as daemon:
        socket_path = daemon.socket if how == "daemon" else tmp_path / "no-daemon.sock"

        def add(n: int) -> Outcome:
            return vnfio(cni_env("ADD", f"x{n}{world.scenario.tag}", pods[n].path), conf, socket_path)

        with ThreadPoolExecutor(max_workers=capacity + 2) as pool:
            outcomes = list(pool.map(add, range(capacity + 2)))
        served = [n for n, o in enumerate(outcomes) if o.code == 0]
        refused = [n for n, o in enumerate(outcomes) if o.code != 0]
        assert len(served) == capacity and len(refused) == 2, [o.out for o in outcomes]
        got = {ipaddress.ip_interface(ip["address"]).ip for n in served for ip in outcomes[n].json["ips"]}
        assert got == set(hosts[1 : capacity + 1])
        for n in refused:
            assert outcomes[n].error_code == 999
            assert "no IP addresses available" in outcomes[n].json["msg"]
            assert pod_links(pods[n]) == ["lo"]
        # One more, alone.
        late = add(capacity + 2)
        assert late.error_code == 999 and "no IP addresses available" in late.json["msg"]
        assert pod_links(pods[capacity + 2]) == ["lo"]
        assert len(bridge_ports(conf["bridge"])) == capacity
        assert len(reservation_files(world.scenario.data_dir)) == capacity
        status = vnfio({"CNI_COMMAND": "STATUS", "CNI_PATH": "/usr/lib/cni"}, conf, socket_path)
        assert status.error_code == 50, status.out
        for n in range(capacity + 3):  # the runtime deletes failed ADDs too
            env = cni_env("DEL", f"x{n}{world.scenario.tag}", pods[n].path)
            assert vnfio(env, conf, socket_path).code == 0
    assert settled(lambda: bridge_ports(conf["bridge"])) == []
    assert reservation_files(world.scenario.data_dir) == []
    assert settled(lambda: [pod.name for pod in pods if pod_links(pod) != ["lo"]]) == []


def test_an_unrelated_del_does_not_wait_behind_slow_delegates(tmp_path: Path, socket_dir: Path) -> None:
    """Issue 17, finding 7: with every worker held by a slow delegated IPAM, the daemon must not accept another
    request it cannot start: the client's timeout (1 s here) runs out and it does the DEL itself, while the slow
    ones are still running. Before, the DEL was accepted and then waited for a worker (5.5 s with a 1 s timeout)."""
    slow = gated_ipam(tmp_path / "cni-bin")
    conf = {"cniVersion": "1.1.0", "name": "slow", "type": "vnfio", "mode": "veth", "ipam": {"type": slow.name}}
    l2 = {"cniVersion": "1.1.0", "name": "l2", "type": "vnfio", "mode": "veth"}
    env = {"PATH": os.environ.get("PATH", ""), client.TIMEOUT_ENV: "1"}
    with CniDaemonProcess(socket_dir / "cni.sock", processes=1, workers=2) as daemon:
        env[client.SOCKET_ENV] = str(daemon.socket)
        held = [subprocess.Popen([str(VNFIO)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 env={**cni_env("DEL", f"slow{n}", path=str(slow.cni_path)), **env})
                for n in range(2)]
        try:
            for proc in held:
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(conf).encode())
                proc.stdin.close()
            assert wait_until(lambda: slow.running() == 2), "the slow delegates never started"
            started = time.monotonic()
            try:
                quick = subprocess.run([str(VNFIO)], input=json.dumps(l2).encode(), capture_output=True, timeout=30,
                                       env={**cni_env("DEL", "unrelated"), **env}, check=False)
            except subprocess.TimeoutExpired:
                pytest.fail("the unrelated DEL was still waiting for a worker after 30 s")
            waited = time.monotonic() - started
            print(f"FIGURE unrelated DEL behind 2 slow delegates (2 workers, VNFIO_CNI_TIMEOUT=1): {waited:.2f} s")
            assert quick.returncode == 0, quick.stdout
            assert [proc.poll() for proc in held] == [None, None], "the slow requests should still be running"
            assert not slow.gate.exists()
        finally:
            slow.open()
            outcomes = [(proc.wait(timeout=60), proc.stdout.read() if proc.stdout else b"") for proc in held]
        assert [proc.returncode for proc in held] == [0, 0], outcomes
    assert "no worker free" in daemon.log_text()
