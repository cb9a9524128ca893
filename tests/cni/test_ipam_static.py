"""static IPAM: addresses from the config, CNI_ARGS, args.cni.ips and runtimeConfig.ips, and the same answers as
the reference `static` plugin where it is installed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni.errors import INVALID_CONFIG, CniError
from cni.ipam import IpamRequest, ipam_add, ipam_check, ipam_del, ipam_gc, ipam_status

REFERENCE = Path("/usr/lib/cni/static")
BASE = {"type": "static", "addresses": [{"address": "10.60.0.5/24", "gateway": "10.60.0.1"},
                                        {"address": "fd60::5/64"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.60.0.1"}], "dns": {"nameservers": ["10.60.0.53"]}}


def make_request(ipam: dict[str, Any], cni_args: dict[str, str] | None = None, command: str = "ADD",
                 **top: Any) -> IpamRequest:
    netconf = {"cniVersion": "1.1.0", "name": "static-net", "type": "vnfio", "ipam": ipam, **top}
    return IpamRequest(command=command, container_id="pod1", ifname="eth0", netns="/run/netns/x",
                       cni_args=cni_args or {}, cni_path=("/usr/lib/cni",), env={}, netconf=netconf)


def test_addresses_routes_and_dns_from_config() -> None:
    assert ipam_add(make_request(BASE)) == {
        "cniVersion": "1.1.0",
        "ips": [{"address": "10.60.0.5/24", "gateway": "10.60.0.1"}, {"address": "fd60::5/64"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.60.0.1"}],
        "dns": {"nameservers": ["10.60.0.53"]},
    }


def test_cni_args_add_addresses_and_set_gateways() -> None:
    result = ipam_add(make_request(BASE, cni_args={"IP": "10.61.0.9/16,fd61::9/64", "GATEWAY": "10.61.0.1,fd60::1"}))
    assert result["ips"] == [{"address": "10.60.0.5/24", "gateway": "10.60.0.1"},
                             {"address": "fd60::5/64", "gateway": "fd60::1"},
                             {"address": "10.61.0.9/16", "gateway": "10.61.0.1"},
                             {"address": "fd61::9/64"}]


def test_args_and_runtime_config_ips_replace_the_list() -> None:
    result = ipam_add(make_request(BASE, args={"cni": {"ips": ["10.62.0.2/24"]}}))
    assert result["ips"] == [{"address": "10.62.0.2/24"}]
    result = ipam_add(make_request(BASE, args={"cni": {"ips": ["10.62.0.2/24"]}},
                                   runtimeConfig={"ips": ["10.63.0.2/24", "fd63::2/64"]}))
    assert result["ips"] == [{"address": "10.63.0.2/24"}, {"address": "fd63::2/64"}]


@pytest.mark.parametrize(("ipam", "cni_args", "needle"), [
    ({"type": "static", "addresses": [{"address": "10.1.2.3"}]}, {}, "ipam.addresses[0].address"),
    ({"type": "static", "addresses": [{"address": "10.1.2.3/40"}]}, {}, "'10.1.2.3/40'"),
    ({"type": "static", "addresses": [{"address": "10.1.2.3/24", "gateway": "bogus"}]}, {},
     "ipam.addresses[0].gateway"),
    ({"type": "static"}, {"IP": "10.1.2.3"}, "CNI_ARGS IP"),
    ({"type": "static"}, {"IP": "10.1.2.3/24", "GATEWAY": "x"}, "CNI_ARGS GATEWAY"),
    ({"type": "static", "adresses": []}, {}, "unknown static ipam key 'adresses'"),
    ({"type": "static", "dns": {"servers": ["1.1.1.1"]}}, {}, "ipam.dns"),
    ({"type": "static", "routes": [{"dst": "nowhere"}]}, {}, "ipam.routes[0].dst"),
    ({"type": "static", "routes": [{"dst": "10.0.0.0/8", "mtu": "big"}]}, {}, "ipam.routes[0].mtu"),
    ({"type": "static", "dns": {"nameservers": "1.1.1.1"}}, {}, "ipam.dns.nameservers"),
])
def test_bad_input_is_invalid_config_naming_the_key(ipam: dict, cni_args: dict, needle: str) -> None:
    for call in (ipam_add, ipam_check, ipam_status):
        with pytest.raises(CniError) as err:
            call(make_request(ipam, cni_args))
        assert err.value.code == INVALID_CONFIG
        assert needle in err.value.msg


def test_del_gc_are_no_ops_and_check_status_pass() -> None:
    ipam_del(make_request(BASE, command="DEL"))
    ipam_del(make_request({"type": "static", "addresses": "garbage"}, command="DEL"))
    ipam_gc(make_request(BASE, command="GC"), [])
    ipam_check(make_request(BASE, command="CHECK"))
    ipam_status(make_request(BASE, command="STATUS"))


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference static plugin not installed")
@pytest.mark.parametrize(("cni_args", "top"), [
    ({}, {}),
    ({"IP": "10.61.0.9/16", "GATEWAY": "10.61.0.1"}, {}),
    ({}, {"args": {"cni": {"ips": ["10.62.0.2/24"]}}}),
    ({}, {"runtimeConfig": {"ips": ["10.63.0.2/24"]}}),
])
def test_same_result_as_the_reference(cni_args: dict[str, str], top: dict[str, Any]) -> None:
    conf = {"cniVersion": "1.0.0", "name": "static-net", "ipam": BASE, **top}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "pod1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": ";".join(f"{k}={v}" for k, v in cni_args.items())}
    proc = subprocess.run([str(REFERENCE)], input=json.dumps(conf).encode(), env=env, capture_output=True,
                          timeout=30, check=True)
    reference = json.loads(proc.stdout)
    ours = ipam_add(make_request(BASE, cni_args, **top))
    assert {k: v for k, v in ours.items() if k != "cniVersion"} == {k: v for k, v in reference.items()
                                                                    if k != "cniVersion"}


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 300) | st.sampled_from(
        ["", "10.64.0.5/24", "10.64.0.5", "fd64::5/64", "bogus", "10.64.0.1", "1.2.3.4/40", "\x00"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["address", "gateway", "dst", "gw", "mtu", "ips", "cni", "nameservers", "domain"]), inner,
        max_size=3),
    max_leaves=8)


@given(ipam=st.dictionaries(st.sampled_from(["addresses", "routes", "dns", "extra"]), _values, max_size=3),
       top=st.dictionaries(st.sampled_from(["args", "runtimeConfig"]), _values, max_size=2),
       cni_args=st.dictionaries(st.sampled_from(["IP", "GATEWAY"]),
                                st.sampled_from(["10.64.0.5/24", "10.64.0.5", "x", "10.64.0.1,fd64::1"]), max_size=2))
@settings(max_examples=300, deadline=None)
def test_any_config_gets_a_result_or_invalid_config(ipam: dict, top: dict, cni_args: dict) -> None:
    try:
        result = ipam_add(make_request({"type": "static", **ipam}, cni_args, **top))
    except CniError as exc:
        assert exc.code == INVALID_CONFIG and exc.msg
    else:
        assert all("/" in ip["address"] for ip in result.get("ips", []))
        dns = result["dns"]
        assert all(isinstance(v, list) and all(isinstance(x, str) for x in v) for k, v in dns.items() if k != "domain")
        assert isinstance(dns.get("domain", ""), str)
        assert all(isinstance(r.get("mtu", 0), int) for r in result.get("routes", []))
