"""Registering a served pool with kubelet, against the kubelet stand-in: what kubelet accepts, refuses, and
does after it accepted (dial back, ListAndWatch, Allocate), and what the stand-in itself enforces."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from kubelet_stub import KubeletStub, Options, device_health, resource_name_problem
from test_server import dprc_pool, serving, vf_pool

from deviceplugin.kubelet.dpapi.registration import API_VERSION, RegistrationError, register
from deviceplugin.kubelet.dpapi.server import PluginServer, plugin_options
from deviceplugin.kubelet.dpapi.v1beta1 import api_pb2, api_pb2_grpc


async def raw_register(plugin_dir: Path, request: api_pb2.RegisterRequest) -> None:
    async with grpc.aio.insecure_channel(f"unix://{plugin_dir}/kubelet.sock") as channel:
        await api_pb2_grpc.RegistrationStub(channel).Register(request, timeout=15)


def good_request(**changes: object) -> api_pb2.RegisterRequest:
    fields: dict[str, object] = {
        "version": API_VERSION,
        "endpoint": "vnfio-dpaa2_dprc.sock",
        "resource_name": "nxp.com/dpaa2_dprc",
        "options": plugin_options(),
    }
    fields.update(changes)
    return api_pb2.RegisterRequest(**fields)  # type: ignore[arg-type]


def test_registered_pool_is_watched_and_allocated_through(plugin_dir: Path, kubelet: KubeletStub) -> None:
    async def scenario() -> None:
        async with serving(dprc_pool(), plugin_dir) as server:
            await register(plugin_dir, server.pool, server.options)
            seen = await asyncio.to_thread(kubelet.wait_for, "nxp.com/dpaa2_dprc", lambda d: len(d) == 2)
            assert device_health(seen) == {"dprc.2": "Healthy", "dprc.3": "Healthy"}
            reply = await asyncio.to_thread(kubelet.allocate, "nxp.com/dpaa2_dprc", ["dprc.3"])
            assert reply.envs["DPRC"] == "dprc.3"
            assert {d.container_path for d in reply.devices} == {"/dev/vfio/vfio", "/dev/vfio/11"}

    asyncio.run(scenario())
    (registration,) = kubelet.registrations
    assert registration.resource == "nxp.com/dpaa2_dprc"
    assert registration.endpoint == "vnfio-dpaa2_dprc.sock"  # a bare file name, joined to kubelet's dir
    # Kubelet reads the options from the request (old kubelets) or by asking: both must say the same.
    assert registration.request_options == registration.plugin_options == Options(False, True)


def test_preferred_allocation_through_kubelet(plugin_dir: Path, kubelet: KubeletStub) -> None:
    async def scenario() -> list[str]:
        async with serving(vf_pool(), plugin_dir) as server:
            await register(plugin_dir, server.pool, server.options)
            await asyncio.to_thread(kubelet.wait_registered, "intel.com/intel_vf")
            return await asyncio.to_thread(
                kubelet.preferred, "intel.com/intel_vf", ["iommu-group-22", "0001:01:00.1"], ["0001:01:00.1"], 1
            )

    assert asyncio.run(scenario()) == ["0001:01:00.1"]


def test_stream_end_marks_devices_unhealthy(plugin_dir: Path, kubelet: KubeletStub) -> None:
    async def scenario() -> None:
        server = PluginServer(dprc_pool(), plugin_dir)
        await server.start()
        await register(plugin_dir, server.pool, server.options)
        await asyncio.to_thread(kubelet.wait_for, "nxp.com/dpaa2_dprc", lambda d: len(d) == 2)
        await server.stop()
        seen = await asyncio.to_thread(
            kubelet.wait_for, "nxp.com/dpaa2_dprc", lambda d: d and not any(x.healthy for x in d.values())
        )
        assert device_health(seen) == {"dprc.2": "Unhealthy", "dprc.3": "Unhealthy"}

    asyncio.run(scenario())
    assert kubelet.stream_ends("nxp.com/dpaa2_dprc") == 1


def test_registering_again_replaces_the_endpoint(plugin_dir: Path, kubelet: KubeletStub) -> None:
    async def scenario() -> None:
        async with serving(dprc_pool(), plugin_dir) as server:
            await register(plugin_dir, server.pool, server.options)
            await register(plugin_dir, server.pool, server.options)
            seen = await asyncio.to_thread(kubelet.wait_for, "nxp.com/dpaa2_dprc", lambda d: len(d) == 2)
            # The first endpoint's stream was closed by kubelet itself: that end marks nothing.
            assert all(d.healthy for d in seen.values())
            assert kubelet.stream_ends("nxp.com/dpaa2_dprc") == 0

    asyncio.run(scenario())
    assert kubelet.registration_count("nxp.com/dpaa2_dprc") == 2


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"version": "v1alpha"}, "unsupported API version"),
        ({"version": ""}, "unsupported API version"),
        ({"resource_name": "dpaa2_dprc"}, "no domain prefix"),
        ({"resource_name": "kubernetes.io/dprc"}, "reserved"),
        ({"resource_name": "nxp.com/dprc/2"}, "at most one '/'"),
        ({"resource_name": "nxp.com/" + "d" * 64}, "longer than 63"),
        ({"endpoint": "../vnfio-dpaa2_dprc.sock"}, "bare file name"),
        ({"endpoint": "/var/lib/kubelet/device-plugins/vnfio-dpaa2_dprc.sock"}, "bare file name"),
        ({"endpoint": ""}, "empty"),
    ],
)
def test_bad_registrations_are_refused(
    plugin_dir: Path, kubelet: KubeletStub, changes: dict[str, object], words: str
) -> None:
    async def scenario() -> None:
        async with serving(dprc_pool(), plugin_dir):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await raw_register(plugin_dir, good_request(**changes))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in refused.value.details()

    asyncio.run(scenario())
    assert kubelet.registrations == []
    assert kubelet.resources() == set()


@pytest.mark.parametrize(
    "name",
    [
        "nxp.com/dpaa2_dprc",
        "intel.com/intel_vf",
        "vnfio.io/a",
        "example.com/A.b-c_9",
        "a.b.c.example.com/" + "x" * 63,
    ],
)
def test_extended_resource_names_kubelet_accepts(name: str) -> None:
    assert resource_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("dpaa2", "no domain prefix"),
        ("kubernetes.io/x", "reserved"),
        ("sub.kubernetes.io/x", "reserved"),
        ("requests.nxp.com/x", "requests."),
        ("NXP.com/x", "DNS subdomain"),
        ("nxp_com/x", "DNS subdomain"),
        ("-nxp.com/x", "DNS subdomain"),
        ("/x", "DNS subdomain"),
        ("nxp.com/", "empty"),
        ("nxp.com/-x", "start and end alphanumeric"),
        ("nxp.com/x.", "start and end alphanumeric"),
        ("nxp.com/x y", "[A-Za-z0-9._-]"),
        ("nxp.com/" + "x" * 64, "longer than 63"),
        ("a" * 250 + ".com/x", "longer than 253"),
    ],
)
def test_extended_resource_names_kubelet_rejects(name: str, words: str) -> None:
    problem = resource_name_problem(name)
    assert problem is not None
    assert words in problem


def test_register_without_kubelet_is_a_clear_error(plugin_dir: Path) -> None:
    async def scenario() -> None:
        async with serving(dprc_pool(), plugin_dir) as server:
            with pytest.raises(RegistrationError, match="does not exist"):
                await register(plugin_dir, server.pool, server.options)

    asyncio.run(scenario())


def test_kubelet_refuses_a_plugin_it_cannot_dial_back(plugin_dir: Path) -> None:
    with KubeletStub(plugin_dir, dial_timeout=0.5) as kubelet:
        # Register before serving: kubelet's dial-back finds nobody and Register fails.
        with pytest.raises(RegistrationError, match="failed to dial device plugin"):
            asyncio.run(register(plugin_dir, dprc_pool(), plugin_options()))
        assert kubelet.registrations == []
        assert kubelet.rejections[0][0] == "nxp.com/dpaa2_dprc"


def test_kubelet_restart_deletes_plugin_sockets_and_keeps_other_files(plugin_dir: Path, kubelet: KubeletStub) -> None:
    checkpoint = plugin_dir / "kubelet_internal_checkpoint"
    checkpoint.write_text("{}")

    async def scenario() -> None:
        async with serving(dprc_pool(), plugin_dir) as server:
            await register(plugin_dir, server.pool, server.options)
            await asyncio.to_thread(kubelet.wait_for, "nxp.com/dpaa2_dprc", lambda d: len(d) == 2)
            before = (plugin_dir / "kubelet.sock").stat()
            await asyncio.to_thread(kubelet.restart)
            assert not server.socket_present()
            assert kubelet.devices("nxp.com/dpaa2_dprc") == {}  # capacity 0 until the plugin registers again
            after = (plugin_dir / "kubelet.sock").stat()
            assert (after.st_ino, after.st_ctime_ns) != (before.st_ino, before.st_ctime_ns)

    asyncio.run(scenario())
    assert checkpoint.read_text() == "{}"


def test_the_old_plugin_going_away_does_not_touch_its_replacement(plugin_dir: Path, kubelet: KubeletStub) -> None:
    # Two plugin instances for one resource: the old one on its own socket, the new one registered after it.
    from dataclasses import replace

    old_pool = dprc_pool()
    new_pool = replace(dprc_pool(), name="dpaa2_dprc_new")  # another socket, same devices

    async def scenario() -> None:
        async with serving(new_pool, plugin_dir) as new:
            old = PluginServer(old_pool, plugin_dir)
            await old.start()
            await register(plugin_dir, old.pool, old.options)
            await asyncio.to_thread(kubelet.wait_for, "nxp.com/dpaa2_dprc", lambda d: len(d) == 2)
            await raw_register(plugin_dir, good_request(endpoint=new.socket_path.name))
            await asyncio.to_thread(kubelet.wait_registered, "nxp.com/dpaa2_dprc", 2)
            await old.stop()  # its stream ends after kubelet moved on to the new instance
            # A third registration: a point after which kubelet has handled whatever the old stream's end did.
            await raw_register(plugin_dir, good_request(endpoint=new.socket_path.name))
            await asyncio.to_thread(kubelet.wait_registered, "nxp.com/dpaa2_dprc", 3)
            seen = await asyncio.to_thread(kubelet.wait_for, "nxp.com/dpaa2_dprc", lambda d: len(d) == 2)
            assert all(d.healthy for d in seen.values())
            assert kubelet.stream_ends("nxp.com/dpaa2_dprc") == 0

    asyncio.run(scenario())


def test_kubelet_restart_that_keeps_plugin_sockets_only_renews_kubelet_sock(
    plugin_dir: Path, kubelet: KubeletStub
) -> None:
    async def scenario() -> None:
        async with serving(dprc_pool(), plugin_dir) as server:
            await register(plugin_dir, server.pool, server.options)
            await asyncio.to_thread(kubelet.wait_for, "nxp.com/dpaa2_dprc", lambda d: len(d) == 2)
            before = (plugin_dir / "kubelet.sock").stat()
            await asyncio.to_thread(kubelet.restart, keep_plugin_sockets=True)
            after = (plugin_dir / "kubelet.sock").stat()
            assert server.socket_present()
            assert (after.st_ino, after.st_ctime_ns) != (before.st_ino, before.st_ctime_ns)
            assert kubelet.devices("nxp.com/dpaa2_dprc") == {}
            await register(plugin_dir, server.pool, server.options)  # the same server, registered again
            seen = await asyncio.to_thread(kubelet.wait_for, "nxp.com/dpaa2_dprc", lambda d: len(d) == 2)
            assert all(d.healthy for d in seen.values())

    asyncio.run(scenario())
    assert kubelet.registration_count("nxp.com/dpaa2_dprc") == 2
