"""One pool's DevicePlugin server, alone, over a real unix socket: what kubelet would receive from it.

Pools are built by hand here (no sysfs), so each answer can be traced to the record that produced it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

import deviceplugin.kubelet.dpapi.server as server_module
from deviceplugin.kubelet.dpapi.server import PluginServer, RpcEvent, plugin_options
from deviceplugin.kubelet.dpapi.v1beta1 import api_pb2, api_pb2_grpc
from deviceplugin.records import DeviceNode, PoolDevice, ResourcePool

DEV = "/board/dev"
PF = "0001:01:00.0"


def _vfio() -> DeviceNode:
    return DeviceNode(f"{DEV}/vfio/vfio", "/dev/vfio/vfio")


def _group(n: int) -> DeviceNode:
    return DeviceNode(f"{DEV}/vfio/{n}", f"/dev/vfio/{n}")


def dprc_pool(*, dprc3_healthy: bool = True) -> ResourcePool:
    def dprc(n: int, group: int, healthy: bool) -> PoolDevice:
        return PoolDevice(
            id=f"dprc.{n}",
            kind="fslmc",
            healthy=healthy,
            iommu_groups=(group,),
            container=f"dprc.{n}",
            nodes=(_vfio(), _group(group)),
            why_unhealthy=None if healthy else "dprc.3 is bound to nothing",
        )

    return ResourcePool(
        "dpaa2_dprc", "nxp.com", "fslmc", (dprc(2, 10, True), dprc(3, 11, dprc3_healthy))
    )


def vf_pool() -> ResourcePool:
    def vf(dev_id: str, group: int, numa: int | None, addresses: tuple[str, ...]) -> PoolDevice:
        return PoolDevice(
            id=dev_id,
            kind="pci",
            healthy=True,
            iommu_groups=(group,),
            numa_node=numa,
            pci_addresses=addresses,
            pfs=(PF,),
            nodes=(_vfio(), _group(group)),
        )

    return ResourcePool(
        "intel_vf",
        "intel.com",
        "pci",
        (
            vf("0001:01:00.1", 20, 0, ("0001:01:00.1",)),
            vf("0001:01:00.2", 21, 0, ("0001:01:00.2",)),
            vf("iommu-group-22", 22, 1, ("0001:01:00.3", "0001:01:00.4")),
        ),
    )


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    # Short and unique: a unix socket path must fit in 108 bytes, and others run tests at the same time.
    path = Path(tempfile.mkdtemp(prefix=f"vnfio-srv-{os.getpid()}-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def serving(pool: ResourcePool, plugin_dir: Path, **kwargs: object) -> AsyncIterator[PluginServer]:
    server = PluginServer(pool, plugin_dir, **kwargs)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def dial(server: PluginServer) -> AsyncIterator[api_pb2_grpc.DevicePluginStub]:
    async with grpc.aio.insecure_channel(f"unix://{server.socket_path}") as channel:
        yield api_pb2_grpc.DevicePluginStub(channel)


def allocate_request(*ids: str) -> api_pb2.AllocateRequest:
    return api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=list(ids))])


def listed(message: api_pb2.ListAndWatchResponse) -> dict[str, tuple[str, list[int]]]:
    return {d.ID: (d.health, [n.ID for n in d.topology.nodes]) for d in message.devices}


# ----------------------------------------------------------------------------------------------- tests
def test_options_and_prestart(plugin_dir: Path) -> None:
    async def scenario() -> None:
        async with serving(dprc_pool(), plugin_dir) as server, dial(server) as stub:
            options = await stub.GetDevicePluginOptions(api_pb2.Empty())
            assert options.pre_start_required is False
            assert options.get_preferred_allocation_available is True
            assert options == server.options == plugin_options()
            reply = await stub.PreStartContainer(api_pb2.PreStartContainerRequest(devices_ids=["dprc.2"]))
            assert reply == api_pb2.PreStartContainerResponse()

    asyncio.run(scenario())


def test_socket_is_private_and_removed_on_stop(plugin_dir: Path) -> None:
    async def scenario() -> None:
        server = PluginServer(dprc_pool(), plugin_dir)
        await server.start()
        mode = os.stat(plugin_dir / "vnfio-dpaa2_dprc.sock").st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
        assert server.socket_present()
        await server.stop()
        assert not (plugin_dir / "vnfio-dpaa2_dprc.sock").exists()
        assert not server.socket_present()

    asyncio.run(scenario())


def test_stale_socket_is_replaced(plugin_dir: Path) -> None:
    stale = plugin_dir / "vnfio-dpaa2_dprc.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(stale))  # a socket file nobody listens on: what a killed plugin leaves behind
    leftover.close()

    async def scenario() -> None:
        async with serving(dprc_pool(), plugin_dir) as server, dial(server) as stub:
            first = await stub.ListAndWatch(api_pb2.Empty()).read()
            assert sorted(listed(first)) == ["dprc.2", "dprc.3"]

    asyncio.run(scenario())


def test_a_file_that_is_not_a_socket_is_left_alone(plugin_dir: Path) -> None:
    other = plugin_dir / "vnfio-dpaa2_dprc.sock"
    other.write_text("not ours\n")

    async def scenario() -> None:
        with pytest.raises(OSError, match="not a socket"):
            await PluginServer(dprc_pool(), plugin_dir).start()

    asyncio.run(scenario())
    assert other.read_text() == "not ours\n"


def test_list_and_watch_sends_full_lists_only_on_change(plugin_dir: Path) -> None:
    async def scenario() -> None:
        async with serving(vf_pool(), plugin_dir) as server, dial(server) as stub:
            stream = stub.ListAndWatch(api_pb2.Empty())
            assert listed(await stream.read()) == {
                "0001:01:00.1": ("Healthy", [0]),
                "0001:01:00.2": ("Healthy", [0]),
                "iommu-group-22": ("Healthy", [1]),
            }
            # Same devices, other bookkeeping: kubelet's view is unchanged, so nothing is sent ...
            assert server.update(replace(vf_pool(), excluded=(("0001:01:00.5", "bound to i40e"),))) is False
            # ... which the next message shows: it is this real change, not a repeat of the first list.
            pool = vf_pool()
            sick = replace(pool.devices[1], healthy=False, why_unhealthy="unbound")
            assert server.update(replace(pool, devices=(pool.devices[0], sick))) is True
            assert listed(await stream.read()) == {
                "0001:01:00.1": ("Healthy", [0]),
                "0001:01:00.2": ("Unhealthy", [0]),
            }
            stream.cancel()

    asyncio.run(scenario())


def test_topology_only_when_numa_is_known(plugin_dir: Path) -> None:
    async def scenario() -> None:
        async with serving(dprc_pool(), plugin_dir) as server, dial(server) as stub:
            first = await stub.ListAndWatch(api_pb2.Empty()).read()
            assert all(not d.HasField("topology") for d in first.devices)

    asyncio.run(scenario())


def test_streams_end_cleanly_on_stop(plugin_dir: Path) -> None:
    async def scenario() -> None:
        server = PluginServer(dprc_pool(), plugin_dir)
        await server.start()
        async with dial(server) as stub:
            stream = stub.ListAndWatch(api_pb2.Empty())
            await stream.read()
            await server.stop()
            assert await stream.read() == grpc.aio.EOF
            assert await stream.code() == grpc.StatusCode.OK

    asyncio.run(scenario())


def test_update_of_another_pool_is_refused(plugin_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"intel\.com/intel_vf"):
        PluginServer(dprc_pool(), plugin_dir).update(vf_pool())


def test_allocate_dprc(plugin_dir: Path) -> None:
    async def scenario() -> None:
        async with serving(dprc_pool(), plugin_dir) as server, dial(server) as stub:
            reply = await stub.Allocate(allocate_request("dprc.2"))
            (container,) = reply.container_responses
            assert container.envs["DPRC"] == "dprc.2"
            assert [(d.host_path, d.container_path, d.permissions) for d in container.devices] == [
                (f"{DEV}/vfio/vfio", "/dev/vfio/vfio", "rw"),
                (f"{DEV}/vfio/10", "/dev/vfio/10", "rw"),
            ]
            assert not any("dprc" in d.host_path for d in container.devices)
            assert list(container.mounts) == []

    asyncio.run(scenario())


def test_allocate_pci_is_independent_of_id_order(plugin_dir: Path) -> None:
    async def scenario() -> None:
        async with serving(vf_pool(), plugin_dir) as server, dial(server) as stub:
            one = await stub.Allocate(allocate_request("iommu-group-22", "0001:01:00.1"))
            two = await stub.Allocate(allocate_request("0001:01:00.1", "iommu-group-22"))
            assert one == two
            (container,) = one.container_responses
            addresses = "0001:01:00.1,0001:01:00.3,0001:01:00.4"
            assert container.envs["PCIDEVICE_INTEL_COM_INTEL_VF"] == addresses
            assert container.envs["PCI_RESOURCE_INTEL_COM_INTEL_VF"] == addresses
            assert [d.container_path for d in container.devices] == ["/dev/vfio/vfio", "/dev/vfio/20", "/dev/vfio/22"]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("ids", "code", "words"),
    [
        (("dprc.9",), grpc.StatusCode.NOT_FOUND, "dprc.9"),
        (("dprc.3",), grpc.StatusCode.INVALID_ARGUMENT, "unhealthy"),
        (("dprc.2", "dprc.3"), grpc.StatusCode.INVALID_ARGUMENT, "dprc"),
        ((), grpc.StatusCode.INVALID_ARGUMENT, "no device"),
    ],
)
def test_allocate_refusals_map_to_status_codes_and_the_server_stays_up(
    plugin_dir: Path, ids: tuple[str, ...], code: grpc.StatusCode, words: str
) -> None:
    async def scenario() -> None:
        async with serving(dprc_pool(dprc3_healthy=False), plugin_dir) as server, dial(server) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Allocate(allocate_request(*ids))
            assert refused.value.code() == code
            assert words in refused.value.details()
            reply = await stub.Allocate(allocate_request("dprc.2"))
            assert reply.container_responses[0].envs["DPRC"] == "dprc.2"

    asyncio.run(scenario())


def test_unexpected_policy_failure_is_internal_and_the_server_stays_up(
    plugin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = server_module.allocate

    def flaky(pool: ResourcePool, ids: list[str]) -> object:
        if ids == ["dprc.3"]:
            raise RuntimeError("policy bug")
        return real(pool, ids)

    monkeypatch.setattr(server_module, "allocate", flaky)

    async def scenario() -> None:
        async with serving(dprc_pool(), plugin_dir) as server, dial(server) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Allocate(allocate_request("dprc.3"))
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert "policy bug" in failed.value.details()
            reply = await stub.Allocate(allocate_request("dprc.2"))
            assert reply.container_responses[0].envs["DPRC"] == "dprc.2"

    asyncio.run(scenario())


def test_preferred_allocation(plugin_dir: Path) -> None:
    def request(available: list[str], must: list[str], size: int) -> api_pb2.PreferredAllocationRequest:
        return api_pb2.PreferredAllocationRequest(
            container_requests=[
                api_pb2.ContainerPreferredAllocationRequest(
                    available_deviceIDs=available, must_include_deviceIDs=must, allocation_size=size
                )
            ]
        )

    everything = ["iommu-group-22", "0001:01:00.2", "0001:01:00.1"]

    async def scenario() -> None:
        async with serving(vf_pool(), plugin_dir) as server, dial(server) as stub:
            reply = await stub.GetPreferredAllocation(request(everything, [], 2))
            (answer,) = reply.container_responses
            assert sorted(answer.deviceIDs) == ["0001:01:00.1", "0001:01:00.2"]  # both on NUMA node 0
            reply = await stub.GetPreferredAllocation(request(everything, ["iommu-group-22"], 2))
            (answer,) = reply.container_responses
            assert len(answer.deviceIDs) == 2
            assert "iommu-group-22" in answer.deviceIDs
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetPreferredAllocation(request(everything, [], 4))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    asyncio.run(scenario())


def test_observer_sees_each_call(plugin_dir: Path) -> None:
    events: list[RpcEvent] = []

    async def scenario() -> None:
        async with serving(dprc_pool(), plugin_dir, observer=events.append) as server, dial(server) as stub:
            await stub.Allocate(allocate_request("dprc.2"))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Allocate(allocate_request("dprc.7"))

    asyncio.run(scenario())
    assert [(e.resource, e.method, e.status, e.device_ids) for e in events] == [
        ("nxp.com/dpaa2_dprc", "Allocate", "OK", ("dprc.2",)),
        ("nxp.com/dpaa2_dprc", "Allocate", "NOT_FOUND", ()),
    ]


def test_allocate_answers_each_container_request_in_order(plugin_dir: Path) -> None:
    request = api_pb2.AllocateRequest(
        container_requests=[
            api_pb2.ContainerAllocateRequest(devices_ids=["dprc.3"]),
            api_pb2.ContainerAllocateRequest(devices_ids=["dprc.2"]),
        ]
    )

    async def scenario() -> None:
        async with serving(dprc_pool(), plugin_dir) as server, dial(server) as stub:
            reply = await stub.Allocate(request)
            assert [c.envs["DPRC"] for c in reply.container_responses] == ["dprc.3", "dprc.2"]
            assert [d.container_path for d in reply.container_responses[0].devices] == [
                "/dev/vfio/vfio",
                "/dev/vfio/11",
            ]

    asyncio.run(scenario())
