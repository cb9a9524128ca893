"""IPv6 link-local addresses on attachments that do not use IPv6 (`ipv6LinkLocal`), on a real kernel.

By default a pod interface that IPAM gives no IPv6 address comes up without a link-local address
(IFLA_INET6_ADDR_GEN_MODE none), and so does every bridge port and the host end of an IPv4-only veth: IPv6 stays
enabled, but nothing is sent for it. What is asserted is what the kernel shows (`ip -6 addr`, the device's
addr_gen_mode over netlink and in /proc/sys) and what a neighbour pod receives on the bridge.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from cni_helpers import (
    CniDaemonProcess,
    Netns,
    Scenario,
    assert_no_debris,
    cni_env,
    random_subnet,
    random_subnet6,
    run_vnfio,
    subnet_text,
)

from cni.netns import run_in_netns
from cni.rtnl import IN6_ADDR_GEN_MODE_EUI64, IN6_ADDR_GEN_MODE_NONE, Rtnl

ETH_P_IPV6 = 0x86DD
QUIET_WINDOW = 2.5  # seconds a silent interface is listened to: the kernel's DAD and MLD start within ~1 s of up
CHATTER_TIMEOUT = 5.0


def _ipv6_addresses(ns: Netns | None, ifname: str) -> set[str]:
    """The interface's IPv6 addresses, tentative ones included, as `ip` shows them."""
    import json
    import subprocess

    argv = ["ip", *(["-n", ns.name] if ns else []), "-j", "-6", "addr", "show", "dev", ifname]
    data = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
    return {f"{a['local']}/{a['prefixlen']}" for entry in data for a in entry.get("addr_info", [])}


def _link_local(ns: Netns | None, ifname: str) -> set[str]:
    return {a for a in _ipv6_addresses(ns, ifname) if a.startswith("fe80:")}


def _appears(probe: Callable[[], set[str]], timeout: float = 10.0) -> set[str]:
    """`probe()` once it comes back non-empty (the kernel adds a link-local address when the carrier is up, which
    may follow the ADD's answer), or its empty answer after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := probe()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def _proc_sys(ns: Netns, path: str) -> str:
    def body() -> str:
        with open(f"/proc/sys/{path}") as f:
            return f.read().strip()

    return ns.run(body)


def _host_end(result: dict[str, Any]) -> str:
    """The host veth of a bridge or veth result (the first interface without a sandbox that is not the bridge)."""
    return next(i["name"] for i in result["interfaces"] if not i.get("sandbox") and i["name"].startswith("veth"))


# --- the netlink primitive ---------------------------------------------------------------------------------------


def test_addr_gen_mode_set_over_netlink_is_what_proc_sys_shows(world: Scenario) -> None:
    ns = world.netns()
    ns.ip("link", "add", "lla", "type", "veth", "peer", "name", "llb")
    assert _proc_sys(ns, "net/ipv6/conf/lla/addr_gen_mode") == str(IN6_ADDR_GEN_MODE_EUI64)

    def body() -> None:
        rtnl = Rtnl()
        try:
            rtnl.set_ipv6_addr_gen_mode(IN6_ADDR_GEN_MODE_NONE, name="lla")  # by name, as a bridge port is set
        finally:
            rtnl.close()

    ns.run(body)
    assert _proc_sys(ns, "net/ipv6/conf/lla/addr_gen_mode") == str(IN6_ADDR_GEN_MODE_NONE)
    assert _proc_sys(ns, "net/ipv6/conf/llb/addr_gen_mode") == str(IN6_ADDR_GEN_MODE_EUI64), "only the link asked for"
    ns.ip("link", "set", "lla", "up")
    ns.ip("link", "set", "llb", "up")
    assert _appears(lambda: _link_local(ns, "llb")), "the untouched end makes its fe80:: address"
    assert _link_local(ns, "lla") == set(), "the silenced end makes none"


# --- what each mode leaves on the kernel -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bridge", "veth", "macvlan"])
def test_an_ipv4_only_pod_has_ipv6_on_but_no_link_local(world: Scenario, mode: str) -> None:
    conf = world.mode_conf(mode, str(random_subnet()))
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod", ns.path), conf)
    assert added.code == 0, added.out
    assert _ipv6_addresses(ns, "eth0") == set()
    assert _proc_sys(ns, "net/ipv6/conf/eth0/disable_ipv6") == "0", "IPv6 itself stays enabled"
    assert _proc_sys(ns, "net/ipv6/conf/eth0/addr_gen_mode") == "1"
    if mode != "macvlan":
        host = _host_end(added.json)
        assert _link_local(None, host) == set(), f"host end {host} made a link-local address"
    assert ns.links()["eth0"]["operstate"] in ("UP", "UNKNOWN")
    assert run_vnfio(cni_env("DEL", "pod", ns.path), conf).code == 0


@pytest.mark.parametrize("mode", ["bridge", "veth", "macvlan"])
def test_ipv6_link_local_true_keeps_the_kernels_default(world: Scenario, mode: str) -> None:
    conf = world.mode_conf(mode, str(random_subnet()), ipv6LinkLocal=True)
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod", ns.path), conf)
    assert added.code == 0, added.out
    assert _proc_sys(ns, "net/ipv6/conf/eth0/addr_gen_mode") == "0"
    assert len(_appears(lambda: _link_local(ns, "eth0"))) == 1
    if mode != "macvlan":
        host = _host_end(added.json)
        assert _appears(lambda: _link_local(None, host)), f"host end {host} has no link-local"
    assert run_vnfio(cni_env("DEL", "pod", ns.path), conf).code == 0


def test_a_dual_stack_bridge_pod_keeps_its_link_local_and_the_port_has_none(world: Scenario) -> None:
    conf = world.mode_conf("bridge", str(random_subnet()), str(random_subnet6()), gateway=True)
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod", ns.path), conf)
    assert added.code == 0, added.out
    assert _link_local(ns, "eth0"), "an IPv6 pod needs its link-local address (neighbour discovery, routers)"
    assert any(a.startswith("fd") for a in _ipv6_addresses(ns, "eth0"))
    assert _link_local(None, _host_end(added.json)) == set(), "a bridge port never uses an address of its own"
    assert run_vnfio(cni_env("DEL", "pod", ns.path), conf).code == 0


def test_an_attachment_without_ipam_keeps_its_link_local(world: Scenario) -> None:
    """No IPAM: the workload configures the interface itself, perhaps over IPv6, so the kernel's default stays."""
    conf = world.mode_conf("bridge")
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod", ns.path), conf)
    assert added.code == 0, added.out
    assert _appears(lambda: _link_local(ns, "eth0"))
    assert run_vnfio(cni_env("DEL", "pod", ns.path), conf).code == 0


def test_an_ipv6_link_local_that_is_not_a_boolean_is_code_7_and_leaves_nothing(world: Scenario) -> None:
    subnet = random_subnet()
    conf = world.mode_conf("bridge", str(subnet), ipv6LinkLocal="no")
    ns = world.netns()
    added = run_vnfio(cni_env("ADD", "pod", ns.path), conf)
    assert added.code == 1 and added.error_code == 7, added.out
    assert "ipv6LinkLocal" in added.json["msg"] and "'no'" in added.json["msg"]
    assert set(ns.links()) == {"lo"}
    assert_no_debris(world, {conf["bridge"]}, subnet_text(subnet))


# --- on the wire -------------------------------------------------------------------------------------------------


def _ipv6_sniffer(ns: Netns) -> socket.socket:
    """A packet socket for IPv6 frames on `ns`'s eth0."""
    fd = os.open(ns.path, os.O_RDONLY)
    try:
        def make() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6))
            sock.bind(("eth0", ETH_P_IPV6))
            return sock

        return run_in_netns(fd, make)
    finally:
        os.close(fd)


@pytest.mark.parametrize("link_local", [None, True])
def test_a_neighbour_on_the_bridge_hears_no_ipv6_from_an_ipv4_only_pod(world: Scenario,
                                                                       link_local: bool | None) -> None:
    """By default the new pod sends nothing over IPv6; with `ipv6LinkLocal: true` the same sniffer hears its DAD or
    router solicitation, so the silence is the pod's, not the sniffer's."""
    extra = {} if link_local is None else {"ipv6LinkLocal": link_local}
    conf = world.mode_conf("bridge", str(random_subnet()), gateway=True, **extra)
    a, b = world.netns(), world.netns()
    assert run_vnfio(cni_env("ADD", "pod-a", a.path), conf).code == 0
    sock = _ipv6_sniffer(a)  # listening before pod B exists: its first frames follow its link-up at once
    try:
        added = run_vnfio(cni_env("ADD", "pod-b", b.path), conf)
        assert added.code == 0, added.out
        mac = bytes.fromhex(added.json["interfaces"][-1]["mac"].replace(":", ""))
        from_b: list[bytes] = []
        deadline = time.monotonic() + (QUIET_WINDOW if link_local is None else CHATTER_TIMEOUT)
        while not (link_local and from_b) and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                frame = sock.recv(2048)
            except TimeoutError:
                break
            if frame[6:12] == mac:
                from_b.append(frame)
    finally:
        sock.close()
    if link_local is None:
        assert from_b == [], f"pod B sent {len(from_b)} IPv6 frames, e.g. {from_b[0][:62].hex() if from_b else ''}"
    else:
        assert from_b, "pod B, with its link-local address, sent no IPv6 frame: the sniffer hears nothing"


def test_the_daemon_path_gives_the_same_quiet_pod(world: Scenario, tmp_path: Any) -> None:
    conf = world.mode_conf("bridge", str(random_subnet()), gateway=True)
    ns = world.netns()
    with CniDaemonProcess(tmp_path / "cni.sock") as daemon:
        added = daemon.run(cni_env("ADD", "pod", ns.path), conf)
        assert added.code == 0, added.out
        assert _ipv6_addresses(ns, "eth0") == set()
        assert _proc_sys(ns, "net/ipv6/conf/eth0/addr_gen_mode") == "1"
        assert _link_local(None, _host_end(added.json)) == set()
        assert daemon.run(cni_env("DEL", "pod", ns.path), conf).code == 0
