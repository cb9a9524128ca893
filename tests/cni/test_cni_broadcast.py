"""IPv4 addresses carry their subnet's broadcast (IFA_BROADCAST, `brd` in `ip addr`), as the reference plugins'
do: the pod interface in every mode and the gateway address on a bridge; /31 and /32 have none."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from cni_helpers import Scenario, cni_env, random_subnet, run_vnfio


def _ipv4(entries: list[dict[str, Any]]) -> dict[str, str | None]:
    """address/prefix -> its broadcast (None when it has none), for the IPv4 addresses `ip -j addr` lists."""
    return {f"{a['local']}/{a['prefixlen']}": a.get("broadcast") for e in entries for a in e.get("addr_info", [])
            if a.get("family") == "inet"}


@pytest.mark.parametrize("mode", ["bridge", "macvlan", "veth"])
def test_pod_addresses_carry_the_subnet_broadcast(world: Scenario, mode: str) -> None:
    subnet = random_subnet()
    conf = world.mode_conf(mode, str(subnet), gateway=True)
    pod = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", pod.path), conf)
    assert added.code == 0, added.out
    pod_ip = added.json["ips"][0]["address"]
    assert _ipv4(json.loads(pod.ip("-j", "addr", "show", "dev", "eth0").stdout)) == {
        pod_ip: str(subnet.broadcast_address)}
    if mode == "bridge":
        gateway = f"{added.json['ips'][0]['gateway']}/{subnet.prefixlen}"
        shown = subprocess.run(["ip", "-j", "addr", "show", "dev", conf["bridge"]], capture_output=True, text=True,
                               check=True).stdout
        assert _ipv4(json.loads(shown)) == {gateway: str(subnet.broadcast_address)}
    if mode == "veth":  # the gateway on the host end is a /32: no broadcast
        host_veth = added.json["interfaces"][0]["name"]
        shown = subprocess.run(["ip", "-j", "addr", "show", "dev", host_veth], capture_output=True, text=True,
                               check=True).stdout
        assert _ipv4(json.loads(shown)) == {f"{added.json['ips'][0]['gateway']}/32": None}
    assert run_vnfio(cni_env("DEL", "pod-a", pod.path), conf).code == 0


def test_a_slash_31_pod_address_has_no_broadcast(world: Scenario) -> None:
    subnet = random_subnet(31)
    conf = world.mode_conf("macvlan", ipam={"type": "static", "addresses": [{"address": f"{subnet[1]}/31"}]})
    pod = world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", pod.path), conf)
    assert added.code == 0, added.out
    assert _ipv4(json.loads(pod.ip("-j", "addr", "show", "dev", "eth0").stdout)) == {f"{subnet[1]}/31": None}
    assert run_vnfio(cni_env("DEL", "pod-a", pod.path), conf).code == 0
