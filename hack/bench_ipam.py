#!/usr/bin/env python3
"""Benchmark: host-local ADD/DEL latency as reservations pile up, ours against the reference Go plugin.

For each implementation, N pods are ADDed one after the other on one network (a /20 by default), then DELeted
in the same order, timing every call. The table gives the p50 of the first and of the last 50 calls and their
ratio (the growth): the reference walks every reservation file on each ADD and DEL, our store reads one index
file. Implementations: `ours-inproc` (the function the node daemon calls), `ours-exec` (a Python process per
call, like the no-daemon fallback, so interpreter start-up is included), and `ref-exec` (/usr/lib/cni/host-local,
when installed). A second table fills the range to 100 %, frees a random 10 % and times the ADDs that find
the holes (the worst case for a round-robin scan). Every phase stops at --max-seconds; temp dirs are removed
even on Ctrl-C.

    .venv/bin/python hack/bench_ipam.py [-n 2000] [--subnet 10.250.0.0/20] [--max-seconds 240]
                                        [--only ours-inproc,ref-exec] [--tmpdir /dev/shm]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cni.ipam import IpamRequest, ipam_add, ipam_del  # noqa: E402
from cni.ipam import store as ipam_store  # noqa: E402

REFERENCE = Path("/usr/lib/cni/host-local")
NETWORK = "bench"

# What `ours-exec` runs per call: the skeleton's job reduced to IPAM (env + stdin in, result JSON out).
_EXEC_SHIM = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from cni.errors import CniError
from cni.ipam import IpamRequest, ipam_add, ipam_del
env = os.environ
req = IpamRequest(command=env["CNI_COMMAND"], container_id=env["CNI_CONTAINERID"], ifname=env["CNI_IFNAME"],
                  netns=env.get("CNI_NETNS", ""), cni_args={}, cni_path=tuple(env["CNI_PATH"].split(":")),
                  env=dict(env), netconf=json.loads(sys.stdin.buffer.read()))
try:
    if req.command == "ADD":
        sys.stdout.write(json.dumps(ipam_add(req)))
    else:
        ipam_del(req)
except CniError as exc:
    sys.stdout.write(exc.to_json("1.0.0"))
    sys.exit(1)
"""


@dataclass
class Series:
    """Latencies (seconds) of one implementation and operation, in call order."""

    name: str
    op: str
    samples: list[float] = field(default_factory=list)
    truncated: bool = False


def netconf(data_dir: Path, subnet: str, network: str = NETWORK) -> dict:
    return {"cniVersion": "1.0.0", "name": network, "type": "bridge",
            "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": subnet}]]}}


def in_process(data_dir: Path, subnet: str, network: str = NETWORK) -> Callable[[str, str], None]:
    conf = netconf(data_dir, subnet, network)

    def call(command: str, cid: str) -> None:
        req = IpamRequest(command=command, container_id=cid, ifname="eth0", netns="/run/netns/x", cni_args={},
                          cni_path=("/usr/lib/cni",), env={}, netconf=conf)
        if command == "ADD":
            ipam_add(req)
        else:
            ipam_del(req)

    return call


def by_exec(argv: list[str], data_dir: Path, subnet: str, network: str = NETWORK) -> Callable[[str, str], None]:
    stdin = json.dumps(netconf(data_dir, subnet, network)).encode()
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
            "CNI_PATH": "/usr/lib/cni"}

    def call(command: str, cid: str) -> None:
        proc = subprocess.run(argv, input=stdin, env={**base, "CNI_COMMAND": command, "CNI_CONTAINERID": cid},
                              capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} {command} {cid} failed: {proc.stdout!r} {proc.stderr!r}")

    return call


def timed(series: Series, call: Callable[[str, str], None], command: str, cids: list[str], deadline: float) -> None:
    for cid in cids:
        if time.monotonic() > deadline:
            series.truncated = True
            return
        t0 = time.perf_counter()
        call(command, cid)
        series.samples.append(time.perf_counter() - t0)


def interleaved(name: str, full: Callable[[str, str], None], empty: Callable[[str, str], None], rounds: int,
                deadline: float) -> list[Series]:
    """ADD+DEL on the full network and on an empty one, alternately: both see the same machine load.

    The sequential first-50/last-50 ratio mixes growth with whatever else the machine did in between
    (other test runs share these 2 CPUs and the ext4 journal, and the last calls of a burst of N creates wait
    for the write-back of the first ones); this ratio does not.
    """
    rows = {key: Series(name, key) for key in ("ADD@N", "ADD@0", "DEL@N", "DEL@0")}
    for i in range(rounds):
        if time.monotonic() > deadline:
            for row in rows.values():
                row.truncated = True
            break
        for label, call in (("N", full), ("0", empty)) if i % 2 else (("0", empty), ("N", full)):
            for command in ("ADD", "DEL"):
                t0 = time.perf_counter()
                call(command, f"probe{i:04d}")
                rows[f"{command}@{label}"].samples.append(time.perf_counter() - t0)
    return list(rows.values())


def populate_fragmented(data_dir: Path, subnet: str, seed: int) -> int:
    """Write the reference's layout for a range that is full except a random 10 %; returns the holes.

    Both implementations start from this same directory, written directly (filling 4,000 addresses through
    the reference would take minutes and measure nothing new).
    """
    net = ipaddress.ip_network(subnet)
    hosts = list(net.hosts())[1:]  # the first host is the gateway
    free = set(random.Random(seed).sample(range(len(hosts)), len(hosts) // 10))
    directory = data_dir / NETWORK
    directory.mkdir(parents=True)
    for i, ip in enumerate(hosts):
        if i not in free:
            (directory / str(ip)).write_bytes(f"fill{i:05d}\r\neth0".encode())
    (directory / "last_reserved_ip.0").write_text(str(hosts[-1]))
    return len(free)


def fragmented(name: str, call: Callable[[str, str], None], samples: int) -> Series:
    """Time ADDs that must find the scattered holes, starting from the end of the range (worst case)."""
    series = Series(name, "ADD@90%")
    for i in range(samples):
        t0 = time.perf_counter()
        call("ADD", f"hole{i:05d}")
        series.samples.append(time.perf_counter() - t0)
    return series


def p50_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.2f}" if values else "     n/a"


def print_growth(rows: list[Series]) -> None:
    print(f"{'implementation':<14} {'op':<4} {'calls':>6} {'p50 first 50 (ms)':>18} {'p50 last 50 (ms)':>17} "
          f"{'growth':>7} {'max (ms)':>9}")
    for s in rows:
        first, last = s.samples[:50], s.samples[-50:]
        growth = statistics.median(last) / statistics.median(first) if first and last else float("nan")
        note = "  (stopped at --max-seconds)" if s.truncated else ""
        print(f"{s.name:<14} {s.op:<4} {len(s.samples):>6} {p50_ms(first):>18} {p50_ms(last):>17} "
              f"{growth:>6.2f}x {max(s.samples, default=0) * 1000:>9.2f}{note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="pods to ADD then DEL per implementation")
    parser.add_argument("--subnet", default="10.250.0.0/20", help="the range (must hold n addresses)")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="time bound of each phase")
    parser.add_argument("--rounds", type=int, default=100, help="interleaved full/empty rounds")
    parser.add_argument("--holes", type=int, default=200, help="ADDs timed in the 90%%-full phase")
    parser.add_argument("--only", default="ours-inproc,ours-exec,ref-exec",
                        help="comma-separated implementations to run (default: all three)")
    parser.add_argument("--tmpdir", default=None,
                        help="where the data directories go (default: $TMPDIR or /tmp; /dev/shm isolates the "
                             "algorithm from ext4 metadata write-back)")
    args = parser.parse_args()
    if ipaddress.ip_network(args.subnet).num_addresses - 3 < args.n:
        parser.error(f"{args.subnet} cannot hold {args.n} reservations")

    # SIGTERM (timeout(1), a CI cancel) unwinds like Ctrl-C, so the finally below still removes the temp dir.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    root = Path(tempfile.mkdtemp(prefix="vnfio-bench-ipam-", dir=args.tmpdir))
    try:
        shim = [sys.executable, "-S", "-c", _EXEC_SHIM, str(REPO)]
        available: dict[str, Callable[..., Callable[[str, str], None]]] = {
            "ours-inproc": lambda d, net=NETWORK: in_process(d, args.subnet, net),
            "ours-exec": lambda d, net=NETWORK: by_exec(shim, d, args.subnet, net),
            "ref-exec": lambda d, net=NETWORK: by_exec([str(REFERENCE)], d, args.subnet, net),
        }
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in available]
        if unknown:
            parser.error(f"unknown implementation {unknown[0]!r}; choose from {', '.join(available)}")
        if "ref-exec" in wanted and not REFERENCE.exists():
            print(f"note: {REFERENCE} not installed; no reference figures", file=sys.stderr)
            wanted.remove("ref-exec")
        impls = [(name, available[name]) for name in wanted]
        rows: list[Series] = []
        side_by_side: list[Series] = []
        for name, make in impls:
            data_dir = root / name
            full, empty = make(data_dir, NETWORK), make(data_dir, f"{NETWORK}-empty")
            print(f"... {name}: {args.n} ADDs, {args.rounds} interleaved rounds, {args.n} DELs", file=sys.stderr,
                  flush=True)
            cids = [f"pod{i:05d}" for i in range(args.n)]
            adds, dels = Series(name, "ADD"), Series(name, "DEL")
            timed(adds, full, "ADD", cids, time.monotonic() + args.max_seconds)
            # Write back the metadata of the burst of creates first: while ext4 commits those directory blocks,
            # a create in the same directory waits for them, whatever the plugin does (tmpfs shows no such gap).
            os.sync()
            side_by_side += interleaved(name, full, empty, args.rounds, time.monotonic() + args.max_seconds)
            timed(dels, full, "DEL", cids[:len(adds.samples)], time.monotonic() + args.max_seconds)
            for cid in cids[len(dels.samples):len(adds.samples)]:  # cut short: release the rest untimed
                full("DEL", cid)
            rows += [adds, dels]
        print(f"\nhost-local, {args.n} pods on {args.subnet}, serial, data in {root.parent} "
              f"(machine: {os.cpu_count()} CPUs, "
              f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f})")
        print_growth(rows)
        print(f"\nThe same, measured side by side: {args.rounds} rounds alternating ADD+DEL on the network holding "
              f"{args.n} reservations (@N) and on an empty one (@0), after sync(2)")
        print(f"{'implementation':<14} {'ADD@0 p50':>10} {'ADD@N p50':>10} {'ratio':>6} {'DEL@0 p50':>10} "
              f"{'DEL@N p50':>10} {'ratio':>6}   (ms)")
        for i in range(0, len(side_by_side), 4):
            add_n, add_0, del_n, del_0 = (statistics.median(s.samples) for s in side_by_side[i:i + 4])
            print(f"{side_by_side[i].name:<14} {add_0 * 1000:>10.2f} {add_n * 1000:>10.2f} {add_n / add_0:>5.2f}x "
                  f"{del_0 * 1000:>10.2f} {del_n * 1000:>10.2f} {del_n / del_0:>5.2f}x")

        # The round-robin scan at 90 % full: in-process (with probe counts), and the reference for comparison.
        probes = [0]
        real_try = ipam_store.Transaction.try_reserve

        def counting(self: ipam_store.Transaction, key: ipam_store.ReservationKey, ip: str) -> bool:
            probes[0] += 1
            return real_try(self, key, ip)

        print(f"\nADD into {args.subnet} when it is full except a random 10 % ({args.holes} ADDs, the scan starting "
              "at the end of the range)")
        print(f"{'implementation':<14} {'ADDs':>5} {'p50 (ms)':>9} {'p90 (ms)':>9} {'max (ms)':>9} {'probes/ADD':>11}")
        for name, make in impls:
            if name == "ours-exec":
                continue  # the same store as ours-inproc plus interpreter start-up: nothing new to learn
            data_dir = root / f"{name}-frag"
            holes = populate_fragmented(data_dir, args.subnet, seed=7)
            os.sync()  # as above: measure the scan, not the write-back of 3,700 fresh files
            call = make(data_dir)
            if name == "ours-inproc":  # the one-time indexing of a reference-written directory, untimed
                call("ADD", "warm-up")
                call("DEL", "warm-up")
                ipam_store.Transaction.try_reserve = counting
            probes[0] = 0
            try:
                series = fragmented(name, call, min(args.holes, holes - 1))
            finally:
                ipam_store.Transaction.try_reserve = real_try
            s = sorted(series.samples)
            per_add = f"{probes[0] / len(s):.1f}" if name == "ours-inproc" else "-"
            print(f"{name:<14} {len(s):>5} {p50_ms(s):>9} {s[int(len(s) * 0.9)] * 1000:>9.2f} {s[-1] * 1000:>9.2f} "
                  f"{per_add:>11}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
