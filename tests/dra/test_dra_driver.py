"""The DRA driver against the kubelet and API server stand-ins on the sample board: registration, the
ResourceSlices it publishes, Prepare/Unprepare of good and bad claims, and restarts of both sides."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from apiserver_stub import ApiServerStub
from dra_harness import KubeletDirs, RunningDriver, dra_settings
from dra_kubelet_stub import DraKubeletStub, wait_until
from dra_scenarios import DRIVER, NODE, allocated_claim, container_view

from deviceplugin.discovery.inventory import discover
from deviceplugin.kubelet.dra.checkpoint import FILE_NAME
from deviceplugin.policy.allocation import allocate
from deviceplugin.policy.config import SAMPLE_CONFIG, parse_config
from deviceplugin.policy.pools import build_pools
from deviceplugin.sampleboard import SampleBoard

BOARD_DEVICES = ["dprc-2", "dprc-3", "iommu-group-22", "pci-0001-01-00-1", "pci-0001-01-00-2"]


def published(apiserver: ApiServerStub) -> dict[str, dict]:
    """The devices of this node's pool at its highest generation, by name."""
    slices = [s for s in apiserver.slice_list() if s["spec"]["nodeName"] == NODE and s["spec"]["driver"] == DRIVER]
    if not slices:
        return {}
    top = max(s["spec"]["pool"]["generation"] for s in slices)
    current = [s for s in slices if s["spec"]["pool"]["generation"] == top]
    return {d["name"]: d for s in current for d in s["spec"]["devices"]}


@pytest.fixture
def running(board: SampleBoard, kubelet_dirs: KubeletDirs, kubeconfig: Path, apiserver: ApiServerStub,
            dra_kubelet: DraKubeletStub, tmp_path: Path):
    with RunningDriver(dra_settings(board, kubelet_dirs, kubeconfig, tmp_path / "none.json")) as driver:
        dra_kubelet.wait_registered(DRIVER)
        assert wait_until(lambda: sorted(published(apiserver)) == BOARD_DEVICES), published(apiserver)
        yield driver


def device_plugin_answer(board: SampleBoard, resource: str, ids: list[str]):
    pools = build_pools(parse_config(SAMPLE_CONFIG).pools, discover(board.sys, board.dev)).pools
    return allocate(pools[resource], ids)


# ------------------------------------------------------------------------------------------ publishing
def test_registers_with_kubelet_and_publishes_the_board(
    running: RunningDriver, dra_kubelet: DraKubeletStub, apiserver: ApiServerStub, kubelet_dirs: KubeletDirs
) -> None:
    plugin = dra_kubelet.plugins[DRIVER]
    assert plugin.endpoint == str(kubelet_dirs.plugins / DRIVER / "dra.sock")
    assert plugin.socket == kubelet_dirs.registry / f"{DRIVER}-reg.sock"
    assert plugin.version == "v1.DRAPlugin"
    assert dra_kubelet.registrations[-1] == (DRIVER, True, "")
    assert wait_until(lambda: running.sample("vnfio_dra_registered") == 1)
    slices = apiserver.slice_list()
    assert len(slices) == 1
    spec = slices[0]["spec"]
    assert spec["driver"] == DRIVER and spec["nodeName"] == NODE
    assert spec["pool"]["name"] == NODE and spec["pool"]["resourceSliceCount"] == 1
    devices = published(apiserver)
    assert devices["dprc-2"]["attributes"] == {
        "type": {"string": "fslmc"}, "resource": {"string": "nxp.com/dpaa2_dprc"}, "iommuGroup": {"int": 10},
        "dprc": {"string": "dprc.2"}, "dpbp": {"int": 1}, "dpcon": {"int": 1}, "dpio": {"int": 2},
        "dpmcp": {"int": 1}, "dpni": {"int": 1},
    }
    vf = devices["pci-0001-01-00-1"]["attributes"]
    assert vf["type"] == {"string": "pci"} and vf["resource"] == {"string": "intel.com/intel_vf"}
    assert vf["vendor"] == {"string": "8086"} and vf["device"] == {"string": "154c"}
    assert vf["iommuGroup"] == {"int": 20}
    assert vf["resource.kubernetes.io/pciBusID"] == {"string": "0001:01:00.1"}
    assert vf["resource.kubernetes.io/pcieRoot"] == {"string": "pci0001:00"}
    assert "resource.kubernetes.io/pciBusID" not in devices["iommu-group-22"]["attributes"]
    assert wait_until(lambda: running.sample("vnfio_dra_published_devices", health="Healthy") == 5)


def test_stale_slices_of_this_node_are_deleted_at_start(
    board: SampleBoard, kubelet_dirs: KubeletDirs, kubeconfig: Path, apiserver: ApiServerStub,
    dra_kubelet: DraKubeletStub, tmp_path: Path,
) -> None:
    def stale(name: str, node: str, generation: int) -> dict:
        return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": name},
                "spec": {"driver": DRIVER, "nodeName": node, "pool": {"name": node, "generation": generation,
                         "resourceSliceCount": 2}, "devices": [{"name": "dprc-9"}]}}

    with apiserver.changed:
        for name, node in ((f"{NODE}-{DRIVER}-0", NODE), (f"{NODE}-{DRIVER}-7", NODE), ("other-x", "other")):
            body = stale(name, node, 41)
            body["metadata"]["resourceVersion"] = "1"
            apiserver.slices[name] = body
    with RunningDriver(dra_settings(board, kubelet_dirs, kubeconfig, tmp_path / "none.json")):
        assert wait_until(lambda: sorted(published(apiserver)) == BOARD_DEVICES)

        def names() -> list[str]:
            return sorted(s["metadata"]["name"] for s in apiserver.slice_list())

        # The stale -7 goes once -0 holds the new generation; another node's slice is not ours to touch.
        assert wait_until(lambda: names() == sorted([f"{NODE}-{DRIVER}-0", "other-x"])), names()
        assert apiserver.slices[f"{NODE}-{DRIVER}-0"]["spec"]["pool"]["generation"] == 42  # above the stale one


def test_hot_plug_and_health_reach_the_slices_within_a_second(
    running: RunningDriver, board: SampleBoard, apiserver: ApiServerStub
) -> None:
    generation = apiserver.slice_list()[0]["spec"]["pool"]["generation"]
    board.add_vf("0001:01:00.5", 23)
    started = time.monotonic()
    running.rescan("uevent")
    assert wait_until(lambda: "pci-0001-01-00-5" in published(apiserver), timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert apiserver.slice_list()[0]["spec"]["pool"]["generation"] > generation
    # The DPRC's group node goes: the device is unhealthy and leaves the pool (no taint: see docs/dra-notes.md).
    board.remove_group_node(10)
    running.rescan("uevent")
    assert wait_until(lambda: "dprc-2" not in published(apiserver), timeout=1.0)
    assert wait_until(lambda: running.sample("vnfio_dra_published_devices", health="Unhealthy") == 1)
    board.add_group_node(10)
    running.rescan("uevent")
    assert wait_until(lambda: "dprc-2" in published(apiserver), timeout=1.0)


def test_config_reload_reaches_the_slices(
    board: SampleBoard, kubelet_dirs: KubeletDirs, kubeconfig: Path, apiserver: ApiServerStub,
    dra_kubelet: DraKubeletStub, tmp_path: Path,
) -> None:
    import json

    config = tmp_path / "config.json"
    config.write_text(json.dumps(SAMPLE_CONFIG))
    with RunningDriver(dra_settings(board, kubelet_dirs, kubeconfig, config), config_poll=0.05):
        assert wait_until(lambda: sorted(published(apiserver)) == BOARD_DEVICES)
        config.write_text(json.dumps({"resourceList": SAMPLE_CONFIG["resourceList"][:1]}))
        assert wait_until(lambda: sorted(published(apiserver)) == ["dprc-2", "dprc-3"], timeout=1.5)


# ------------------------------------------------------------------------------------------- prepare
def test_prepare_a_dprc_gives_what_the_device_plugin_gives(
    running: RunningDriver, board: SampleBoard, apiserver: ApiServerStub, dra_kubelet: DraKubeletStub,
    kubelet_dirs: KubeletDirs,
) -> None:
    apiserver.put_claim(allocated_claim("dpdk", "uid-1", [("dprc", "dprc-2")]))
    answer = dra_kubelet.prepare(DRIVER, [("default", "dpdk", "uid-1")])["uid-1"]
    assert answer.error == ""
    assert answer.devices == ({"requestNames": ["dprc"], "poolName": NODE, "deviceName": "dprc-2",
                               "cdiDeviceIDs": ["vnfio.io/vfio=uid-1-dprc-2"]},)
    spec_path = kubelet_dirs.cdi / "vnfio-vnfio.io-vfio-uid-1.json"
    env, nodes = container_view(spec_path, answer.devices[0]["cdiDeviceIDs"])
    expected = device_plugin_answer(board, "nxp.com/dpaa2_dprc", ["dprc.2"])
    assert env == dict(expected.envs) and env["DPRC"] == "dprc.2"
    assert nodes == {(n.container_path, n.host_path, n.permissions) for n in expected.devices}
    assert ("/dev/vfio/10", str(board.dev / "vfio/10"), "rw") in nodes
    assert running.sample("vnfio_dra_prepares_total") == 1


def test_prepare_two_vfs_gives_what_the_device_plugin_gives(
    running: RunningDriver, board: SampleBoard, apiserver: ApiServerStub, dra_kubelet: DraKubeletStub,
    kubelet_dirs: KubeletDirs,
) -> None:
    apiserver.put_claim(allocated_claim("vfs", "uid-2", [("vf", "pci-0001-01-00-1"), ("vf", "pci-0001-01-00-2")]))
    answer = dra_kubelet.prepare(DRIVER, [("default", "vfs", "uid-2")])["uid-2"]
    assert answer.error == ""
    ids = [i for d in answer.devices for i in d["cdiDeviceIDs"]]
    assert [d["deviceName"] for d in answer.devices] == ["pci-0001-01-00-1", "pci-0001-01-00-2"]
    env, nodes = container_view(kubelet_dirs.cdi / "vnfio-vnfio.io-vfio-uid-2.json", ids)
    expected = device_plugin_answer(board, "intel.com/intel_vf", ["0001:01:00.1", "0001:01:00.2"])
    assert env == dict(expected.envs)
    assert env["PCIDEVICE_INTEL_COM_INTEL_VF"] == "0001:01:00.1,0001:01:00.2"
    assert nodes == {(n.container_path, n.host_path, n.permissions) for n in expected.devices}


def test_prepare_is_idempotent_and_unprepare_removes_what_it_made(
    running: RunningDriver, apiserver: ApiServerStub, dra_kubelet: DraKubeletStub, kubelet_dirs: KubeletDirs
) -> None:
    apiserver.put_claim(allocated_claim("dpdk", "uid-1", [("dprc", "dprc-3")]))
    first = dra_kubelet.prepare(DRIVER, [("default", "dpdk", "uid-1")])
    again = dra_kubelet.prepare(DRIVER, [("default", "dpdk", "uid-1")])
    assert first == again and first["uid-1"].error == ""
    spec = kubelet_dirs.cdi / "vnfio-vnfio.io-vfio-uid-1.json"
    assert spec.exists()
    checkpoint = kubelet_dirs.plugins / DRIVER / FILE_NAME
    assert "uid-1" in checkpoint.read_text()
    assert dra_kubelet.unprepare(DRIVER, [("default", "dpdk", "uid-1")]) == {"uid-1": ""}
    assert not spec.exists() and "uid-1" not in checkpoint.read_text()
    assert dra_kubelet.unprepare(DRIVER, [("default", "dpdk", "uid-1")]) == {"uid-1": ""}
    assert dra_kubelet.unprepare(DRIVER, [("default", "never", "uid-x")]) == {"uid-x": ""}
    assert sorted(p.name for p in kubelet_dirs.cdi.iterdir()) == []


@pytest.mark.parametrize(
    ("results", "reason", "message"),
    [
        ([("d", "dprc-9")], "unknown-device", "devices not on this node: dprc-9"),
        ([("d", "dprc-2"), ("d", "dprc-3")], "unsupported", "DPU uses one DPRC per process"),
        ([("d", "dprc-2"), ("v", "pci-0001-01-00-1")], None, ""),
    ],
    ids=["unknown", "two-dprcs", "dprc-and-vf"],
)
def test_bad_claims_fail_alone(
    running: RunningDriver, apiserver: ApiServerStub, dra_kubelet: DraKubeletStub,
    results: list[tuple[str, str]], reason: str | None, message: str,
) -> None:
    apiserver.put_claim(allocated_claim("bad", "uid-bad", results))
    apiserver.put_claim(allocated_claim("good", "uid-good", [("vf", "pci-0001-01-00-2")]))
    answers = dra_kubelet.prepare(DRIVER, [("default", "bad", "uid-bad"), ("default", "good", "uid-good")])
    assert answers["uid-good"].error == ""
    if reason is None:
        assert answers["uid-bad"].error == ""
        return
    assert message.replace("DPU", "DPDK") in answers["uid-bad"].error
    assert running.sample("vnfio_dra_failures_total", call="prepare", reason=reason) == 1


def test_claim_not_found_and_uid_mismatch_are_that_claims_errors(
    running: RunningDriver, apiserver: ApiServerStub, dra_kubelet: DraKubeletStub
) -> None:
    apiserver.put_claim(allocated_claim("remade", "uid-new", [("d", "dprc-2")]))
    answers = dra_kubelet.prepare(DRIVER, [("default", "gone", "uid-a"), ("default", "remade", "uid-old")])
    assert "ResourceClaim default/gone" in answers["uid-a"].error and "404" in answers["uid-a"].error
    assert "has UID uid-new, not uid-old" in answers["uid-old"].error
    assert running.sample("vnfio_dra_failures_total", call="prepare", reason="not-found") == 1
    assert running.sample("vnfio_dra_failures_total", call="prepare", reason="uid-mismatch") == 1


def test_an_unhealthy_device_is_refused(
    running: RunningDriver, board: SampleBoard, apiserver: ApiServerStub, dra_kubelet: DraKubeletStub
) -> None:
    apiserver.put_claim(allocated_claim("late", "uid-late", [("d", "dprc-2")]))
    board.remove_group_node(10)  # allocated while healthy, unhealthy by the time kubelet prepares
    running.rescan("uevent")
    answer = dra_kubelet.prepare(DRIVER, [("default", "late", "uid-late")])["uid-late"]
    assert "unhealthy devices: dprc.2" in answer.error
    assert running.sample("vnfio_dra_failures_total", call="prepare", reason="unhealthy-device") == 1


# ------------------------------------------------------------------------------------------- restarts
def test_driver_restart_keeps_prepared_claims(
    board: SampleBoard, kubelet_dirs: KubeletDirs, kubeconfig: Path, apiserver: ApiServerStub,
    dra_kubelet: DraKubeletStub, tmp_path: Path,
) -> None:
    settings = dra_settings(board, kubelet_dirs, kubeconfig, tmp_path / "none.json")
    apiserver.put_claim(allocated_claim("dpdk", "uid-1", [("dprc", "dprc-2")]))
    with RunningDriver(settings):
        dra_kubelet.wait_registered(DRIVER)
        first = dra_kubelet.prepare(DRIVER, [("default", "dpdk", "uid-1")])
    spec = kubelet_dirs.cdi / "vnfio-vnfio.io-vfio-uid-1.json"
    assert spec.exists()
    registrations = len(dra_kubelet.registrations)
    with RunningDriver(settings):
        dra_kubelet.wait_registered(DRIVER, after=registrations)  # a new socket: kubelet registers it again
        assert dra_kubelet.prepare(DRIVER, [("default", "dpdk", "uid-1")]) == first
        assert dra_kubelet.unprepare(DRIVER, [("default", "dpdk", "uid-1")]) == {"uid-1": ""}
    assert not spec.exists()


def test_kubelet_restart_and_a_deleted_socket_register_again(
    running: RunningDriver, dra_kubelet: DraKubeletStub, apiserver: ApiServerStub, kubelet_dirs: KubeletDirs
) -> None:
    count = len(dra_kubelet.registrations)
    dra_kubelet.restart()
    dra_kubelet.wait_registered(DRIVER, after=count)
    count = len(dra_kubelet.registrations)
    (kubelet_dirs.registry / f"{DRIVER}-reg.sock").unlink()
    dra_kubelet.wait_registered(DRIVER, after=count)
    apiserver.put_claim(allocated_claim("dpdk", "uid-1", [("dprc", "dprc-2")]))
    assert dra_kubelet.prepare(DRIVER, [("default", "dpdk", "uid-1")])["uid-1"].error == ""


def test_api_server_outage_is_retried(running: RunningDriver, board: SampleBoard, apiserver: ApiServerStub) -> None:
    apiserver.down = True
    board.add_vf("0001:01:00.5", 23)
    running.rescan("uevent")
    time.sleep(0.3)
    assert "pci-0001-01-00-5" not in published(apiserver)
    apiserver.down = False
    assert wait_until(lambda: "pci-0001-01-00-5" in published(apiserver), timeout=6.0)


def test_a_kubelet_that_speaks_only_v1beta1_is_served_too(
    board: SampleBoard, kubelet_dirs: KubeletDirs, kubeconfig: Path, apiserver: ApiServerStub, tmp_path: Path
) -> None:
    with DraKubeletStub(kubelet_dirs.registry, versions=("v1beta1.DRAPlugin",)) as kubelet, \
            RunningDriver(dra_settings(board, kubelet_dirs, kubeconfig, tmp_path / "none.json")):
        assert kubelet.wait_registered(DRIVER).version == "v1beta1.DRAPlugin"
        apiserver.put_claim(allocated_claim("dpdk", "uid-1", [("dprc", "dprc-2")]))
        answer = kubelet.prepare(DRIVER, [("default", "dpdk", "uid-1")])["uid-1"]
        assert answer.error == "" and answer.devices[0]["cdiDeviceIDs"] == ["vnfio.io/vfio=uid-1-dprc-2"]
        assert kubelet.unprepare(DRIVER, [("default", "dpdk", "uid-1")]) == {"uid-1": ""}


def test_metrics_count_prepares_unprepares_and_durations(
    running: RunningDriver, apiserver: ApiServerStub, dra_kubelet: DraKubeletStub
) -> None:
    apiserver.put_claim(allocated_claim("dpdk", "uid-1", [("dprc", "dprc-2")]))
    dra_kubelet.prepare(DRIVER, [("default", "dpdk", "uid-1")])
    dra_kubelet.unprepare(DRIVER, [("default", "dpdk", "uid-1")])
    assert running.sample("vnfio_dra_prepares_total") == 1
    assert running.sample("vnfio_dra_unprepares_total") == 1
    assert running.sample("vnfio_dra_duration_seconds_count", call="prepare") == 1
    assert running.sample("vnfio_dra_duration_seconds_count", call="unprepare") == 1
    assert running.sample("vnfio_devices", resource="nxp.com/dpaa2_dprc", health="Healthy") == 2
    assert running.metrics.ready() == (True, "ok")


def test_a_hot_plug_uevent_reaches_the_slices_within_a_second(
    board: SampleBoard, kubelet_dirs: KubeletDirs, kubeconfig: Path, apiserver: ApiServerStub,
    dra_kubelet: DraKubeletStub, tmp_path: Path,
) -> None:
    """The whole path: kernel uevent → the core's listener → rescan → the publisher → the API server."""
    import socket
    from dataclasses import replace

    kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    settings = dra_settings(board, kubelet_dirs, kubeconfig, tmp_path / "none.json")
    settings = replace(settings, daemon=replace(settings.daemon, uevents=True))
    try:
        with RunningDriver(settings, uevent_socket=lambda: ours):
            assert wait_until(lambda: sorted(published(apiserver)) == BOARD_DEVICES)
            board.add_vf("0001:01:00.5", 23)
            started = time.monotonic()
            kernel.send(b"bind@/devices/platform/soc/3800000.pcie/pci0001:00/0001:00:00.0/0001:01:00.5\0"
                        b"ACTION=bind\0SUBSYSTEM=pci\0DRIVER=vfio-pci\0PCI_SLOT_NAME=0001:01:00.5\0SEQNUM=1\0")
            assert wait_until(lambda: "pci-0001-01-00-5" in published(apiserver), timeout=1.0)
            assert time.monotonic() - started < 1.0
    finally:
        kernel.close()


def test_noiommu_nodes_are_mapped_as_the_device_plugin_maps_them(
    noiommu_board: SampleBoard, kubelet_dirs: KubeletDirs, kubeconfig: Path, apiserver: ApiServerStub,
    dra_kubelet: DraKubeletStub, tmp_path: Path,
) -> None:
    with RunningDriver(dra_settings(noiommu_board, kubelet_dirs, kubeconfig, tmp_path / "none.json")):
        dra_kubelet.wait_registered(DRIVER)
        assert wait_until(lambda: "dprc-2" in published(apiserver))
        apiserver.put_claim(allocated_claim("dpdk", "uid-1", [("dprc", "dprc-2")]))
        answer = dra_kubelet.prepare(DRIVER, [("default", "dpdk", "uid-1")])["uid-1"]
        assert answer.error == ""
        spec = kubelet_dirs.cdi / "vnfio-vnfio.io-vfio-uid-1.json"
        env, nodes = container_view(spec, answer.devices[0]["cdiDeviceIDs"])
    expected = device_plugin_answer(noiommu_board, "nxp.com/dpaa2_dprc", ["dprc.2"])
    assert nodes == {(n.container_path, n.host_path, n.permissions) for n in expected.devices}
    assert ("/dev/vfio/10", str(noiommu_board.dev / "vfio/noiommu-10"), "rw") in nodes
    assert env == dict(expected.envs)
