"""The announcement at the end of an ADD, on a real kernel: `arp_notify` set over netlink (IFLA_AF_SPEC), the
gratuitous ARP the kernel sends when the pod's MAC is set to itself, and its deferral until after the node daemon's
reply; plus the netlink pieces underneath (per-device IPv4 conf, RTM_GETNETCONF forwarding, `Rtnl.dup`).

What is asserted is what the kernel shows: /proc/sys of the pod's netns, and ARP frames captured by an AF_PACKET
socket on a neighbour pod's interface.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import CniDaemonProcess, Netns, Outcome, Scenario, cni_env, random_subnet, run_vnfio

from cni import deferred
from cni.netns import run_in_netns
from cni.rtnl import IPV4_DEVCONF_ARP_NOTIFY, Rtnl

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
NO_ARP_WINDOW = 0.2  # how long a frame that must not come is waited for
ARP_TIMEOUT = 2.0  # how long a frame that must come is waited for


# --- helpers -----------------------------------------------------------------------------------------------------


def _read(ns: Netns, path: str) -> str:
    """A /proc/sys entry as the pod sees it (/proc/sys/net follows the reading thread's netns)."""

    def body() -> str:
        with open(f"/proc/sys/{path}") as f:
            return f.read().strip()

    return ns.run(body)


def _write(ns: Netns, path: str, value: str) -> None:
    def body() -> None:
        with open(f"/proc/sys/{path}", "w") as f:
            f.write(value)

    ns.run(body)


def _ipv4_conf(ns: Netns, ifname: str) -> dict[int, int]:
    """The device's IPv4 conf read through an rtnetlink socket made inside `ns`."""

    def body() -> dict[int, int]:
        rtnl = Rtnl()
        try:
            return rtnl.ipv4_conf(socket.if_nametoindex(ifname))
        finally:
            rtnl.close()

    return ns.run(body)


def _bridge_conf(world: Scenario, bridge: str, subnet: ipaddress.IPv4Network) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": f"an{world.tag}", "type": "vnfio", "mode": "bridge", "bridge": bridge,
            "isGateway": True, "ipam": world.host_local(str(subnet))}


def _pod_identity(outcome: Outcome) -> tuple[bytes, bytes]:
    """The pod interface's MAC and IPv4 address, as bytes, from an ADD result."""
    assert outcome.code == 0, outcome.out
    result = outcome.json
    mac = bytes.fromhex(result["interfaces"][-1]["mac"].replace(":", ""))
    ip4 = next(ipaddress.ip_interface(ip["address"]).ip for ip in result["ips"] if ":" not in ip["address"])
    return mac, ip4.packed


class ArpSniffer:
    """An AF_PACKET socket for ARP on one interface of a pod, made inside the pod's netns."""

    def __init__(self, ns: Netns, ifname: str = "eth0") -> None:
        fd = os.open(ns.path, os.O_RDONLY)
        try:
            def make() -> socket.socket:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
                sock.bind((ifname, ETH_P_ARP))
                return sock

            self.sock = run_in_netns(fd, make)
        finally:
            os.close(fd)

    def gratuitous_from(self, mac: bytes, ip4: bytes, timeout: float) -> bytes | None:
        """The first gratuitous ARP (broadcast request, sender IP == target IP) whose sender is `mac`/`ip4` within
        `timeout`, or None. Every other frame (ARP of other hosts, replies, our own traffic) is skipped."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                frame = self.sock.recv(2048)
            except TimeoutError:
                return None
            if len(frame) < 42 or frame[12:14] != struct.pack("!H", ETH_P_ARP):
                continue
            dst, src = frame[0:6], frame[6:12]
            htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
            sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
            if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4):
                continue
            if sha == mac and spa == ip4:
                assert (dst, src, op, tpa) == (BROADCAST, mac, 1, spa), f"not a gratuitous ARP: {frame[:42].hex()}"
                return frame
        return None

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def bridge_pair(world: Scenario) -> Iterator[tuple[dict[str, Any], Netns, Netns, ArpSniffer]]:
    """Pod A added on a fresh bridge and listening for ARP on its eth0; pod B's netns, not yet added."""
    bridge = world.link_name("br")
    conf = _bridge_conf(world, bridge, random_subnet())
    a, b = world.netns(), world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", a.path), conf)
    assert added.code == 0, added.out
    sniffer = ArpSniffer(a)
    try:
        yield conf, a, b, sniffer
    finally:
        sniffer.close()


# --- 1. rtnl -----------------------------------------------------------------------------------------------------


def test_ipv4_conf_round_trip_matches_proc_sys(world: Scenario) -> None:
    """set_ipv4_conf writes the very sysctl /proc/sys shows, and ipv4_conf reads what /proc/sys wrote."""
    ns = world.netns()
    ns.ip("link", "add", "vta", "type", "veth", "peer", "name", "vtb")
    path = "net/ipv4/conf/vta/arp_notify"
    assert _read(ns, path) == "0"

    def set_to(value: int) -> dict[int, int]:
        def body() -> dict[int, int]:
            rtnl = Rtnl()
            try:
                index = socket.if_nametoindex("vta")
                rtnl.set_ipv4_conf(index, {IPV4_DEVCONF_ARP_NOTIFY: value})
                return rtnl.ipv4_conf(index)
            finally:
                rtnl.close()

        return ns.run(body)

    assert set_to(1)[IPV4_DEVCONF_ARP_NOTIFY] == 1
    assert _read(ns, path) == "1"
    assert _read(ns, "net/ipv4/conf/vtb/arp_notify") == "0", "only the device asked for"
    assert set_to(0)[IPV4_DEVCONF_ARP_NOTIFY] == 0
    assert _read(ns, path) == "0"

    _write(ns, path, "1")
    assert _ipv4_conf(ns, "vta")[IPV4_DEVCONF_ARP_NOTIFY] == 1
    # another entry at its number too: forwarding is IPV4_DEVCONF_FORWARDING = 1
    _write(ns, "net/ipv4/conf/vta/forwarding", "1")
    assert _ipv4_conf(ns, "vta")[1] == 1


def _forwarding(ns: Netns | None, family: int) -> bool:
    def body() -> bool:
        rtnl = Rtnl()
        try:
            return rtnl.forwarding(family)
        finally:
            rtnl.close()

    return body() if ns is None else ns.run(body)


def test_forwarding_equals_proc_sys_in_the_host_and_follows_it_in_a_netns(world: Scenario) -> None:
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        host4 = f.read().strip() == "1"
    with open("/proc/sys/net/ipv6/conf/all/forwarding") as f:
        host6 = f.read().strip() == "1"
    assert _forwarding(None, 4) == host4
    assert _forwarding(None, 6) == host6

    ns = world.netns()  # both values seen, without touching the host's
    for path, family in (("net/ipv4/ip_forward", 4), ("net/ipv6/conf/all/forwarding", 6)):
        for value in ("1", "0", "1"):
            _write(ns, path, value)
            assert _forwarding(ns, family) == (value == "1"), (path, value)
    _write(ns, "net/ipv4/ip_forward", "0")
    assert (_forwarding(ns, 4), _forwarding(ns, 6)) == (False, True), "the families are read apart"


def test_dup_outlives_the_original_and_both_closes_leave_no_fd() -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    original = Rtnl()
    copy = original.dup()
    assert original.ipv4_conf(1) == copy.ipv4_conf(1)  # lo, used in turn on the shared socket
    original.close()
    conf = copy.ipv4_conf(1)
    assert conf and conf[1] in (0, 1)
    assert copy.forwarding(4) == _forwarding(None, 4)
    copy.close()
    assert sorted(os.listdir("/proc/self/fd")) == before


# --- 2. deferred -------------------------------------------------------------------------------------------------


def test_later_runs_at_once_outside_collecting() -> None:
    ran: list[str] = []
    deferred.later(lambda: ran.append("now"))
    assert ran == ["now"]


def test_collecting_queues_until_run() -> None:
    ran: list[int] = []
    with deferred.collecting() as actions:
        deferred.later(lambda: ran.append(1))
        deferred.later(lambda: ran.append(2))
        assert ran == []
    assert ran == [] and len(actions) == 2
    deferred.later(lambda: ran.append(0))  # the block is over: at once again
    assert ran == [0]
    deferred.run(actions)
    assert ran == [0, 1, 2]


def test_a_failing_action_is_logged_and_the_next_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("no such device")

    with deferred.collecting() as actions:
        deferred.later(boom)
        deferred.later(lambda: ran.append("after"))
    with caplog.at_level(logging.WARNING, logger="cni.deferred"):
        deferred.run(actions)
    assert ran == ["after"]
    failures = [r for r in caplog.records if r.name == "cni.deferred" and r.levelno == logging.WARNING]
    assert len(failures) == 1 and failures[0].exc_info and isinstance(failures[0].exc_info[1], RuntimeError)


def test_collecting_is_per_thread() -> None:
    ran_in: list[int] = []
    with deferred.collecting() as actions:
        worker = threading.Thread(target=lambda: deferred.later(lambda: ran_in.append(threading.get_ident())))
        worker.start()
        worker.join()
        assert worker.ident is not None and ran_in == [worker.ident], "another thread's action ran there, at once"
        deferred.later(lambda: ran_in.append(threading.get_ident()))
    assert len(actions) == 1 and ran_in == [worker.ident]
    deferred.run(actions)
    assert ran_in == [worker.ident, threading.get_ident()]


# --- 3. arp_notify on the pod interface after every mode's ADD ---------------------------------------------------


@pytest.mark.parametrize("mode", ["bridge", "veth", "macvlan"])
def test_arp_notify_is_on_for_the_pod_interface(world: Scenario, mode: str) -> None:
    conf = world.mode_conf(mode, str(random_subnet()))
    ns = world.netns()
    assert _read(ns, "net/ipv4/conf/default/arp_notify") == "0", "a new netns starts with it off"
    added = run_vnfio(cni_env("ADD", "pod", ns.path), conf)
    assert added.code == 0, added.out
    assert _read(ns, "net/ipv4/conf/eth0/arp_notify") == "1"
    assert _ipv4_conf(ns, "eth0")[IPV4_DEVCONF_ARP_NOTIFY] == 1
    assert ns.links()["eth0"]["operstate"] in ("UP", "UNKNOWN")
    assert run_vnfio(cni_env("DEL", "pod", ns.path), conf).code == 0


def test_an_ipv4_only_add_leaves_proc_sys_alone_when_forwarding_is_on(world: Scenario,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The IPv4 path reads forwarding over netlink and sets arp_notify over netlink: no /proc/sys write at all."""
    import cni.netns

    if not _forwarding(None, 4):
        # As any earlier gateway ADD in this run would have (the first ADD on a node writes it, by design).
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")
    written: list[str] = []
    real = cni.netns.write_sysctl

    def spy(path: str, value: str, missing_ok: bool = False) -> None:
        written.append(path)
        real(path, value, missing_ok)

    monkeypatch.setattr(cni.netns, "write_sysctl", spy)
    ns = world.netns()
    conf = world.mode_conf("bridge", str(random_subnet()))
    conf["isGateway"] = True
    added = run_vnfio(cni_env("ADD", "pod", ns.path), conf)
    assert added.code == 0, added.out
    assert written == []
    assert _read(ns, "net/ipv4/conf/eth0/arp_notify") == "1"


# --- 4-6. the gratuitous ARP on the wire -------------------------------------------------------------------------


def test_a_neighbour_sees_the_gratuitous_arp_of_an_in_process_add(bridge_pair: Any) -> None:
    conf, _, b, sniffer = bridge_pair
    added = run_vnfio(cni_env("ADD", "pod-b", b.path), conf)
    mac, ip4 = _pod_identity(added)
    assert sniffer.gratuitous_from(mac, ip4, ARP_TIMEOUT) is not None, "pod A saw no gratuitous ARP from pod B"


def test_the_gratuitous_arp_waits_for_deferred_run(bridge_pair: Any) -> None:
    """Collected, the ADD sends nothing (not at link-up either: arp_notify is set after it); run() sends it."""
    import json

    from cni.skel import execute

    conf, _, b, sniffer = bridge_pair
    with deferred.collecting() as actions:
        code, out = execute(cni_env("ADD", "pod-b", b.path), json.dumps(conf).encode())
    mac, ip4 = _pod_identity(Outcome(code, out))
    # the announcement, and the IPAM store's refill of its spare files (cni.ipam.spares.SparePool)
    assert [a.__qualname__ for a in actions] == ["SparePool.refill", "announce.<locals>.send"]
    assert sniffer.gratuitous_from(mac, ip4, NO_ARP_WINDOW) is None, "pod B announced itself before run()"
    deferred.run(actions)
    assert sniffer.gratuitous_from(mac, ip4, ARP_TIMEOUT) is not None, "run() sent no gratuitous ARP"
    assert b.links()["eth0"]["address"] == mac.hex(":"), "the MAC set to itself is unchanged"


def test_through_the_node_daemon_a_neighbour_sees_the_gratuitous_arp(bridge_pair: Any, socket_dir: Path,
                                                                     tmp_path: Path) -> None:
    """The real daemon process runs the ADD inside `deferred.collecting()` and the announcement after its reply: the
    neighbour still gets it. Its debug log proves it served the ADD (the client would fall back in-process)."""
    from test_cni_daemon import vnfio

    conf, _, b, sniffer = bridge_pair
    with CniDaemonProcess(socket_dir / "cni.sock", log_path=tmp_path / "daemon.log", processes=1, workers=2,
                          log_level="DEBUG") as daemon:
        added = vnfio(cni_env("ADD", "pod-b", b.path), conf, daemon.socket)
        mac, ip4 = _pod_identity(added)
        assert sniffer.gratuitous_from(mac, ip4, ARP_TIMEOUT) is not None, "no gratuitous ARP after the daemon's ADD"
    log_text = daemon.log_text()
    assert "CNI ADD pod-b/eth0: code 0" in log_text, log_text
    assert "deferred work failed" not in log_text and "gratuitous ARP of" not in log_text, log_text
