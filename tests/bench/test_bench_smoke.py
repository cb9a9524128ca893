"""The benchmarks under hack/ still run: each one, at its smallest size, exits 0, prints its figures, and (the CNI
one) leaves no namespace or link behind.

These check that the tools work, not what they measure: the figures in the README come from full runs.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from cni_helpers import REFERENCE_DIR, REPO

NUMBER = r"\d+\.\d+"


def _run(*args: str, timeout: float = 240) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args[0]} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _machine_state() -> tuple[set[str], set[str]]:
    """The host links and namespaces the CNI benchmark can make: its bridges and masters (`b<kind><tag>..`), the
    plugins' host veths (`veth...`) and its namespaces (`bench-<tag>-<n>`)."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if ":" in line}
    spaces = {line.split()[0] for line in netns.splitlines() if line.strip()}
    return ({n for n in names if re.match(r"veth|b(br|mv)", n)}, {n for n in spaces if n.startswith("bench-")})


@pytest.mark.skipif(not (REFERENCE_DIR / "bridge").exists(), reason="needs Debian's containernetworking-plugins")
def test_bench_cni_quick_prints_both_implementations_and_cleans_up() -> None:
    links_before, netns_before = _machine_state()
    out = _run("hack/bench_cni.py", "--quick", "--modes", "bridge,veth", "-n", "6", "-p", "2",
               "--in-process-pods", "2")
    for mode, reference in (("bridge", "reference bridge"), ("veth", "reference ptp")):
        assert f"== {mode} ==" in out
        for implementation in (reference, "vnfio via daemon", "vnfio in-process"):
            for op in ("ADD", "CHECK", "DEL"):
                assert re.search(rf"{implementation}\s+{op}\s+{NUMBER}", out), (implementation, op, out)
        for implementation in (reference, "vnfio via daemon"):  # the growth pass, each alone
            assert re.search(rf"{implementation} alone\s+ADD\s+{NUMBER}", out), (implementation, out)
    assert re.search(rf"ours/reference: serial ADD p50 {NUMBER}", out), out
    assert re.search(rf"client exec \+ socket round trip to a do-nothing daemon: {NUMBER}", out), out
    links_after, netns_after = _machine_state()
    assert links_after - links_before == set()
    assert netns_after - netns_before == set()


def test_bench_ipam_small_prints_growth_for_every_implementation() -> None:
    out = _run("hack/bench_ipam.py", "-n", "60", "--rounds", "2", "--holes", "5", "--subnet", "10.250.0.0/24",
               "--only", "ours-inproc,ref-exec" if (REFERENCE_DIR / "host-local").exists() else "ours-inproc")
    assert re.search(rf"ours-inproc\s+ADD\s+60\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x", out), out
    assert re.search(rf"ours-inproc\s+DEL\s+60\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x", out), out


def test_bench_deviceplugin_small_measures_each_path() -> None:
    out = _run("hack/bench_deviceplugin.py", "--repetitions", "2", "--timer-repetitions", "1",
               "--rescan-interval", "0.5")
    assert re.search(rf"timer path .*\n\s+unbind VF\s+n=\s*1\s+p50\s+{NUMBER} ms", out), out
    assert re.search(rf"restart\s+n=\s*2\s+p50\s+{NUMBER} ms", out), out
    assert "plugin sockets left: none" in out
