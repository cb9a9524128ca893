"""The store's spare files (`cni.ipam.spares.SparePool`): made after the node daemon's reply, taken by the next
ADDs as their index and address files, invisible to anything that reads reservations, and never shared between
processes. Asserted on the files themselves (names, inode numbers, contents)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from ipam_helpers import held, request

from cni import deferred
from cni.ipam import ipam_add, ipam_del, ipam_gc
from cni.ipam.keys import INDEX_DIR
from cni.ipam.spares import SPARE_PREFIX, SPARES_PER_NETWORK, spare_pool


def spares(data_dir: Path) -> dict[str, int]:
    """Spare file name -> inode number."""
    index = data_dir / "net1" / "by-key"
    return {p.name: p.stat().st_ino for p in index.iterdir() if p.name.startswith(SPARE_PREFIX)} \
        if index.exists() else {}


def add_as_daemon(data_dir: Path, container_id: str, **kw: object) -> str:
    """An IPAM ADD as the node daemon runs it: deferred work collected, then run after the 'reply'."""
    with deferred.collecting() as after_reply:
        result = ipam_add(request(data_dir, container_id, **kw))  # type: ignore[arg-type]
    deferred.run(after_reply)
    return str(ipaddress.ip_interface(result["ips"][0]["address"]).ip)


def test_the_next_add_takes_spare_inodes_for_its_index_and_address_file(tmp_path: Path) -> None:
    first = add_as_daemon(tmp_path, "a")
    made = spares(tmp_path)
    assert len(made) == SPARES_PER_NETWORK, "the first ADD had none to take; after it the pool is full"
    assert all((tmp_path / "net1" / "by-key" / n).stat().st_size == 0 for n in made)

    with deferred.collecting() as after_reply:
        result = ipam_add(request(tmp_path, "b"))
    ip = str(ipaddress.ip_interface(result["ips"][0]["address"]).ip)
    net = tmp_path / "net1"
    left = spares(tmp_path)
    taken = set(made.values()) - set(left.values())
    assert len(left) == SPARES_PER_NETWORK - 2
    assert {(net / ip).stat().st_ino, (net / "by-key" / "b:eth0").stat().st_ino} == taken
    assert (net / ip).read_bytes() == b"b\r\neth0", "the reference's format, exactly"
    assert (net / "by-key" / "b:eth0").read_text() == f"{ip}\n"
    assert (net / ip).stat().st_nlink == 1, "the spare's own name is gone"
    assert (net / first).read_bytes() == b"a\r\neth0"
    deferred.run(after_reply)
    assert len(spares(tmp_path)) == SPARES_PER_NETWORK, "refilled after the reply"


def test_outside_the_daemon_no_spare_is_made_or_taken(tmp_path: Path) -> None:
    ipam_add(request(tmp_path, "a"))
    assert spares(tmp_path) == {}
    add_as_daemon(tmp_path, "b")
    made = spares(tmp_path)
    ipam_add(request(tmp_path, "c"))  # in-process: creates its files, leaves the pool alone
    assert spares(tmp_path) == made


def test_a_second_range_set_adds_to_the_index_a_spare_made_it(tmp_path: Path) -> None:
    ranges = [[{"subnet": "10.91.0.0/24"}], [{"subnet": "10.92.0.0/24"}]]
    add_as_daemon(tmp_path, "a", ranges=ranges)
    with deferred.collecting():
        result = ipam_add(request(tmp_path, "b", ranges=ranges))
    ips = [str(ipaddress.ip_interface(ip["address"]).ip) for ip in result["ips"]]
    index = tmp_path / "net1" / "by-key" / "b:eth0"
    assert index.read_text() == "".join(f"{ip}\n" for ip in ips)
    assert len(spares(tmp_path)) == SPARES_PER_NETWORK - 3, "one index and two address files came from spares"


def test_spares_are_not_reservations_and_del_leaves_them(tmp_path: Path) -> None:
    ip = add_as_daemon(tmp_path, "a")
    made = spares(tmp_path)
    net = tmp_path / "net1"
    addresses = sorted(p.name for p in net.iterdir() if p.is_file() and p.name[0].isdigit())
    assert addresses == [ip], "no spare stands in the directory the reference reads"
    with deferred.collecting() as after_reply:
        ipam_del(request(tmp_path, "a", command="DEL"))
    deferred.run(after_reply)
    assert not (net / ip).exists() and not (net / "by-key" / "a:eth0").exists()
    assert spares(tmp_path) == made


def test_a_spare_gc_removed_only_makes_the_add_create_its_file(tmp_path: Path) -> None:
    add_as_daemon(tmp_path, "a")
    ipam_gc(request(tmp_path, "gc", command="GC"), [("a", "eth0")])  # GC removes spares, live or left by the dead
    assert spares(tmp_path) == {}
    with deferred.collecting():
        result = ipam_add(request(tmp_path, "b"))
    ip = str(ipaddress.ip_interface(result["ips"][0]["address"]).ip)
    assert (tmp_path / "net1" / ip).read_bytes() == b"b\r\neth0"
    assert (tmp_path / "net1" / "by-key" / "b:eth0").read_text() == f"{ip}\n"


def test_a_forked_process_starts_with_a_pool_of_its_own(tmp_path: Path) -> None:
    add_as_daemon(tmp_path, "a")
    path = os.path.realpath(tmp_path / "net1")
    assert spare_pool(path, INDEX_DIR).take() is not None, "the parent's pool holds spares"
    pid = os.fork()
    if pid == 0:  # two processes linking one spare would give two addresses one inode
        os._exit(0 if spare_pool(path, INDEX_DIR).take() is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child saw its parent's spares"


def test_a_spare_a_dead_daemon_left_is_never_taken_and_gc_removes_it(tmp_path: Path) -> None:
    add_as_daemon(tmp_path, "a")
    orphan = tmp_path / "net1" / "by-key" / f"{SPARE_PREFIX}999999.0bad0bad"
    orphan.write_bytes(b"")
    for n in range(3 * SPARES_PER_NETWORK):  # more ADDs than the pool holds: every spare taken is the pool's own
        add_as_daemon(tmp_path, f"c{n}")
    assert orphan.exists() and orphan.stat().st_nlink == 1
    ipam_gc(request(tmp_path, "gc", command="GC"), [("a", "eth0")])
    assert not orphan.exists()


_SPARE_CRASHER = """
import os, sys
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
from crashpoint import arm
from ipam_helpers import request
from cni import deferred
from cni.ipam import ipam_add
from cni.ipam.spares import spare_pool
from cni.ipam.keys import INDEX_DIR

data_dir, kill_at = Path(sys.argv[2]), int(sys.argv[3])
req = request(data_dir, "victim", ranges=[[{"subnet": "10.93.0.0/24"}], [{"subnet": "fd93::/120"}]])
# this process's spares, as a serving daemon has them
spare_pool(os.path.realpath(data_dir / "net1"), INDEX_DIR).refill()
arm(kill_at)
with deferred.collecting():
    ipam_add(req)
print("completed")
"""


def test_sigkill_at_every_call_of_an_add_on_spares_then_del_and_gc_leave_nothing(tmp_path: Path) -> None:
    import subprocess
    import sys

    ranges = [[{"subnet": "10.93.0.0/24"}], [{"subnet": "fd93::/120"}]]
    ipam_add(request(tmp_path, "tenant", ranges=ranges))  # the directory and its index exist, one tenant holds two
    repo = str(Path(__file__).resolve().parents[2])
    net = tmp_path / "net1"

    tenant = held(tmp_path)
    assert len(tenant) == 2
    kills = 0
    for kill_at in range(1, 200):
        proc = subprocess.run([sys.executable, "-c", _SPARE_CRASHER, repo, str(tmp_path), str(kill_at)],
                              capture_output=True, timeout=60, check=False)
        done = proc.returncode == 0
        assert done or proc.returncode == -9, proc.stderr.decode()
        ipam_del(request(tmp_path, "victim", command="DEL", ranges=ranges))
        assert held(tmp_path) == tenant, f"killed at call {kill_at}"
        ipam_gc(request(tmp_path, "gc", command="GC", ranges=ranges), [("tenant", "eth0")])
        assert spares(tmp_path) == {}, f"killed at call {kill_at}: GC left spares"
        assert sorted(p.name for p in (net / "by-key").iterdir()) == ["tenant:eth0"]
        if done:
            break
        kills += 1
    assert kills >= 10, "the ADD was interrupted at each of its steps before it completed"
    assert len(ipam_add(request(tmp_path, "after", ranges=ranges))["ips"]) == 2
