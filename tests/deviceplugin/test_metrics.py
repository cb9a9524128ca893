"""Metrics: what a Prometheus scrape over HTTP returns, and the liveness/readiness endpoints for the probes."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deviceplugin.observability.metrics import MetricsEndpoint, PluginMetrics, serve_metrics
from deviceplugin.records import PoolDevice, ResourcePool

VF = "intel.com/intel_vf"
DPRC = "nxp.com/dpaa2_dprc"


def _pool(name: str, prefix: str, kind: str, health: list[bool]) -> ResourcePool:
    devices = tuple(PoolDevice(f"dev-{i}", kind, ok, (20 + i,)) for i, ok in enumerate(health))
    return ResourcePool(name, prefix, kind, devices)


@pytest.fixture
def metrics() -> PluginMetrics:
    return PluginMetrics()


@pytest.fixture
def endpoint(metrics: PluginMetrics) -> Iterator[MetricsEndpoint]:
    ep = serve_metrics(metrics, "127.0.0.1", 0)
    yield ep
    ep.close()


def _get(ep: MetricsEndpoint, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ep.port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(ep: MetricsEndpoint) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = _get(ep, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_scrape_shows_devices_by_health(metrics: PluginMetrics, endpoint: MetricsEndpoint) -> None:
    metrics.set_pool(_pool("intel_vf", "intel.com", "pci", [True, True, False]))
    metrics.set_pool(_pool("dpaa2_dprc", "nxp.com", "fslmc", [True]))
    samples = _samples(endpoint)
    assert samples[("vnfio_devices", (("health", "Healthy"), ("resource", VF)))] == 2
    assert samples[("vnfio_devices", (("health", "Unhealthy"), ("resource", VF)))] == 1
    assert samples[("vnfio_devices", (("health", "Healthy"), ("resource", DPRC)))] == 1
    assert samples[("vnfio_devices", (("health", "Unhealthy"), ("resource", DPRC)))] == 0

    # The device turns healthy again: the same gauges move, nothing is added.
    metrics.set_pool(_pool("intel_vf", "intel.com", "pci", [True, True, True]))
    samples = _samples(endpoint)
    assert samples[("vnfio_devices", (("health", "Healthy"), ("resource", VF)))] == 3
    assert samples[("vnfio_devices", (("health", "Unhealthy"), ("resource", VF)))] == 0


def test_removed_pool_leaves_the_scrape(metrics: PluginMetrics, endpoint: MetricsEndpoint) -> None:
    metrics.set_pool(_pool("intel_vf", "intel.com", "pci", [True]))
    metrics.forget_pool(VF)
    metrics.forget_pool("never/seen")
    samples = _samples(endpoint)
    assert not [k for k in samples if k[0] in ("vnfio_devices", "vnfio_pool_registered")]


def test_allocations_and_latencies(metrics: PluginMetrics, endpoint: MetricsEndpoint) -> None:
    metrics.observe_allocate(VF, 0.0004, "OK", 2)
    metrics.observe_allocate(VF, 0.002, "OK", 1)
    metrics.observe_allocate(VF, 0.0001, "NOT_FOUND", 0)
    metrics.observe_preferred_allocation(VF, 0.0003)
    samples = _samples(endpoint)
    res = (("resource", VF),)
    assert samples[("vnfio_allocations_total", res)] == 2
    assert samples[("vnfio_allocated_devices_total", res)] == 3
    assert samples[("vnfio_allocation_failures_total", (("code", "NOT_FOUND"), ("resource", VF)))] == 1
    assert samples[("vnfio_allocate_duration_seconds_count", res)] == 3
    assert samples[("vnfio_allocate_duration_seconds_bucket", (("le", "0.0005"), ("resource", VF)))] == 2
    assert samples[("vnfio_allocate_duration_seconds_sum", res)] == pytest.approx(0.0025)
    assert samples[("vnfio_preferred_allocation_duration_seconds_count", res)] == 1


def test_registrations_rescans_and_config(metrics: PluginMetrics, endpoint: MetricsEndpoint) -> None:
    metrics.registration_failed(VF)
    metrics.registration_failed(VF)
    metrics.registration_succeeded(VF)
    metrics.kubelet_restarted()
    with metrics.time_rescan("uevent"):
        pass
    with pytest.raises(RuntimeError), metrics.time_rescan("timer"):
        raise RuntimeError("sysfs vanished")
    metrics.config_loaded(True, when=1_764_000_000.0)
    metrics.config_loaded(False)
    samples = _samples(endpoint)
    res = (("resource", VF),)
    assert samples[("vnfio_registrations_total", res)] == 1
    assert samples[("vnfio_registration_failures_total", res)] == 2
    assert samples[("vnfio_pool_registered", res)] == 1
    assert samples[("vnfio_kubelet_restarts_total", ())] == 1
    assert samples[("vnfio_rescans_total", (("reason", "uevent"),))] == 1
    assert samples[("vnfio_rescans_total", (("reason", "timer"),))] == 1
    assert samples[("vnfio_rescan_duration_seconds_count", (("reason", "timer"),))] == 1
    # A failed reload says so, and the timestamp still tells when the running config was applied.
    assert samples[("vnfio_config_last_reload_successful", ())] == 0
    assert samples[("vnfio_config_reloads_total", (("result", "success"),))] == 1
    assert samples[("vnfio_config_reloads_total", (("result", "failure"),))] == 1
    assert samples[("vnfio_config_last_reload_success_timestamp_seconds", ())] == 1_764_000_000.0


def test_readiness_follows_registration(metrics: PluginMetrics, endpoint: MetricsEndpoint) -> None:
    assert _get(endpoint, "/readyz") == (503, "no pools\n")
    metrics.set_pool(_pool("intel_vf", "intel.com", "pci", [True]))
    metrics.set_pool(_pool("dpaa2_dprc", "nxp.com", "fslmc", [True]))
    metrics.registration_succeeded(VF)
    assert _get(endpoint, "/readyz") == (503, f"not registered: {DPRC}\n")
    metrics.registration_succeeded(DPRC)
    assert _get(endpoint, "/readyz") == (200, "ok\n")
    metrics.unregistered(VF)
    assert _get(endpoint, "/readyz") == (503, f"not registered: {VF}\n")


def test_liveness_follows_heartbeat() -> None:
    metrics = PluginMetrics(stale_after=0.0)  # any silence counts as stale
    ep = serve_metrics(metrics, "127.0.0.1", 0)
    try:
        status, body = _get(ep, "/healthz")
        assert status == 503
        assert body.startswith("event loop silent")
    finally:
        ep.close()
    fresh = PluginMetrics()
    fresh.heartbeat()
    assert fresh.live() == (True, "ok")


def test_registries_are_independent() -> None:
    """Two daemons in one process (tests do this) do not share or collide on metrics."""
    first, second = PluginMetrics(), PluginMetrics()
    first.observe_allocate(VF, 0.001, "OK", 1)
    assert first.registry.get_sample_value("vnfio_allocations_total", {"resource": VF}) == 1
    assert second.registry.get_sample_value("vnfio_allocations_total", {"resource": VF}) is None


def test_closed_endpoint_frees_its_port(metrics: PluginMetrics) -> None:
    ep = serve_metrics(metrics, "127.0.0.1", 0)
    port = ep.port
    ep.close()
    again = serve_metrics(metrics, "127.0.0.1", port)
    try:
        assert _get(again, "/healthz") == (200, "ok\n")
    finally:
        again.close()
