"""Node labels and health Events through the real kubernetes client, against a local API server stand-in."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime

import pytest
from apiserver_stub import ApiServerStub, Request

from deviceplugin.observability.nodeinfo import NodeReporter, health_changes, offered_labels
from deviceplugin.records import PoolDevice, ResourcePool

NODE = "node-a"
TOKEN = "test-token-0123"
NODE_PATH = f"/api/v1/nodes/{NODE}"
EVENTS_PATH = "/api/v1/namespaces/default/events"


def vf_pool(*health: bool, why: str = "driver is i40e, not vfio-pci") -> ResourcePool:
    devices = tuple(
        PoolDevice(f"0001:01:00.{i + 1}", "pci", ok, (20 + i,), why_unhealthy=None if ok else why)
        for i, ok in enumerate(health)
    )
    return ResourcePool("intel_vf", "intel.com", "pci", devices)


def dprc_pool(count: int) -> ResourcePool:
    devices = tuple(PoolDevice(f"dprc.{i + 2}", "fslmc", True, (10 + i,)) for i in range(count))
    return ResourcePool("dpaa2_dprc", "nxp.com", "fslmc", devices)


UNOFFERED = {"vnfio.io/vfio-platform": None, "vnfio.io/vhost-net": None}  # the kinds these tests' pools are not


# ------------------------------------------------------------------------------------------ policy
def test_labels_follow_what_is_offered() -> None:
    assert offered_labels([vf_pool(True), dprc_pool(2)]) == {
        "vnfio.io/dpaa2": "true", "vnfio.io/vfio-pci": "true", **UNOFFERED
    }
    # An Unhealthy device still counts: kubelet shows it in capacity.
    assert offered_labels([vf_pool(False), dprc_pool(0)]) == {
        "vnfio.io/dpaa2": None, "vnfio.io/vfio-pci": "true", **UNOFFERED
    }
    assert offered_labels([]) == {"vnfio.io/dpaa2": None, "vnfio.io/vfio-pci": None, **UNOFFERED}


def test_health_changes_between_snapshots() -> None:
    before = {"intel.com/intel_vf": vf_pool(True, True)}
    after = {"intel.com/intel_vf": vf_pool(False, True, False)}
    changes = health_changes(before, after)
    assert [(c.device_id, c.healthy, c.reason, c.type) for c in changes] == [
        ("0001:01:00.1", False, "DeviceUnhealthy", "Warning"),
        ("0001:01:00.3", False, "DeviceUnhealthy", "Warning"),  # joined Unhealthy
    ]
    assert changes[0].message == "intel.com/intel_vf device 0001:01:00.1 is Unhealthy: driver is i40e, not vfio-pci"
    back = health_changes(after, {"intel.com/intel_vf": vf_pool(True, True)})
    assert [(c.device_id, c.reason, c.type) for c in back] == [("0001:01:00.1", "DeviceHealthy", "Normal")]
    assert back[0].message == "intel.com/intel_vf device 0001:01:00.1 is Healthy again"
    assert health_changes(after, after) == []
    assert health_changes({}, {"nxp.com/dpaa2_dprc": dprc_pool(2)}) == []  # healthy newcomers are no news


# ------------------------------------------------------------------------------------- over HTTP
@pytest.fixture
def apiserver() -> Iterator[ApiServerStub]:
    stub = ApiServerStub((NODE,), token=TOKEN).start()
    yield stub
    stub.stop()


def run_with_reporter(reporter: NodeReporter, scenario: Callable[[NodeReporter], Awaitable[None]]) -> None:
    async def main() -> None:
        task = asyncio.create_task(reporter.run())
        try:
            await asyncio.wait_for(scenario(reporter), 30)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def requests_to(stub: ApiServerStub, method: str, path: str) -> list[Request]:
    return [r for r in stub.requests if (r.method, r.path) == (method, path)]


def test_labels_are_patched_onto_the_node(apiserver: ApiServerStub) -> None:
    reporter = NodeReporter(NODE, host=apiserver.url, token=TOKEN)

    async def scenario(r: NodeReporter) -> None:
        r.report([vf_pool(True, True), dprc_pool(2)])
        await r.wait_idle()
        r.report([vf_pool(True, True), dprc_pool(0)])  # the DPAA2 containers went away
        await r.wait_idle()

    run_with_reporter(reporter, scenario)
    patches = requests_to(apiserver, "PATCH", NODE_PATH)
    assert [p.body for p in patches] == [
        {"metadata": {"labels": {"vnfio.io/dpaa2": "true", "vnfio.io/vfio-pci": "true", **UNOFFERED}}},
        {"metadata": {"labels": {"vnfio.io/dpaa2": None, "vnfio.io/vfio-pci": "true", **UNOFFERED}}},
    ]
    assert {p.content_type for p in patches} == {"application/merge-patch+json"}
    assert {p.authorization for p in patches} == {f"Bearer {TOKEN}"}
    # Labels set by others stay; ours follow the pools.
    assert apiserver.node_labels(NODE) == {"kubernetes.io/hostname": NODE, "vnfio.io/vfio-pci": "true"}


def test_unchanged_pools_make_no_calls(apiserver: ApiServerStub) -> None:
    reporter = NodeReporter(NODE, host=apiserver.url, token=TOKEN)
    counts: list[int] = []

    async def scenario(r: NodeReporter) -> None:
        r.report([vf_pool(True)])
        await r.wait_idle()
        counts.append(len(apiserver.requests))
        r.report([vf_pool(True)])
        await r.wait_idle()
        counts.append(len(apiserver.requests))

    run_with_reporter(reporter, scenario)
    assert counts == [1, 1]


def test_health_changes_post_node_events(apiserver: ApiServerStub) -> None:
    reporter = NodeReporter(NODE, host=apiserver.url, token=TOKEN)
    before = datetime.now(UTC).replace(microsecond=0)

    async def scenario(r: NodeReporter) -> None:
        r.report([vf_pool(True, True)])
        r.report([vf_pool(False, True)])  # VF unbound from vfio-pci
        r.report([vf_pool(True, True)])  # and bound again
        await r.wait_idle()

    run_with_reporter(reporter, scenario)
    posts = requests_to(apiserver, "POST", EVENTS_PATH)
    assert len(posts) == 2
    unhealthy, healthy = (p.body for p in posts)
    for body in (unhealthy, healthy):
        assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE}
        assert body["source"] == {"component": "vnfio-device-plugin", "host": NODE}
        assert body["metadata"]["namespace"] == "default"
        assert body["metadata"]["name"].startswith(f"{NODE}.")
        assert body["count"] == 1
        assert datetime.fromisoformat(body["firstTimestamp"].replace("Z", "+00:00")) >= before
    assert (unhealthy["reason"], unhealthy["type"]) == ("DeviceUnhealthy", "Warning")
    assert unhealthy["message"] == "intel.com/intel_vf device 0001:01:00.1 is Unhealthy: driver is i40e, not vfio-pci"
    assert (healthy["reason"], healthy["type"]) == ("DeviceHealthy", "Normal")
    assert healthy["message"] == "intel.com/intel_vf device 0001:01:00.1 is Healthy again"
    assert unhealthy["metadata"]["name"] != healthy["metadata"]["name"]
    assert {p.content_type for p in posts} == {"application/json"}
    assert len(apiserver.events) == 2


def test_failures_are_retried_and_never_raise() -> None:
    stub = ApiServerStub((NODE,), fail_first=3).start()
    reporter = NodeReporter(NODE, host=stub.url, backoff_initial=0.01, backoff_max=0.05)

    async def scenario(r: NodeReporter) -> None:
        r.report([vf_pool(True)])
        r.report([vf_pool(False)])
        await r.wait_idle()

    try:
        run_with_reporter(reporter, scenario)
    finally:
        stub.stop()
    patches = requests_to(stub, "PATCH", NODE_PATH)
    assert len(patches) == 4  # three refused, the fourth applied
    assert len(requests_to(stub, "POST", EVENTS_PATH)) == 1
    assert reporter.failures == 3
    assert stub.node_labels(NODE)["vnfio.io/vfio-pci"] == "true"
    assert [e["reason"] for e in stub.events.values()] == ["DeviceUnhealthy"]


def test_event_that_already_landed_is_not_duplicated(apiserver: ApiServerStub) -> None:
    """A create retried after a lost response answers 409: the reporter takes that as delivered."""
    reporter = NodeReporter(NODE, host=apiserver.url, token=TOKEN)

    async def scenario(r: NodeReporter) -> None:
        r.report([vf_pool(False)])
        await r.wait_idle()
        # Replay the same event, as if our first attempt's response had been lost.
        r._events.append(requests_to(apiserver, "POST", EVENTS_PATH)[0].body)
        r._poke()
        await r.wait_idle()

    run_with_reporter(reporter, scenario)
    assert len(requests_to(apiserver, "POST", EVENTS_PATH)) == 2
    assert len(apiserver.events) == 1
    assert reporter.failures == 0


def test_unreachable_api_server_is_not_fatal() -> None:
    stub = ApiServerStub((NODE,)).start()
    url = stub.url
    stub.stop()  # nothing listens there any more
    reporter = NodeReporter(NODE, host=url, backoff_initial=0.01, backoff_max=0.02)

    async def scenario(r: NodeReporter) -> None:
        r.report([vf_pool(False)])
        while r.failures < 3:
            await asyncio.sleep(0.01)
        assert r.pending()

    run_with_reporter(reporter, scenario)
    assert reporter.failures >= 3


def test_missing_in_cluster_config_is_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a service account (not in a pod) the in-cluster config fails: logged, retried, never raised."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    reporter = NodeReporter(NODE, backoff_initial=0.01, backoff_max=0.02)

    async def scenario(r: NodeReporter) -> None:
        r.report([vf_pool(True)])
        while r.failures < 2:
            await asyncio.sleep(0.01)

    run_with_reporter(reporter, scenario)
    assert reporter.failures >= 2
