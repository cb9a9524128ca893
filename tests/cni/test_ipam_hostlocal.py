"""host-local IPAM through the public entry points: allocation, requested IPs, dual-stack, exhaustion, DEL,
CHECK, GC, STATUS, hostile IDs, and interoperation with the reference plugin on the same data directory."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import Scenario, cni_env, random_subnet6, reservation_files, run_vnfio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cni.errors import INTERNAL, INVALID_CONFIG, INVALID_ENV, NOT_AVAILABLE, CniError
from cni.ipam import IpamRequest, ipam_add, ipam_check, ipam_del, ipam_gc, ipam_status

REFERENCE = Path("/usr/lib/cni/host-local")
BOOKKEEPING = {"lock", "by-key"}


def make_request(data_dir: Path, container_id: str = "pod1", ifname: str = "eth0", *, command: str = "ADD",
                 ipam: dict[str, Any] | None = None, cni_args: dict[str, str] | None = None,
                 name: str = "net1", **top: Any) -> IpamRequest:
    section = {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": "10.77.0.0/24"}]]}
    section.update(ipam or {})
    netconf = {"cniVersion": "1.1.0", "name": name, "type": "vnfio", "ipam": section, **top}
    return IpamRequest(command=command, container_id=container_id, ifname=ifname, netns="/run/netns/x",
                       cni_args=cni_args or {}, cni_path=("/usr/lib/cni",), env={}, netconf=netconf)


def reservations(data_dir: Path, name: str = "net1") -> dict[str, str]:
    """Address file -> owner, exactly as the reference would read the directory."""
    net = data_dir / name
    if not net.exists():
        return {}
    return {p.name: p.read_bytes().decode() for p in net.iterdir()
            if p.is_file() and p.name != "lock" and not p.name.startswith("last_reserved_ip.")}


def index_entries(data_dir: Path, name: str = "net1") -> set[str]:
    index = data_dir / name / "by-key"
    return {p.name for p in index.iterdir()} if index.exists() else set()


@pytest.fixture
def req(tmp_path: Path) -> Callable[..., IpamRequest]:
    return lambda *a, **kw: make_request(tmp_path, *a, **kw)


def test_add_reserves_after_gateway_and_writes_reference_layout(tmp_path: Path, req: Callable) -> None:
    result = ipam_add(req(ipam={"routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.77.0.254"}]}))
    assert result == {
        "cniVersion": "1.1.0",
        "ips": [{"address": "10.77.0.2/24", "gateway": "10.77.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.77.0.254"}],
        "dns": {},
    }
    assert reservations(tmp_path) == {"10.77.0.2": "pod1\r\neth0"}
    assert (tmp_path / "net1" / "last_reserved_ip.0").read_text() == "10.77.0.2"
    assert index_entries(tmp_path) == {"pod1:eth0"}


def test_round_robin_continues_after_last_reserved_even_when_earlier_addresses_free(req: Callable) -> None:
    first = ipam_add(req("a"))["ips"][0]["address"]
    second = ipam_add(req("b"))["ips"][0]["address"]
    ipam_del(req("a", command="DEL"))
    third = ipam_add(req("c"))["ips"][0]["address"]
    assert (first, second, third) == ("10.77.0.2/24", "10.77.0.3/24", "10.77.0.4/24")


def test_same_key_twice_is_refused_like_the_reference(tmp_path: Path, req: Callable) -> None:
    ipam_add(req())
    with pytest.raises(CniError) as err:
        ipam_add(req())
    assert err.value.code == INTERNAL
    assert err.value.msg == ("failed to allocate for range 0: 10.77.0.2 has been allocated to pod1, "
                             "duplicate allocation is not allowed")
    assert reservations(tmp_path) == {"10.77.0.2": "pod1\r\neth0"}
    # another interface of the same container is another reservation
    assert ipam_add(req(ifname="net1"))["ips"][0]["address"] == "10.77.0.3/24"


def test_dual_stack_one_address_per_range_set(tmp_path: Path, req: Callable) -> None:
    ranges = [[{"subnet": "10.78.0.0/24", "rangeStart": "10.78.0.100", "rangeEnd": "10.78.0.110"}],
              [{"subnet": "fd77::/64"}]]
    result = ipam_add(req(ipam={"ranges": ranges}))
    assert result["ips"] == [{"address": "10.78.0.100/24", "gateway": "10.78.0.1"},
                             {"address": "fd77::2/64", "gateway": "fd77::1"}]
    assert set(reservations(tmp_path)) == {"10.78.0.100", "fd77::2"}
    ipam_del(req(command="DEL", ipam={"ranges": ranges}))
    assert reservations(tmp_path) == {}
    assert index_entries(tmp_path) == set()


def test_legacy_single_range_and_pool_of_subnets(tmp_path: Path, req: Callable) -> None:
    legacy = {"ranges": None, "subnet": "10.79.0.0/30"}
    assert ipam_add(req("a", ipam=legacy))["ips"] == [{"address": "10.79.0.2/30", "gateway": "10.79.0.1"}]
    pool = {"ranges": [[{"subnet": "10.80.0.0/30"}, {"subnet": "10.80.1.0/30"}]]}
    got = [ipam_add(req(f"p{i}", name="pool", ipam=pool))["ips"][0]["address"] for i in range(2)]
    assert got == ["10.80.0.2/30", "10.80.1.2/30"]
    with pytest.raises(CniError, match=r"no IP addresses available in range set: 10.80.0.1-10.80.0.2,"
                                       r"10.80.1.1-10.80.1.2"):
        ipam_add(req("p3", name="pool", ipam=pool))


def test_requested_ips_from_cni_args_args_and_runtime_config(tmp_path: Path, req: Callable) -> None:
    dual = {"ranges": [[{"subnet": "10.81.0.0/24"}], [{"subnet": "fd81::/120"}]]}
    r = ipam_add(req("a", ipam=dual, cni_args={"IP": "10.81.0.50"}))
    assert [ip["address"] for ip in r["ips"]] == ["10.81.0.50/24", "fd81::2/120"]
    r = ipam_add(req("b", ipam=dual, args={"cni": {"ips": ["fd81::99"]}}))
    assert [ip["address"] for ip in r["ips"]] == ["10.81.0.51/24", "fd81::99/120"]
    r = ipam_add(req("c", ipam=dual, runtimeConfig={"ips": ["10.81.0.7/24", "fd81::7/120"]}))
    assert [ip["address"] for ip in r["ips"]] == ["10.81.0.7/24", "fd81::7/120"]
    assert reservations(tmp_path)["10.81.0.50"] == "a\r\neth0"


@pytest.mark.parametrize(("asked", "message"), [
    ("10.77.0.1", "failed to allocate for range 0: requested ip 10.77.0.1 is subnet's gateway"),
    ("10.99.0.1", "failed to allocate all requested IPs: 10.99.0.1"),
    ("10.77.0.2", "failed to allocate for range 0: requested IP address 10.77.0.2 is not available in range set "
                  "10.77.0.1-10.77.0.254"),
])
def test_requested_ip_refusals_leave_nothing(tmp_path: Path, req: Callable, asked: str, message: str) -> None:
    ipam_add(req("holder"))  # takes 10.77.0.2
    before = reservations(tmp_path)
    with pytest.raises(CniError) as err:
        ipam_add(req("asker", cni_args={"IP": asked}))
    assert (err.value.code, err.value.msg) == (INTERNAL, message)
    assert reservations(tmp_path) == before
    assert index_entries(tmp_path) == {"holder:eth0"}


def test_failure_in_second_range_set_releases_the_first(tmp_path: Path, req: Callable) -> None:
    one_v6 = {"subnet": "fd82::/120", "rangeStart": "fd82::2", "rangeEnd": "fd82::2"}
    ranges = {"ranges": [[{"subnet": "10.82.0.0/24"}], [one_v6]]}
    ipam_add(req("a", ipam=ranges))
    with pytest.raises(CniError, match="no IP addresses available in range set: fd82::2-fd82::2"):
        ipam_add(req("b", ipam=ranges))
    assert set(reservations(tmp_path)) == {"10.82.0.2", "fd82::2"}
    assert index_entries(tmp_path) == {"a:eth0"}


def test_exhaustion_n_free_then_failure_without_debris(tmp_path: Path, req: Callable) -> None:
    ipam = {"ranges": [[{"subnet": "10.83.0.0/24", "rangeStart": "10.83.0.10", "rangeEnd": "10.83.0.29"}]]}
    got = {ipam_add(req(f"c{i}", ipam=ipam))["ips"][0]["address"] for i in range(20)}
    assert got == {f"10.83.0.{i}/24" for i in range(10, 30)}
    with pytest.raises(CniError) as err:
        ipam_add(req("c20", ipam=ipam))
    assert err.value.code == INTERNAL
    assert err.value.msg == ("failed to allocate for range 0: no IP addresses available in range set: "
                             "10.83.0.10-10.83.0.29")
    assert "c20\r\neth0" not in reservations(tmp_path).values()
    assert "c20:eth0" not in index_entries(tmp_path)
    with pytest.raises(CniError) as status:
        ipam_status(req(command="STATUS", ipam=ipam))
    assert status.value.code == NOT_AVAILABLE
    ipam_del(req("c7", command="DEL", ipam=ipam))
    ipam_status(req(command="STATUS", ipam=ipam))
    (tmp_path / "net1" / "10.83.0.17").write_bytes(b"")  # a dead writer's empty file is still free
    ipam_status(req(command="STATUS", ipam=ipam))
    assert ipam_add(req("c20", ipam=ipam))["ips"][0]["address"] == "10.83.0.17/24"


def test_del_is_idempotent_and_needs_no_valid_ranges(tmp_path: Path, req: Callable) -> None:
    ipam_del(req(command="DEL"))  # nothing ever reserved, no directory: success, nothing created
    assert not (tmp_path / "net1").exists()
    ipam_add(req())
    ipam_del(req(command="DEL", ipam={"ranges": "garbage"}))
    ipam_del(req(command="DEL"))
    assert reservations(tmp_path) == {}
    assert index_entries(tmp_path) == set()


def test_del_leaves_other_keys_and_foreign_files_alone(tmp_path: Path, req: Callable) -> None:
    ipam_add(req("a"))
    ipam_add(req("b"))
    # a corrupted index naming b's address must not let a's DEL release it
    (tmp_path / "net1" / "by-key" / "a:eth0").write_text("10.77.0.2\n10.77.0.3\n")
    ipam_del(req("a", command="DEL"))
    assert reservations(tmp_path) == {"10.77.0.3": "b\r\neth0"}


def test_empty_reservation_file_is_reclaimed(tmp_path: Path, req: Callable) -> None:
    ipam_add(req("a"))
    (tmp_path / "net1" / "10.77.0.3").write_text("")  # a writer died after create (reference bug #498)
    assert ipam_add(req("b"))["ips"][0]["address"] == "10.77.0.3/24"
    assert reservations(tmp_path)["10.77.0.3"] == "b\r\neth0"


def test_check_finds_the_reservation_and_compares_prev_result(req: Callable) -> None:
    result = ipam_add(req())
    ipam_check(req(command="CHECK", prevResult=result))
    wrong = {**result, "ips": [{"address": "10.77.0.9/24", "gateway": "10.77.0.1"}]}
    with pytest.raises(CniError, match=r"10\.77\.0\.9 of prevResult is not reserved"):
        ipam_check(req(command="CHECK", prevResult=wrong))
    with pytest.raises(CniError) as err:
        ipam_check(req("other", command="CHECK"))
    assert err.value.msg == "host-local: Failed to find address added by container other"


def test_gc_releases_everything_not_valid_and_cleans_the_index(tmp_path: Path, req: Callable) -> None:
    for cid in ("keep", "drop1", "drop2"):
        ipam_add(req(cid))
    net = tmp_path / "net1"
    (net / "10.77.0.100").write_text("")  # dead writer
    (net / "10.77.0.101").write_text("old-style-id")  # pre-0.7 format: container ID only
    (net / "by-key" / "ghost:eth0").write_text("10.77.0.200\n")
    (net / "by-key" / ".tmp.keep:eth0").write_text("half a rewrite")
    ipam_gc(req(command="GC"), [("keep", "eth0"), ("ghost-not-here", "eth0")])
    assert reservations(tmp_path) == {"10.77.0.2": "keep\r\neth0"}
    assert index_entries(tmp_path) == {"keep:eth0"}
    ipam_gc(req(command="GC"), [])
    assert reservations(tmp_path) == {}
    assert index_entries(tmp_path) == set()


def test_status_reports_an_unusable_data_dir(tmp_path: Path, req: Callable) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(CniError) as err:
        ipam_status(make_request(blocker, command="STATUS"))
    assert err.value.code == NOT_AVAILABLE
    ipam_status(req(command="STATUS"))


@pytest.mark.parametrize(("ipam", "needle"), [
    ({"ranges": [[{"subnet": "10.1.2.0/33"}]]}, "ipam.ranges[0][0].subnet: invalid CIDR address: 10.1.2.0/33"),
    ({"ranges": [[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.5"}]]},
     "ipam.ranges[0][0].rangeStart: 10.1.3.5 not in network 10.1.2.0/24"),
    ({"ranges": [[{"subnet": "10.1.2.0/24", "gateway": "fd00::1"}]]}, "gateway: fd00::1 not in network"),
    ({"ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "10.1.2.0/25"}]]},
     "subnets 10.1.2.1-10.1.2.254 and 10.1.2.1-10.1.2.126 overlap"),
    ({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.2.0/25"}]]}, "range set 0 overlaps with 1"),
    ({"ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "fd00::/64"}]]}, "mixed address families"),
    ({"ranges": [[{"subnet": "10.1.2.0/31"}]]}, "too small to allocate from"),
    ({"ranges": [[{"subnet": "10.1.2.0/24", "rangestart": "10.1.2.9"}]]}, "unknown key 'rangestart'"),
    ({"ranges": []}, "no IP ranges specified"),
    ({"datadir": "/tmp"}, "unknown host-local ipam key 'datadir'"),
    ({"routes": [{"dst": "10.0.0.0"}]}, "ipam.routes[0].dst: '10.0.0.0' is not a CIDR"),
    ({"dataDir": 5}, "ipam.dataDir"),
])
def test_invalid_config_is_code_7_naming_key_and_value(tmp_path: Path, req: Callable, ipam: dict,
                                                       needle: str) -> None:
    with pytest.raises(CniError) as err:
        ipam_add(req(ipam=ipam))
    assert err.value.code == INVALID_CONFIG
    assert needle in err.value.msg
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("container_id", "ifname", "name", "code"), [
    ("../../etc", "eth0", "net1", INVALID_ENV),
    ("a/b", "eth0", "net1", INVALID_ENV),
    ("", "eth0", "net1", INVALID_ENV),
    (".hidden", "eth0", "net1", INVALID_ENV),
    ("x" * 201, "eth0", "net1", INVALID_ENV),
    ("pod", "../..", "net1", INVALID_ENV),
    ("pod", "..", "net1", INVALID_ENV),
    ("pod", "a/b", "net1", INVALID_ENV),
    ("pod", "eth0:1", "net1", INVALID_ENV),
    ("pod", "eth 0", "net1", INVALID_ENV),
    ("pod", "e\x00", "net1", INVALID_ENV),
    ("pod", "abcdefghijklmnop", "net1", INVALID_ENV),
    ("pod", "", "net1", INVALID_ENV),
    ("pod", "eth0", "../escape", INVALID_CONFIG),
    ("pod", "eth0", "a/b", INVALID_CONFIG),
    ("pod", "eth0", "..", INVALID_CONFIG),
])
def test_hostile_names_are_refused_and_nothing_escapes(tmp_path: Path, container_id: str, ifname: str, name: str,
                                                       code: int) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for command, call in (("ADD", ipam_add), ("DEL", ipam_del), ("CHECK", ipam_check)):
        with pytest.raises(CniError) as err:
            call(make_request(data_dir, container_id, ifname, name=name, command=command))
        assert err.value.code == code, (command, err.value.msg)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["data"]


def test_resolv_conf_becomes_dns(tmp_path: Path, req: Callable) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nnameserver 10.0.0.10\nnameserver fd00::10\ndomain example.org\n"
                    "search a.example b.example\noptions ndots:5 timeout:1\n")
    result = ipam_add(req(ipam={"resolvConf": str(conf)}))
    assert result["dns"] == {"nameservers": ["10.0.0.10", "fd00::10"], "domain": "example.org",
                             "search": ["a.example", "b.example"], "options": ["ndots:5", "timeout:1"]}
    with pytest.raises(CniError) as err:
        ipam_add(req("other", ipam={"resolvConf": str(tmp_path / "missing")}))
    assert err.value.code == INVALID_CONFIG


def test_runtime_ip_ranges_capability_comes_first(req: Callable) -> None:
    result = ipam_add(req(runtimeConfig={"ipRanges": [[{"subnet": "10.84.0.0/24"}]]}))
    assert [ip["address"] for ip in result["ips"]] == ["10.84.0.2/24", "10.77.0.2/24"]


# -- the reference plugin on the same directory --------------------------------------------------------------

def run_reference(data_dir: Path, command: str, container_id: str, ipam: dict | None = None) -> dict | None:
    section = {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": "10.77.0.0/24"}]],
               **(ipam or {})}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": "/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "PATH": os.environ.get("PATH", "")}
    conf = {"cniVersion": "1.0.0", "name": "net1", "ipam": section}
    proc = subprocess.run([str(REFERENCE)], input=json.dumps(conf).encode(), env=env, capture_output=True,
                          timeout=30, check=False)
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    assert proc.returncode == 0, out
    return out


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference host-local not installed")
def test_interoperates_with_reference_host_local(tmp_path: Path, req: Callable) -> None:
    # reservations made by the reference are indexed on first use and released by our DEL
    ref = run_reference(tmp_path, "ADD", "refpod")
    assert ref["ips"][0]["address"] == "10.77.0.2/24"
    ours = ipam_add(req("ourpod"))
    assert ours["ips"][0]["address"] == "10.77.0.3/24"  # resumes from the reference's last_reserved_ip.0
    with pytest.raises(CniError, match="duplicate allocation is not allowed"):
        ipam_add(req("refpod"))
    ipam_del(req("refpod", command="DEL"))
    # and the reference reads ours: duplicate detection, then its DEL releases our reservation
    proc_conf = {"cniVersion": "1.0.0", "name": "net1",
                 "ipam": {"type": "host-local", "dataDir": str(tmp_path), "ranges": [[{"subnet": "10.77.0.0/24"}]]}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ourpod", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/usr/lib/cni"}
    dup = subprocess.run([str(REFERENCE)], input=json.dumps(proc_conf).encode(), env=env, capture_output=True,
                         timeout=30, check=False)
    assert dup.returncode != 0
    assert "duplicate allocation is not allowed" in json.loads(dup.stdout)["msg"]
    run_reference(tmp_path, "DEL", "ourpod")
    assert reservations(tmp_path) == {}
    # its stale index line is ignored: a new ADD for that key works and DEL cleans it
    assert ipam_add(req("ourpod"))["ips"][0]["address"] == "10.77.0.4/24"
    ipam_del(req("ourpod", command="DEL"))
    assert reservations(tmp_path) == {}
    assert index_entries(tmp_path) == set()


def test_foreign_object_at_an_address_is_skipped(tmp_path: Path, req: Callable) -> None:
    ipam_add(req("a"))
    (tmp_path / "net1" / "10.77.0.3").mkdir()  # not a reservation file: something an operator left there
    assert ipam_add(req("b"))["ips"][0]["address"] == "10.77.0.4/24"
    ipam_del(req("a", command="DEL"))
    ipam_del(req("b", command="DEL"))
    assert set(reservations(tmp_path)) == set()


def test_broken_store_is_a_clear_error_that_leaves_no_reservation(tmp_path: Path, req: Callable) -> None:
    ipam_add(req("a"))
    index = tmp_path / "net1" / "by-key"
    for entry in index.iterdir():
        entry.unlink()
    index.rmdir()
    index.write_text("")  # the index directory replaced by a file
    with pytest.raises(CniError) as err:
        ipam_add(req("b"))
    assert err.value.code == INTERNAL
    assert str(tmp_path / "net1") in err.value.msg and "by-key/b:eth0" in err.value.msg
    assert reservations(tmp_path) == {"10.77.0.2": "a\r\neth0", "by-key": ""}  # 10.77.0.3 was not taken


# -- hostile configs: never a traceback, only CniError ---------------------------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers(-5, 2**33) | st.sampled_from(
    ["", "10.85.0.0/24", "10.85.0.0/33", "10.85.0.9", "fd85::/120", "fd85::9", "::", "0.0.0.0/0", "../x", "x" * 300,
     "10.85.0.0/30", "10.85.0.5/24", "\x00", "10.85.0.1"])
_json = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["subnet", "rangeStart", "rangeEnd", "gateway", "dst", "gw", "ips", "cni"]), inner, max_size=3),
    max_leaves=8)
# values that parse, so that a good share of the cases reach the store
_meaningful = st.sampled_from([
    [[{"subnet": "10.85.0.0/24"}]], [[{"subnet": "fd85::/120"}], [{"subnet": "10.85.0.0/30"}]],
    [[{"subnet": "10.85.0.0/29", "rangeStart": "10.85.0.3", "rangeEnd": "10.85.0.4", "gateway": "10.85.0.3"}]],
    [{"dst": "0.0.0.0/0"}], {"ips": ["10.85.0.7/24"]}, {"cni": {"ips": ["10.85.0.9"]}}, "net-fuzz",
])
_value = _json | _meaningful


@given(ipam=st.dictionaries(st.sampled_from(["subnet", "rangeStart", "rangeEnd", "gateway", "ranges", "routes",
                                             "dataDir", "resolvConf", "bogus"]), _value, max_size=4),
       top=st.dictionaries(st.sampled_from(["runtimeConfig", "args", "prevResult", "name"]), _value, max_size=2),
       cni_args=st.dictionaries(st.sampled_from(["IP", "GATEWAY"]), st.sampled_from(["10.85.0.7", "x", ""]),
                                max_size=1),
       command=st.sampled_from(["ADD", "DEL", "CHECK", "STATUS", "GC"]))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_config_gets_a_result_or_a_cni_error(tmp_path: Path, ipam: dict, top: dict, cni_args: dict,
                                                 command: str) -> None:
    data_dir = tmp_path / "fuzz"
    ipam = {"dataDir": str(data_dir), **ipam} if "dataDir" not in ipam else ipam
    if not isinstance(ipam.get("dataDir"), str) or not str(ipam["dataDir"]).startswith(str(tmp_path)):
        ipam["dataDir"] = str(data_dir)  # the one key that must stay inside the sandbox
    req = make_request(data_dir, ipam=ipam, cni_args=cni_args, command=command, **top)
    try:
        if command == "ADD":
            result = ipam_add(req)
            assert result["cniVersion"] == "1.1.0" and isinstance(result["ips"], list)
            event("ADD succeeded")
            ipam_del(make_request(data_dir, ipam=ipam, command="DEL", **top))
        elif command == "GC":
            ipam_gc(req, [])
        else:
            {"DEL": ipam_del, "CHECK": ipam_check, "STATUS": ipam_status}[command](req)
    except CniError as exc:
        assert exc.code in (INVALID_CONFIG, INVALID_ENV, INTERNAL, NOT_AVAILABLE) and exc.msg
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["fuzz"])
    # every ADD above was followed by its DEL: no reservation and no index entry anywhere under the sandbox
    assert [p for p in data_dir.rglob("*") if p.is_file() and (p.name[:1].isdigit() or ":" in p.name)] == []


@pytest.mark.hardening
@pytest.mark.parametrize("where", ["CNI_ARGS", "args.cni.ips", "runtimeConfig.ips"])
def test_an_ipv6_zone_does_not_make_a_taken_address_a_second_one(world: Scenario, where: str) -> None:
    """Issue 17, finding 2: `fd..::10%x` is another string for the reservation but the same address for the kernel.
    A second pod asking for a held address with a zone is refused (code 7) before any link exists, and only the
    first pod carries the address."""
    subnet6 = random_subnet6()
    wanted = str(subnet6.network_address + 0x10)
    conf = world.mode_conf("bridge", str(subnet6))  # on one L2 segment, two pods with one address both "work"
    first, second = world.netns(), world.netns()
    added = run_vnfio(cni_env("ADD", "pod-a", first.path, args=f"IP={wanted}"), conf)
    assert added.code == 0, added.out
    zoned, args = f"{wanted}%x", ""
    if where == "CNI_ARGS":
        args = f"IP={zoned}"
    elif where == "args.cni.ips":
        conf = {**conf, "args": {"cni": {"ips": [zoned]}}}
    else:
        conf = {**conf, "runtimeConfig": {"ips": [f"{zoned}/64"]}}
    again = run_vnfio(cni_env("ADD", "pod-b", second.path, args=args), conf)
    holders = [ns.name for ns in (first, second) if "eth0" in ns.links() and f"{wanted}/64" in ns.addresses("eth0")]
    assert holders == [first.name], f"{wanted} is on {holders}"
    assert (again.code, again.error_code) == (1, INVALID_CONFIG), again.out
    assert "zone" in again.json["msg"]
    assert "eth0" not in second.links()
    assert [p.name for p in reservation_files(world.data_dir)] == [wanted]
    assert run_vnfio(cni_env("DEL", "pod-b", second.path), conf).code == 0
    assert run_vnfio(cni_env("DEL", "pod-a", first.path), conf).code == 0
    assert reservation_files(world.data_dir) == []


@pytest.mark.hardening
def test_static_refuses_a_zone_too() -> None:
    netconf = {"cniVersion": "1.1.0", "name": "net1", "type": "vnfio",
               "ipam": {"type": "static", "addresses": [{"address": "fd00:a0d::10%eth0/64"}]}}
    request = IpamRequest(command="ADD", container_id="pod1", ifname="eth0", netns="/x", cni_args={},
                          cni_path=(), env={}, netconf=netconf)
    with pytest.raises(CniError) as caught:
        ipam_add(request)
    assert caught.value.code == INVALID_CONFIG and "zone" in caught.value.msg
