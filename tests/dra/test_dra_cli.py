"""`vnfio-dra-driver --sample-board` as a process, against the kubelet and API server stand-ins: it publishes the
board, registers, prepares a claim for a DPAA2 container and one for two VFs, and the CDI specs give exactly what
the device plugin's Allocate gives for the same devices."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from apiserver_stub import ApiServerStub
from dra_harness import KubeletDirs
from dra_kubelet_stub import DraKubeletStub, wait_until
from dra_scenarios import DRIVER, NODE, allocated_claim, container_view

from deviceplugin.cli import daemon_settings
from deviceplugin.discovery.inventory import discover
from deviceplugin.kubelet.dra.cli import build_parser
from deviceplugin.policy.allocation import allocate
from deviceplugin.policy.config import SAMPLE_CONFIG, parse_config
from deviceplugin.policy.pools import build_pools
from deviceplugin.sampleboard import build_sample_board

DRIVER_BIN = str(Path(sys.executable).parent / "vnfio-dra-driver")


@pytest.mark.parametrize(("node_ip", "host"), [(None, "127.0.0.1"), ("192.0.2.7", "192.0.2.7")])
def test_metrics_listen_on_the_node_address_not_every_address(
    monkeypatch: pytest.MonkeyPatch, node_ip: str | None, host: str
) -> None:
    """The DRA driver takes the daemon flags the device plugin takes, with the same safe metrics default."""
    if node_ip is None:
        monkeypatch.delenv("NODE_IP", raising=False)
    else:
        monkeypatch.setenv("NODE_IP", node_ip)
    args = build_parser().parse_args(["--node-name", NODE, "--metrics-port", "9480"])
    assert daemon_settings(args).metrics_host == host
    explicit = build_parser().parse_args(["--node-name", NODE, "--metrics-host", "::"])
    assert daemon_settings(explicit).metrics_host == "::"


def test_node_name_is_required() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NODE_NAME"}
    done = subprocess.run([DRIVER_BIN, "--sample-board"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "--node-name (or $NODE_NAME) is required" in done.stderr


def test_sample_board_driver_prepares_what_the_device_plugin_allocates(
    kubelet_dirs: KubeletDirs, kubeconfig: Path, apiserver: ApiServerStub, dra_kubelet: DraKubeletStub,
    tmp_path: Path,
) -> None:
    log = (tmp_path / "driver.log").open("w")
    process = subprocess.Popen(
        [DRIVER_BIN, "--sample-board", "--kubeconfig", str(kubeconfig), "--plugins-registry-dir",
         str(kubelet_dirs.registry), "--plugins-dir", str(kubelet_dirs.plugins), "--cdi-dir", str(kubelet_dirs.cdi),
         "--no-uevents"],
        env={**os.environ, "NODE_NAME": NODE}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        dra_kubelet.wait_registered(DRIVER, timeout=30)
        assert wait_until(lambda: len(apiserver.slice_list()) == 1, timeout=10)
        names = sorted(d["name"] for d in apiserver.slice_list()[0]["spec"]["devices"])
        assert names == ["dprc-2", "dprc-3", "iommu-group-22", "pci-0001-01-00-1", "pci-0001-01-00-2"]
        apiserver.put_claim(allocated_claim("dpdk", "uid-dprc", [("dprc", "dprc-2")]))
        apiserver.put_claim(allocated_claim("vfs", "uid-vfs", [("vf", "pci-0001-01-00-1"), ("vf", "pci-0001-01-00-2")]))
        answers = dra_kubelet.prepare(DRIVER, [("default", "dpdk", "uid-dprc"), ("default", "vfs", "uid-vfs")])
        assert {uid: a.error for uid, a in answers.items()} == {"uid-dprc": "", "uid-vfs": ""}
        views = {
            uid: container_view(kubelet_dirs.cdi / f"vnfio-vnfio.io-vfio-{uid}.json",
                                [i for d in answers[uid].devices for i in d["cdiDeviceIDs"]])
            for uid in answers
        }
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    # The driver's board lives in its own temp dir: compare with a board of the same shape here.
    _, nodes = views["uid-dprc"]
    driver_dev = Path(next(h for _, h, _ in nodes if h.endswith("/vfio/vfio"))).parent.parent
    board = build_sample_board(tmp_path / "board")
    pools = build_pools(parse_config(SAMPLE_CONFIG).pools, discover(board.sys, board.dev)).pools

    def same(uid: str, resource: str, ids: list[str]) -> None:
        expected = allocate(pools[resource], ids)
        env, nodes = views[uid]
        assert env == dict(expected.envs)
        ours = {(c, h.replace(str(driver_dev), str(board.dev)), p) for c, h, p in nodes}
        assert ours == {(n.container_path, n.host_path, n.permissions) for n in expected.devices}

    same("uid-dprc", "nxp.com/dpaa2_dprc", ["dprc.2"])
    same("uid-vfs", "intel.com/intel_vf", ["0001:01:00.1", "0001:01:00.2"])
    assert views["uid-dprc"][0]["DPRC"] == "dprc.2"
    assert views["uid-vfs"][0]["PCIDEVICE_INTEL_COM_INTEL_VF"] == "0001:01:00.1,0001:01:00.2"
