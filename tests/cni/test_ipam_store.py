"""The host-local reservation store under pressure: range walking (properties), a model-checked sequence of
ADD/DEL/GC, 32 threads plus 4 processes on one network, the lock timeout, and SIGKILL at every system call
of an ADD (and at random moments of a busy child) followed by DEL or GC."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule
from ipam_helpers import held, request

from cni.errors import INTERNAL, TRY_AGAIN, CniError
from cni.ipam import ipam_add, ipam_del, ipam_gc
from cni.ipam.keys import reservation_key
from cni.ipam.ranges import parse_range_set
from cni.ipam.store import ReservationStore

REPO = Path(__file__).resolve().parents[2]


def debris(data_dir: Path) -> list[str]:
    """Everything in the network directory beyond the lock, the round-robin cursors and the index directory."""
    net = data_dir / "net1"
    names = [p.name for p in net.iterdir()] if net.exists() else []
    left = [n for n in names if n not in ("lock", "by-key") and not n.startswith("last_reserved_ip.")]
    left += [f"by-key/{n}" for n in (os.listdir(net / "by-key") if (net / "by-key").exists() else [])]
    return sorted(left)


# -- ranges ---------------------------------------------------------------------------------------------------

@st.composite
def v4_ranges(draw: st.DrawFn) -> tuple[dict, int, int, int, int | None]:
    prefix = draw(st.integers(22, 29))
    net = ipaddress.IPv4Network((draw(st.integers(0, 2**32 - 1)) >> (32 - prefix) << (32 - prefix), prefix))
    lo, hi = int(net.network_address), int(net.broadcast_address)
    start = draw(st.integers(lo + 1, hi - 1))
    end = draw(st.integers(start, hi - 1))
    gateway = draw(st.integers(lo, hi))
    last = draw(st.none() | st.integers(lo, hi))
    raw = {"subnet": str(net), "rangeStart": str(ipaddress.IPv4Address(start)),
           "rangeEnd": str(ipaddress.IPv4Address(end)), "gateway": str(ipaddress.IPv4Address(gateway))}
    return raw, start, end, gateway, last


@given(v4_ranges())
@settings(max_examples=300, deadline=None)
def test_candidates_visit_every_address_once_starting_after_last(case: tuple) -> None:
    raw, start, end, gateway, last = case
    range_set = parse_range_set([raw], "ranges[0]")
    last_ip = ipaddress.IPv4Address(last) if last is not None else None
    if last_ip is not None and not range_set.contains(last_ip):
        last_ip = None
    got = [int(ip) for ip, _ in range_set.candidates(last_ip)]
    expected = [v for v in range(start, end + 1) if v != gateway]
    assert sorted(got) == expected  # every allocatable address exactly once, gateway never
    assert range_set.capacity() == len(expected)
    if got and last_ip is not None:
        after = [v for v in expected if v > int(last_ip)]
        assert got[0] == (after[0] if after else expected[0])  # round-robin resumes after the last reservation


def test_candidates_walk_a_pool_of_subnets_in_order_and_wrap() -> None:
    pool = parse_range_set([{"subnet": "10.1.0.0/30"}, {"subnet": "10.1.1.0/30"}], "ranges[0]")
    got = [str(ip) for ip, _ in pool.candidates(ipaddress.IPv4Address("10.1.0.2"))]
    assert got == ["10.1.1.2", "10.1.0.2"]
    v6 = parse_range_set([{"subnet": "fd00::/64"}], "ranges[0]")
    first = next(v6.candidates(None))[0]
    assert str(first) == "fd00::2" and v6.capacity() == 2**64 - 2


# -- a model-checked sequence of operations -------------------------------------------------------------------

class StoreMachine(RuleBasedStateMachine):
    """ADD, DEL and GC in any order on a range of 6 addresses, checked against a dict of who holds what."""

    RANGES = [[{"subnet": "10.91.0.0/24", "rangeStart": "10.91.0.10", "rangeEnd": "10.91.0.15"}]]
    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.model: dict[tuple[str, str], str] = {}

    def teardown(self) -> None:
        self.tmp.cleanup()

    @rule(target=keys, cid=st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h"]),
          ifname=st.sampled_from(["eth0", "net1"]))
    def key(self, cid: str, ifname: str) -> tuple[str, str]:
        return cid, ifname

    @rule(key=keys)
    def add(self, key: tuple[str, str]) -> None:
        try:
            result = ipam_add(request(self.dir, *key, ranges=self.RANGES))
        except CniError as exc:
            assert exc.code == INTERNAL
            assert key in self.model or len(self.model) == 6, exc.msg
            return
        assert key not in self.model and len(self.model) < 6
        self.model[key] = result["ips"][0]["address"].split("/")[0]

    @rule(key=keys)
    def delete(self, key: tuple[str, str]) -> None:
        ipam_del(request(self.dir, *key, ranges=self.RANGES, command="DEL"))
        self.model.pop(key, None)

    @rule(keep=st.sets(st.sampled_from(["a", "b", "c", "d"])))
    def gc(self, keep: set[str]) -> None:
        valid = [(k, i) for k, i in self.model if k in keep]
        ipam_gc(request(self.dir, "gc", ranges=self.RANGES, command="GC"), valid)
        self.model = {k: v for k, v in self.model.items() if k in valid}

    @invariant()
    def disk_matches_model(self) -> None:
        expected = {ip: f"{cid}\r\n{ifname}" for (cid, ifname), ip in self.model.items()}
        assert held(self.dir) == expected
        assert sorted(debris(self.dir)) == sorted([*expected, *(f"by-key/{c}:{i}" for c, i in self.model)])


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])


# -- concurrency ----------------------------------------------------------------------------------------------

# Children import only the package under test and tests/ipam_helpers.py (not pytest), so they start fast.
_WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    from cni.ipam import ipam_add, ipam_del
    from ipam_helpers import request
    data_dir, tag, rounds = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    got = {}
    for r in range(rounds):
        for i in range(8):
            cid = f"{tag}-{i}"
            if r:
                ipam_del(request(data_dir, cid, command="DEL"))
            got[cid] = ipam_add(request(data_dir, cid))["ips"][0]["address"]
    print(json.dumps(got))
""")


def test_threads_and_processes_never_share_an_address(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(REPO), str(tmp_path), f"proc{p}", "6"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for p in range(4)]
    results: dict[str, str] = {}
    errors: list[BaseException] = []
    guard = threading.Lock()

    def worker(t: int) -> None:
        try:
            for r in range(6):
                for i in range(4):
                    cid = f"thr{t}-{i}"
                    if r:
                        ipam_del(request(tmp_path, cid, command="DEL"))
                    address = ipam_add(request(tmp_path, cid))["ips"][0]["address"]
                    with guard:
                        results[cid] = address
        except BaseException as exc:  # reported below; a thread must not die silently
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()
        results.update(json.loads(out))
    assert errors == []
    assert len(results) == 32 * 4 + 4 * 8
    assert len(set(results.values())) == len(results)  # 160 pods, 160 distinct addresses
    assert held(tmp_path) == {a.split("/")[0]: f"{cid}\r\neth0" for cid, a in results.items()}

    def release(cid: str) -> None:
        ipam_del(request(tmp_path, cid, command="DEL"))

    threads = [threading.Thread(target=release, args=(cid,)) for cid in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert debris(tmp_path) == []


def test_lock_timeout_is_try_again(tmp_path: Path) -> None:
    store = ReservationStore(str(tmp_path), "net1", lock_timeout=0.2)
    with store.transaction():
        pass
    fd = os.open(tmp_path / "net1" / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process (or the reference plugin) holds the network
        with pytest.raises(CniError) as err, store.transaction():
            pass
        assert err.value.code == TRY_AGAIN
    finally:
        os.close(fd)
    with store.transaction() as txn:
        assert txn.owned(reservation_key("x", "eth0")) == []


# -- crash consistency ----------------------------------------------------------------------------------------

_CRASHER = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    from crashpoint import arm
    from cni.ipam import ipam_add, ipam_del
    from ipam_helpers import request
    data_dir, cid, kill_at, command = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
    ranges = [[{"subnet": "10.92.0.0/24"}], [{"subnet": "fd92::/120"}]]
    arm(kill_at)
    if command == "ADD":
        ipam_add(request(data_dir, cid, ranges=ranges))
    else:
        ipam_del(request(data_dir, cid, ranges=ranges, command="DEL"))
    print("completed")
""")
_CRASH_RANGES = [[{"subnet": "10.92.0.0/24"}], [{"subnet": "fd92::/120"}]]


def _crash_at(data_dir: Path, cid: str, kill_at: int, command: str = "ADD") -> bool:
    """Run `command` in a child killed at its `kill_at`-th os call; True when it ran to completion instead."""
    proc = subprocess.run([sys.executable, "-c", _CRASHER, str(REPO), str(data_dir), cid, str(kill_at), command],
                          capture_output=True, timeout=60, check=False)
    if proc.returncode == -signal.SIGKILL:
        return False
    assert proc.returncode == 0 and b"completed" in proc.stdout, proc.stderr.decode()
    return True


@pytest.mark.parametrize("populated", [False, True], ids=["fresh-dir", "busy-dir"])
def test_sigkill_at_every_call_of_add_then_del_leaves_nothing(tmp_path: Path, populated: bool) -> None:
    others: dict[str, str] = {}
    if populated:  # other tenants, an empty file to reclaim, and a reference-format directory to index
        for cid in ("tenant1", "tenant2"):
            ipam_add(request(tmp_path, cid, ranges=_CRASH_RANGES))
        (tmp_path / "net1" / "10.92.0.4").write_bytes(b"")
        others = held(tmp_path)
    kills = 0
    for kill_at in range(1, 200):
        done = _crash_at(tmp_path, "victim", kill_at)
        ipam_del(request(tmp_path, "victim", ranges=_CRASH_RANGES, command="DEL"))
        assert held(tmp_path) == others, f"killed at call {kill_at}"
        assert sorted(set(debris(tmp_path)) - set(others) - {"by-key/tenant1:eth0", "by-key/tenant2:eth0",
                                                              "10.92.0.4"}) == []
        if done:
            break
        kills += 1
    assert kills >= 10  # the ADD really was interrupted at each of its steps before it completed
    # the lock was released by the kernel every time, and the network still allocates
    result = ipam_add(request(tmp_path, "after", ranges=_CRASH_RANGES))
    assert len(result["ips"]) == 2


def test_sigkill_during_del_then_del_again_finishes(tmp_path: Path) -> None:
    for kill_at in range(1, 60):
        ipam_add(request(tmp_path, "victim", ranges=_CRASH_RANGES))
        done = _crash_at(tmp_path, "victim", kill_at, command="DEL")
        ipam_del(request(tmp_path, "victim", ranges=_CRASH_RANGES, command="DEL"))
        assert held(tmp_path) == {} and debris(tmp_path) == [], f"killed at call {kill_at}"
        if done:
            break


_BUSY = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    from cni.ipam import ipam_add, ipam_del
    from ipam_helpers import request
    data_dir = Path(sys.argv[2])
    print("ready", flush=True)
    while True:
        for i in range(40):
            ipam_add(request(data_dir, f"busy-{i}"))
        for i in range(0, 40, 2):
            ipam_del(request(data_dir, f"busy-{i}", command="DEL"))
        for i in range(0, 40, 2):
            ipam_add(request(data_dir, f"busy-{i}"))
        for i in range(40):
            ipam_del(request(data_dir, f"busy-{i}", command="DEL"))
""")


@pytest.mark.parametrize("cleanup", ["del", "gc"])
def test_sigkill_at_random_moments_then_del_or_gc_leaves_nothing(tmp_path: Path, cleanup: str) -> None:
    rng = random.Random(os.getpid())
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", _BUSY, str(REPO), str(tmp_path)],
                                stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.25))
        proc.kill()
        proc.wait()
        proc.stdout.close()
        if cleanup == "del":
            for i in range(40):
                ipam_del(request(tmp_path, f"busy-{i}", command="DEL"))
        else:
            ipam_gc(request(tmp_path, "gc", command="GC"), [])
        assert held(tmp_path) == {}
        assert debris(tmp_path) == []


@pytest.mark.hardening
@pytest.mark.parametrize("damage", ["empty", "cut mid-line", "not text"])
def test_del_releases_by_container_and_interface_even_with_a_damaged_index(tmp_path: Path, damage: str) -> None:
    """Issue 17, finding 8: the by-key index is what a crash or a full disk can leave empty or cut short. DEL must
    still free the key's addresses (found by their files), and ADD must still see them (no second address)."""
    dual = [[{"subnet": "10.90.0.0/24"}], [{"subnet": "fd00:90::/64"}]]
    ipam_add(request(tmp_path, "pod1", ranges=dual))
    ipam_add(request(tmp_path, "pod2", ranges=dual))
    mine = {ip for ip, owner in held(tmp_path).items() if owner == "pod1\r\neth0"}
    assert len(mine) == 2
    index = tmp_path / "net1" / "by-key" / "pod1:eth0"
    text = index.read_bytes()
    index.write_bytes({"empty": b"", "cut mid-line": text[: len(text) // 2 + 1], "not text": b"\xff\xfe\0"}[damage])

    with pytest.raises(CniError) as again:
        ipam_add(request(tmp_path, "pod1", ranges=dual))
    assert "duplicate allocation is not allowed" in again.value.msg
    assert {ip for ip, owner in held(tmp_path).items() if owner == "pod1\r\neth0"} == mine

    ipam_del(request(tmp_path, "pod1", ranges=dual, command="DEL"))
    assert {owner for owner in held(tmp_path).values()} == {"pod2\r\neth0"}, "pod1's addresses stayed reserved"
    assert not index.exists()
    ipam_del(request(tmp_path, "pod2", ranges=dual, command="DEL"))
    assert held(tmp_path) == {} and debris(tmp_path) == []
