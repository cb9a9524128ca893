"""DEL inside the node daemon retires the pod's link before the answer and deletes it after (`cni.deferred`).

The kernel's link delete waits for RCU grace periods (20-40 ms) long after the pod has lost the link, so when the
DEL runs inside `deferred.collecting()` (as the daemon runs it) the pod link is only set down and renamed
`vnfiorm<ifindex hex>` before the answer (mode veth: its host end is set down too, taking the host route to the pod
with it); IPAM and nft are done before the answer as ever. The delete runs on `deferred.run`, and sweeps any other
retired link of that netns a killed daemon left. In-process (no collecting), DEL deletes at once.

What is asserted is what the kernel shows: links, flags and routes of the pod netns and the host, and the IPAM
reservation files on disk.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import (
    REPO,
    CniDaemonProcess,
    Netns,
    Outcome,
    Scenario,
    assert_no_debris,
    cni_env,
    host_links_with,
    ping,
    random_subnet,
    reservation_files,
    run_vnfio,
    settled,
)

from cni import deferred
from cni.modes.retire import RETIRED_PREFIX
from cni.skel import execute

MODES = ["bridge", "veth", "macvlan"]


# --- helpers ---------------------------------------------------------------------------------------------------------


def _add(ns: Netns, conf: dict[str, Any], cid: str = "pod-a") -> dict[str, Any]:
    added = run_vnfio(cni_env("ADD", cid, ns.path), conf)
    assert added.code == 0, added.out
    result: dict[str, Any] = added.json
    return result


def _collecting_del(ns: Netns, conf: dict[str, Any], result: dict[str, Any],
                    cid: str = "pod-a") -> tuple[Outcome, list[deferred.Action]]:
    """DEL as the node daemon runs it: inside `deferred.collecting()`; the queued work is returned, not run."""
    env = cni_env("DEL", cid, ns.path)
    with deferred.collecting() as actions:
        code, out = execute(env, json.dumps({**conf, "prevResult": result}).encode())
    return Outcome(code, out), actions


def _host_veth(mode: str, result: dict[str, Any]) -> str:
    """The host end of the pod's veth pair, as the ADD result names it (bridge: after the bridge; veth: first)."""
    host = [iface["name"] for iface in result["interfaces"] if "sandbox" not in iface]
    return host[-1] if mode == "bridge" else host[0]


def _pod_address(result: dict[str, Any]) -> str:
    return str(ipaddress.ip_interface(result["ips"][0]["address"]).ip)


def _is_up(link: dict[str, Any]) -> bool:
    """IFF_UP, the administrative flag (not the carrier)."""
    return "UP" in link["flags"]


def _host_link(name: str) -> dict[str, Any]:
    out = subprocess.run(["ip", "-j", "link", "show", "dev", name], capture_output=True, text=True, check=True)
    link: dict[str, Any] = json.loads(out.stdout)[0]
    return link


def _main_routes_via(ns: Netns, ifname: str) -> list[dict[str, Any]]:
    """Routes of the main table (both families) through `ifname` in `ns`."""
    return [r for family in ("-4", "-6") for r in ns.routes(family) if r.get("dev") == ifname]


def _host_routes_to(address: str) -> list[dict[str, Any]]:
    """Host routes, in any table, whose destination is exactly `address` (as a /32 or bare)."""
    out = subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"], capture_output=True, text=True,
                         check=True).stdout
    return [r for r in json.loads(out or "[]")
            if r.get("dst") in (address, f"{address}/32") and r.get("type", "unicast") == "unicast"]


def _retired(ns: Netns) -> dict[str, dict[str, Any]]:
    return {name: link for name, link in ns.links().items() if name.startswith(RETIRED_PREFIX)}


def _assert_retired_only(ns: Netns, old_index: int) -> str:
    """Right after a collecting DEL: no eth0, exactly one retired link (the old eth0, by index), down, routeless."""
    links = ns.links()
    assert "eth0" not in links, links.keys()
    retired = _retired(ns)
    assert list(retired) == [f"{RETIRED_PREFIX}{old_index:x}"], links.keys()
    (name, link), = retired.items()
    assert link["ifindex"] == old_index
    assert not _is_up(link), link["flags"]
    assert _main_routes_via(ns, name) == []
    assert set(links) == {"lo", name}
    return name


# --- 1. collecting DEL: retired before the answer, deleted by deferred.run -------------------------------------------


@pytest.mark.parametrize("mode", ["bridge", "veth"])
def test_collecting_del_retires_the_link_and_run_deletes_it(world: Scenario, mode: str) -> None:
    conf = world.mode_conf(mode, str(random_subnet()), gateway=True)
    ns = world.netns()
    result = _add(ns, conf)
    old_index = ns.links()["eth0"]["ifindex"]
    assert reservation_files(world.data_dir) != []

    out, actions = _collecting_del(ns, conf, result)
    assert (out.code, out.out) == (0, "")
    _assert_retired_only(ns, old_index)
    assert reservation_files(world.data_dir) == [], "IPAM is released before the answer"
    assert actions, "the delete is queued"

    deferred.run(actions)
    assert set(ns.links()) == {"lo"}
    assert host_links_with({_host_veth(mode, result)}) == set()
    assert_no_debris(world)


def test_collecting_del_strips_a_macvlan_and_run_deletes_it(world: Scenario) -> None:
    """A macvlan is retired without being taken down (that waits for a whole RCU grace period under the rtnl
    lock): renamed, still up, but with no address left to answer for; deferred.run deletes it."""
    conf = world.mode_conf("macvlan", str(random_subnet()), gateway=True)
    ns = world.netns()
    result = _add(ns, conf)
    old_index = ns.links()["eth0"]["ifindex"]
    out, actions = _collecting_del(ns, conf, result)
    assert (out.code, out.out) == (0, "")
    links = ns.links()
    assert set(links) == {"lo", f"{RETIRED_PREFIX}{old_index:x}"}, links.keys()
    retired = f"{RETIRED_PREFIX}{old_index:x}"
    assert links[retired]["ifindex"] == old_index
    assert {a for a in ns.addresses(retired) if not a.startswith("fe80:")} == set()
    # Its IPv4 routes went with its address; only the kernel's own link-local route is left.
    assert [r["dst"] for r in _main_routes_via(ns, retired)] in ([], ["fe80::/64"])
    assert reservation_files(world.data_dir) == []
    deferred.run(actions)
    assert set(ns.links()) == {"lo"}
    assert_no_debris(world)


# --- 2./3. a new ADD of the same pod before the deferred delete ------------------------------------------------------


@pytest.mark.parametrize("mode", ["veth", "bridge"])
def test_a_new_add_before_the_deferred_delete_is_left_intact(world: Scenario, mode: str) -> None:
    conf = world.mode_conf(mode, str(random_subnet()), gateway=True)
    ns = world.netns()
    first = _add(ns, conf)
    old_index = ns.links()["eth0"]["ifindex"]
    old_host = _host_veth(mode, first)
    old_address = _pod_address(first)

    out, actions = _collecting_del(ns, conf, first)
    assert (out.code, out.out) == (0, "")
    retired = _assert_retired_only(ns, old_index)
    if mode == "veth":
        # the host end is down, and with it the host route to the pod: the address may be given out at once
        assert not _is_up(_host_link(old_host)), _host_link(old_host)["flags"]
        assert _host_routes_to(old_address) == []

    second = _add(ns, conf)  # same container, same netns, before deferred.run; same IPAM: maybe the same address
    new_host = _host_veth(mode, second)
    assert new_host != old_host
    new_address = second["ips"][0]["address"]
    gateway = second["ips"][0]["gateway"]

    def intact() -> None:
        links = ns.links()
        assert _is_up(links["eth0"]), links["eth0"]["flags"]
        assert links["eth0"]["ifindex"] != old_index
        assert new_address in ns.addresses("eth0")
        assert _is_up(_host_link(new_host))
        if mode == "veth":
            assert [r["dev"] for r in _host_routes_to(_pod_address(second))] == [new_host]
        assert ping(ns, gateway), f"the new attachment cannot reach its gateway {gateway}"

    intact()
    assert set(ns.links()) == {"lo", "eth0", retired}

    deferred.run(actions)
    assert set(ns.links()) == {"lo", "eth0"}, "only the retired link goes"
    assert host_links_with({old_host, new_host}) == {new_host}
    intact()

    final = run_vnfio(cni_env("DEL", "pod-a", ns.path), {**conf, "prevResult": second})
    assert (final.code, final.out) == (0, "")
    assert set(ns.links()) == {"lo"}
    assert host_links_with({old_host, new_host}) == set()
    assert_no_debris(world)


# --- 4. what a killed daemon left is swept by the next DEL -----------------------------------------------------------

_KILLED_DAEMON_DEL = """
import json, os, sys
from cni import deferred
from cni.skel import execute
with deferred.collecting() as actions:
    code, out = execute(json.loads(sys.argv[1]), sys.stdin.buffer.read())
sys.stdout.write(json.dumps([code, out, len(actions)]))
sys.stdout.flush()
os._exit(0)  # killed before its reply was sent: the queued delete never runs
"""


@pytest.mark.parametrize("second_del", ["in-process", "collecting"])
def test_a_link_a_killed_daemon_retired_is_swept_by_the_next_del(world: Scenario, second_del: str) -> None:
    conf = world.mode_conf("veth", str(random_subnet()), gateway=True)
    ns = world.netns()
    first = _add(ns, conf)
    old_index = ns.links()["eth0"]["ifindex"]
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_DAEMON_DEL, json.dumps(cni_env("DEL", "pod-a", ns.path))],
        input=json.dumps({**conf, "prevResult": first}).encode(), capture_output=True, check=False, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    code, out, queued = json.loads(proc.stdout)
    assert (code, out) == (0, "") and queued >= 1
    retired = _assert_retired_only(ns, old_index)  # the process is gone, the retired link stays
    assert host_links_with({_host_veth("veth", first)}) == {_host_veth("veth", first)}

    second = _add(ns, conf)
    assert set(ns.links()) == {"lo", "eth0", retired}
    if second_del == "in-process":
        deleted = run_vnfio(cni_env("DEL", "pod-a", ns.path), {**conf, "prevResult": second})
    else:
        deleted, actions = _collecting_del(ns, conf, second)
        deferred.run(actions)
    assert (deleted.code, deleted.out) == (0, "")
    assert set(ns.links()) == {"lo"}, "the leftover retired link is swept"
    hosts = {_host_veth("veth", first), _host_veth("veth", second)}
    assert host_links_with(hosts) == set()
    assert_no_debris(world)


# --- 5. in-process DEL deletes at once -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_in_process_del_deletes_at_once(world: Scenario, mode: str) -> None:
    conf = world.mode_conf(mode, str(random_subnet()), gateway=True)
    ns = world.netns()
    result = _add(ns, conf)
    out = run_vnfio(cni_env("DEL", "pod-a", ns.path), {**conf, "prevResult": result})
    assert (out.code, out.out) == (0, "")
    assert set(ns.links()) == {"lo"}
    if mode != "macvlan":
        assert host_links_with({_host_veth(mode, result)}) == set()
    assert_no_debris(world)


# --- 6. through the real node daemon ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["veth", "bridge"])
def test_del_through_the_daemon_deletes_after_its_answer(world: Scenario, socket_dir: Path, tmp_path: Path,
                                                         mode: str) -> None:
    conf = world.mode_conf(mode, str(random_subnet()), gateway=True)
    ns = world.netns()
    with CniDaemonProcess(socket_dir / "cni.sock", log_path=tmp_path / "daemon.log", processes=1, workers=2,
                          log_level="DEBUG") as daemon:
        added = daemon.run(cni_env("ADD", "pod-a", ns.path), conf)
        assert added.code == 0, added.out
        host = _host_veth(mode, added.json)
        deleted = daemon.run(cni_env("DEL", "pod-a", ns.path), {**conf, "prevResult": added.json})
        assert (deleted.code, deleted.out) == (0, "")
        assert "eth0" not in ns.links(), "the pod's link is out of CNI_IFNAME's way by the answer"
        assert reservation_files(world.data_dir) == []
        assert settled(lambda: set(ns.links()) - {"lo"}) == set()
        assert settled(lambda: host_links_with({host})) == set()
        log_text = daemon.log_text()
    assert " WARNING " not in log_text, log_text
    assert "deferred work failed" not in log_text and "could not retire" not in log_text, log_text
    assert_no_debris(world)
