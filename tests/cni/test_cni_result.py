"""Result records: parsing results and prevResult of every supported version, and printing at the config's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni.errors import CniError
from cni.result import DNS, Interface, IPConfig, Result, Route, parse_result

FULL = Result(
    interfaces=(
        Interface(name="cni0", mac="0a:00:00:00:00:01", mtu=1500),
        Interface(name="veth01234567", mac="0a:00:00:00:00:02", mtu=1500),
        Interface(name="eth0", mac="0a:00:00:00:00:03", sandbox="/run/netns/p", mtu=1450, pci_id="0000:01:00.0"),
    ),
    ips=(
        IPConfig(address="10.1.0.5/24", gateway="10.1.0.1", interface=2),
        IPConfig(address="fd00::5/64", gateway="fd00::1", interface=2),
    ),
    routes=(Route(dst="0.0.0.0/0", gw="10.1.0.1", mtu=1400, priority=10), Route(dst="fd01::/64", scope=253)),
    dns=DNS(nameservers=("10.1.0.10",), domain="cluster.local", search=("svc.cluster.local",), options=("ndots:5",)),
)


def test_1_1_0_keeps_the_new_interface_and_route_fields() -> None:
    out = FULL.to_dict("1.1.0")
    assert out["cniVersion"] == "1.1.0"
    assert out["interfaces"][2] == {"name": "eth0", "mac": "0a:00:00:00:00:03", "sandbox": "/run/netns/p",
                                    "mtu": 1450, "pciID": "0000:01:00.0"}
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400, "priority": 10},
                             {"dst": "fd01::/64", "scope": 253}]
    assert out["ips"][0] == {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2}
    assert out["dns"] == {"nameservers": ["10.1.0.10"], "domain": "cluster.local",
                          "search": ["svc.cluster.local"], "options": ["ndots:5"]}


def test_1_0_0_drops_the_1_1_0_fields() -> None:
    out = FULL.to_dict("1.0.0")
    assert out["interfaces"][2] == {"name": "eth0", "mac": "0a:00:00:00:00:03", "sandbox": "/run/netns/p"}
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "fd01::/64"}]
    assert "version" not in out["ips"][0]


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_before_1_0_0_every_ip_carries_its_version(version: str) -> None:
    out = FULL.to_dict(version)
    assert out["cniVersion"] == version
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert [ip["interface"] for ip in out["ips"]] == [2, 2]


def test_prev_result_of_0_4_0_is_parsed_with_its_version_fields() -> None:
    prev = {
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "eth0", "mac": "0a:00:00:00:00:03", "sandbox": "/run/netns/p"}],
        "ips": [{"version": "4", "address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    }
    result = parse_result(prev, "0.4.0")
    assert result.ips == (IPConfig(address="10.1.0.5/24", gateway="10.1.0.1", interface=0),)
    assert result.to_dict("0.4.0") == prev


def test_prev_result_without_cni_version_takes_the_configs() -> None:
    result = parse_result({"ips": [{"address": "10.1.0.5/24"}]}, "1.0.0")
    assert result.ips[0].address == "10.1.0.5/24"


def test_an_ipam_result_has_no_interfaces_and_no_interface_index() -> None:
    ipam = parse_result({"cniVersion": "1.1.0", "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1"}]},
                        "1.1.0", "IPAM result")
    assert ipam.interfaces == ()
    assert ipam.ips[0].interface is None


@pytest.mark.parametrize(
    "bad",
    [
        {"ips": [{"address": "10.1.0.300/24"}]},
        {"ips": [{"address": "10.1.0.3/24", "gateway": "nope"}]},
        {"ips": [{"gateway": "10.1.0.1"}]},
        {"interfaces": [{"name": "eth0"}], "ips": [{"address": "10.1.0.3/24", "interface": 3}]},
        {"routes": [{"gw": "10.1.0.1"}]},
        {"dns": {"nameservers": "10.0.0.1"}},
        {"interfaces": "eth0"},
        ["not", "an", "object"],
    ],
)
def test_a_malformed_result_is_a_decode_error(bad: object) -> None:
    with pytest.raises(CniError) as err:
        parse_result(bad, "1.1.0")  # type: ignore[arg-type]
    assert err.value.code == 6


def test_a_result_of_an_unsupported_version_is_code_1() -> None:
    with pytest.raises(CniError) as err:
        parse_result({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.5/24"}}, "1.1.0")
    assert err.value.code == 1


_octet = st.integers(min_value=0, max_value=255)


@given(
    addrs=st.lists(st.tuples(_octet, _octet, st.integers(min_value=8, max_value=32)), min_size=1, max_size=4),
    version=st.sampled_from(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]),
)
def test_printing_and_parsing_back_at_any_version_keeps_addresses_and_indexes(
    addrs: list[tuple[int, int, int]], version: str
) -> None:
    result = Result(
        interfaces=(Interface(name="eth0", sandbox="/run/netns/x"),),
        ips=tuple(IPConfig(address=f"10.{a}.{b}.7/{p}", interface=0) for a, b, p in addrs),
    )
    again = parse_result(result.to_dict(version), version)
    assert again.ips == result.ips
    assert again.interfaces == result.interfaces


def test_family_gateways_takes_the_first_gateway_of_each_family() -> None:
    """ADD (routes without `gw`) and CHECK must pick the same gateway when IPAM gives a family two."""
    from cni.result import IPConfig, family_gateways

    ips = [
        IPConfig("10.1.0.5/24"),
        IPConfig("10.1.0.6/24", gateway="10.1.0.1"),
        IPConfig("10.2.0.6/24", gateway="10.2.0.1"),
        IPConfig("fd00::5/64", gateway="fd00::1"),
    ]
    assert family_gateways(ips) == {4: "10.1.0.1", 6: "fd00::1"}
    assert family_gateways([]) == {}
