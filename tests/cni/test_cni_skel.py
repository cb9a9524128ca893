"""The CNI skeleton: environment validation, version negotiation, error JSON, and the commands that need no mode
work (VERSION, GC, STATUS), each through the public entry point, with a debris check on every failure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cni_helpers import (
    Netns,
    Scenario,
    assert_no_debris,
    cni_env,
    random_subnet,
    reservation_files,
    run_vnfio,
)

from cni.request import parse_cni_args
from cni.skel import execute
from cni.versions import SUPPORTED


def _conf(world: Scenario, version: str = "1.1.0", **extra: object) -> dict[str, object]:
    subnet = str(random_subnet())
    return {"cniVersion": version, "name": "skel-test", "type": "vnfio", "mode": "veth",
            "ipam": world.host_local(subnet), **extra}


def _only_lo(ns: Netns) -> bool:
    return set(ns.links()) == {"lo"}


# --- VERSION ---------------------------------------------------------------------------------------------------


def test_version_lists_every_supported_version_and_echoes_the_asked_one() -> None:
    out = run_vnfio({"CNI_COMMAND": "VERSION"}, {"cniVersion": "0.4.0"})
    assert out.code == 0
    assert out.json == {"cniVersion": "0.4.0", "supportedVersions": list(SUPPORTED)}
    assert set(SUPPORTED) >= {"0.3.1", "0.4.0", "1.0.0", "1.1.0"}


def test_version_through_the_executable_ignores_stdin() -> None:
    out = run_vnfio({"CNI_COMMAND": "VERSION"}, b"not json", in_process=False)
    assert out.code == 0
    assert out.json["supportedVersions"] == list(SUPPORTED)


# --- environment -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("drop", "command"),
    [("CNI_CONTAINERID", "ADD"), ("CNI_NETNS", "ADD"), ("CNI_IFNAME", "ADD"), ("CNI_PATH", "ADD"),
     ("CNI_NETNS", "CHECK"), ("CNI_IFNAME", "DEL"), ("CNI_PATH", "GC"), ("CNI_PATH", "STATUS")],
)
def test_a_missing_required_variable_is_code_4_naming_it(world: Scenario, drop: str, command: str) -> None:
    ns = world.netns()
    env = cni_env(command, "ctr1", ns.path)
    env.pop(drop, None)
    out = run_vnfio(env, _conf(world))
    assert out.code != 0
    assert out.error_code == 4
    assert drop in out.json["msg"]
    assert _only_lo(ns)
    assert_no_debris(world)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CNI_COMMAND", "FROB"), ("CNI_CONTAINERID", "-leading-dash"), ("CNI_CONTAINERID", "has space"),
     ("CNI_IFNAME", "a-name-of-16-byt"), ("CNI_IFNAME", "."), ("CNI_IFNAME", ".."), ("CNI_IFNAME", "eth/0"),
     ("CNI_IFNAME", "eth:0"), ("CNI_IFNAME", "eth 0"), ("CNI_ARGS", "FOO=bar"), ("CNI_ARGS", "novalue")],
)
def test_an_invalid_variable_is_code_4_naming_it(world: Scenario, variable: str, value: str) -> None:
    ns = world.netns()
    env = {**cni_env("ADD", "ctr1", ns.path), variable: value}
    out = run_vnfio(env, _conf(world))
    assert out.code != 0
    assert out.error_code == 4
    assert variable in out.json["msg"]
    assert _only_lo(ns)
    assert_no_debris(world)


def test_an_environment_error_is_printed_at_the_configs_version(world: Scenario) -> None:
    out = run_vnfio({"CNI_COMMAND": "ADD"}, _conf(world, "0.4.0"))
    assert out.error_code == 4
    assert out.json["cniVersion"] == "0.4.0"


def test_del_does_not_need_a_netns(world: Scenario) -> None:
    env = cni_env("DEL", "ctr1")
    assert run_vnfio(env, _conf(world)).code == 0


def test_cni_args_ignore_unknown_semantics() -> None:
    assert parse_cni_args("IgnoreUnknown=1;FOO=bar;K8S_POD_NAME=p") == {
        "IgnoreUnknown": "1", "FOO": "bar", "K8S_POD_NAME": "p"}
    assert parse_cni_args("K8S_POD_NAMESPACE=ns;IP=10.1.2.3") == {"K8S_POD_NAMESPACE": "ns", "IP": "10.1.2.3"}
    assert parse_cni_args("") == {}


# --- config and versions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdin", "code"),
    [(b"{", 6), (b"", 6), (b"\xff\xfe", 6), (b"[1, 2]", 7)],
)
def test_undecodable_config(world: Scenario, stdin: bytes, code: int) -> None:
    ns = world.netns()
    out = run_vnfio(cni_env("ADD", "ctr1", ns.path), stdin)
    assert out.code != 0
    assert out.error_code == code
    assert _only_lo(ns)


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "2.0.0", None])
def test_an_unsupported_config_version_is_code_1_listing_the_supported(world: Scenario, version: str | None) -> None:
    ns = world.netns()
    conf = _conf(world)
    if version is None:
        del conf["cniVersion"]  # a missing cniVersion means 0.1.0
    else:
        conf["cniVersion"] = version
    out = run_vnfio(cni_env("ADD", "ctr1", ns.path), conf)
    assert out.code != 0
    assert out.error_code == 1
    assert "1.1.0" in out.json["msg"] and "0.4.0" in out.json["msg"]
    assert _only_lo(ns)
    assert_no_debris(world)


@pytest.mark.parametrize(
    ("extra", "code", "named"),
    [
        ({"mode": "ipvlan"}, 7, "mode"),
        ({"mode": "bogus"}, 7, "mode"),
        ({"mode": None}, 7, "mode"),
        ({"name": ""}, 7, "name"),
        ({"name": "bad/name"}, 7, "name"),
        ({"mtu": "big"}, 7, "mtu"),
        ({"mtu": 70000}, 7, "mtu"),
        ({"mode": "macvlan", "ipMasq": True}, 2, "ipMasq"),
        ({"ipMasq": True, "ipMasqBackend": "iptables"}, 2, "ipMasqBackend"),
        ({"ipam": {"subnet": "10.1.0.0/24"}}, 7, "ipam"),
        ({"runtimeConfig": {"mac": "zz:zz"}}, 7, "runtimeConfig.mac"),
        ({"runtimeConfig": {"ips": ["10.1.1.1/33"]}}, 7, "runtimeConfig.ips"),
        ({"mode": "bridge", "hairpinMode": True, "promiscMode": True}, 7, "hairpinMode"),
        ({"mode": "bridge", "vlan": 5000}, 7, "vlan"),
        ({"mode": "bridge", "isGateway": "yes"}, 7, "isGateway"),
        ({"mode": "bridge", "macspoofchk": 1}, 7, "macspoofchk"),
        ({"mode": "bridge", "bridge": "a-bridge-name-too-long"}, 7, "bridge"),
        ({"mode": "macvlan", "macvlanMode": "source"}, 7, "macvlanMode"),
        ({"mode": "macvlan", "macvlanMode": "bogus"}, 7, "macvlanMode"),
        ({"ipMasq": True, "ipMasqBackend": "bogus"}, 7, "ipMasqBackend"),
        ({"mode": "bridge", "vlanTrunk": [{"id": 5}]}, 2, "vlanTrunk"),
        ({"prevResult": {"ips": [{"address": "not-an-ip"}]}}, 6, "prevResult"),
    ],
)
def test_an_invalid_config_names_key_and_value(world: Scenario, extra: dict[str, object], code: int,
                                               named: str) -> None:
    ns = world.netns()
    conf = {**_conf(world), **extra}
    if conf.get("mode") is None:
        del conf["mode"]
    out = run_vnfio(cni_env("ADD", "ctr1", ns.path), conf)
    assert out.code != 0
    assert out.error_code == code
    assert named in out.json["msg"]
    assert out.json["cniVersion"] == "1.1.0"
    assert _only_lo(ns)
    assert_no_debris(world)


def test_a_bad_subnet_is_an_error_and_leaves_nothing(world: Scenario) -> None:
    ns = world.netns()
    conf = _conf(world)
    conf["ipam"] = world.host_local("10.300.0.0/24")
    out = run_vnfio(cni_env("ADD", "ctr1", ns.path), conf)
    assert out.code != 0
    assert out.error_code == 7
    assert "10.300.0.0/24" in out.json["msg"]
    assert _only_lo(ns)
    assert_no_debris(world)


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1"])
def test_check_is_refused_before_0_4_0(world: Scenario, version: str) -> None:
    ns = world.netns()
    out = run_vnfio(cni_env("CHECK", "ctr1", ns.path), _conf(world, version))
    assert out.error_code == 1
    assert "CHECK" in out.json["msg"]
    assert out.json["cniVersion"] == version


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_and_status_are_refused_before_1_1_0(world: Scenario, command: str) -> None:
    out = run_vnfio(cni_env(command, ifname=""), _conf(world, "1.0.0"))
    assert out.error_code == 1
    assert command in out.json["msg"]


def test_check_needs_prev_result(world: Scenario) -> None:
    ns = world.netns()
    out = run_vnfio(cni_env("CHECK", "ctr1", ns.path), _conf(world))
    assert out.error_code == 7
    assert "prevResult" in out.json["msg"]


# --- netns -----------------------------------------------------------------------------------------------------


def test_add_into_a_missing_netns_fails_and_reserves_nothing(world: Scenario) -> None:
    out = run_vnfio(cni_env("ADD", "ctr1", f"/run/netns/vnfio-absent-{world.tag}"), _conf(world))
    assert out.code != 0
    assert out.error_code == 3
    assert "does not exist" in out.json["msg"]
    assert_no_debris(world)


def test_a_path_that_is_not_a_netns_is_code_8(world: Scenario, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-netns"
    bogus.write_text("")
    out = run_vnfio(cni_env("ADD", "ctr1", str(bogus)), _conf(world))
    assert out.error_code == 8
    assert_no_debris(world)


def test_the_plugins_own_netns_is_refused(world: Scenario) -> None:
    out = run_vnfio(cni_env("ADD", "ctr1", "/proc/self/ns/net"), _conf(world))
    assert out.error_code == 8
    assert "own" in out.json["msg"]
    assert_no_debris(world)


def test_del_with_the_netns_gone_still_releases_ipam(world: Scenario) -> None:
    ns = world.netns()
    conf = _conf(world)
    added = run_vnfio(cni_env("ADD", "ctr1", ns.path), conf)
    assert added.code == 0, added.out
    assert reservation_files(world.data_dir) != []
    ns.close()
    conf["prevResult"] = added.json
    for _ in range(2):  # repeated DELs succeed too
        out = run_vnfio(cni_env("DEL", "ctr1", ns.path), conf)
        assert (out.code, out.out) == (0, "")
    assert_no_debris(world)


def test_del_with_a_stale_netns_path_still_releases_ipam(world: Scenario, tmp_path: Path) -> None:
    """The runtime's netns file can outlive the namespace (an unmounted bind-mount target): DEL must succeed."""
    ns = world.netns()
    conf = _conf(world)
    added = run_vnfio(cni_env("ADD", "ctr1", ns.path), conf)
    assert added.code == 0, added.out
    stale = tmp_path / "netns-file-left-behind"
    stale.write_text("")
    out = run_vnfio(cni_env("DEL", "ctr1", str(stale)), {**conf, "prevResult": added.json})
    assert (out.code, out.out) == (0, "")
    assert reservation_files(world.data_dir) == []
    assert run_vnfio(cni_env("DEL", "ctr1", ns.path), conf).code == 0  # the real one, for the links


def test_an_open_netns_fd_is_used_instead_of_the_path(world: Scenario) -> None:
    """The node daemon passes the pod netns as an fd; CNI_NETNS is then only reported as the sandbox."""
    ns = world.netns()
    conf = _conf(world)
    fd = os.open(ns.path, os.O_RDONLY)
    try:
        env = cni_env("ADD", "ctr1", "/run/netns/as-the-runtime-named-it")
        code, out = execute(env, json.dumps(conf).encode(), netns_fd=fd)
        assert code == 0, out
        result = json.loads(out)
        assert result["interfaces"][1]["sandbox"] == "/run/netns/as-the-runtime-named-it"
        assert "eth0" in ns.links()
        conf["prevResult"] = result
        env = cni_env("DEL", "ctr1", "/run/netns/as-the-runtime-named-it")
        assert execute(env, json.dumps(conf).encode(), netns_fd=fd) == (0, "")
        os.fstat(fd)  # still open: the caller owns it
    finally:
        os.close(fd)
    assert _only_lo(ns)
    assert_no_debris(world)


# --- GC and STATUS ---------------------------------------------------------------------------------------------


def test_gc_releases_what_is_not_in_valid_attachments(world: Scenario) -> None:
    conf = _conf(world)
    keep, drop = world.netns(), world.netns()
    assert run_vnfio(cni_env("ADD", "keep", keep.path), conf).code == 0
    assert run_vnfio(cni_env("ADD", "drop", drop.path), conf).code == 0
    before = reservation_files(world.data_dir)
    gc_conf = {**conf, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    out = run_vnfio(cni_env("GC", ifname=""), gc_conf)
    assert (out.code, out.out) == (0, "")
    after = reservation_files(world.data_dir)
    assert len(after) < len(before)
    assert all("drop" not in p.read_text() for p in after)
    assert any("keep" in p.read_text() for p in after)
    # what remains is released by the normal DEL
    assert run_vnfio(cni_env("DEL", "keep", keep.path), conf).code == 0
    assert run_vnfio(cni_env("DEL", "drop", drop.path), conf).code == 0
    assert_no_debris(world)


def test_status_is_ok_with_room_and_50_when_the_range_is_exhausted(world: Scenario) -> None:
    conf = _conf(world)
    assert run_vnfio(cni_env("STATUS", ifname=""), conf).code == 0
    subnet = random_subnet(30)  # two usable addresses, one of them the gateway
    conf["ipam"] = world.host_local(str(subnet))
    ns = world.netns()
    assert run_vnfio(cni_env("ADD", "ctr1", ns.path), conf).code == 0
    out = run_vnfio(cni_env("STATUS", ifname=""), conf)
    assert out.error_code == 50
    assert run_vnfio(cni_env("DEL", "ctr1", ns.path), conf).code == 0
    assert_no_debris(world)


def test_status_for_macvlan_with_a_missing_master_is_50(world: Scenario) -> None:
    conf = {**_conf(world), "mode": "macvlan", "master": world.link_name("nomst")}
    out = run_vnfio(cni_env("STATUS", ifname=""), conf)
    assert out.error_code == 50
    assert conf["master"] in out.json["msg"]
