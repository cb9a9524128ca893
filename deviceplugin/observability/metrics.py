"""Prometheus metrics of the device plugin, and the HTTP endpoint that serves them with liveness and readiness.

Every `PluginMetrics` owns its `CollectorRegistry`, so nothing lands in prometheus_client's global registry and
tests can run many daemons side by side. The endpoint serves `/metrics`, `/healthz` (the event loop is
alive) and `/readyz` (every pool is registered with kubelet) for the DaemonSet's probes.

The endpoint is reachable by anything that can reach the node (the pod uses the host network) and answers
without authentication, so what a client can cost it is bounded: at most MAX_CONNECTIONS connections (one
thread each; the oldest is hung up on when another arrives, so a probe behind a flood of idle connections is
still served), IDLE_TIMEOUT per read or write and REQUEST_DEADLINE per connection in all (a client that trickles
bytes is hung up on as well).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from deviceplugin.records import HEALTHY, UNHEALTHY, ResourcePool

log = logging.getLogger(__name__)

# Allocate answers from memory: sub-millisecond normally; the tail buckets catch a starved event loop.
_RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_RESCAN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_REGISTERED = "vnfio_pool_registered"
DEFAULT_STALE_AFTER = 30.0  # seconds without a heartbeat before /healthz says the daemon is stuck
MAX_CONNECTIONS = 32  # a Prometheus or two and the kubelet probes need a handful
IDLE_TIMEOUT = 5.0  # seconds a connection may stay silent (or not read our answer) before we hang up
REQUEST_DEADLINE = 10.0  # seconds a connection may last in all, however it trickles


class PluginMetrics:
    """The daemon's metrics in a registry of their own, plus the health state the probes report."""

    def __init__(self, registry: CollectorRegistry | None = None, *, stale_after: float = DEFAULT_STALE_AFTER) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.devices = Gauge(
            "vnfio_devices", "Devices advertised to kubelet, by health", ["resource", "health"], registry=r
        )
        self.allocations = Counter(
            "vnfio_allocations", "Container allocations answered by Allocate", ["resource"], registry=r
        )
        self.allocated_devices = Counter(
            "vnfio_allocated_devices", "Devices handed out by Allocate", ["resource"], registry=r
        )
        self.allocation_failures = Counter(
            "vnfio_allocation_failures", "Allocate calls refused, by gRPC status", ["resource", "code"], registry=r
        )
        self.allocate_seconds = Histogram(
            "vnfio_allocate_duration_seconds", "Allocate latency", ["resource"], buckets=_RPC_BUCKETS, registry=r
        )
        self.preferred_seconds = Histogram(
            "vnfio_preferred_allocation_duration_seconds",
            "GetPreferredAllocation latency",
            ["resource"],
            buckets=_RPC_BUCKETS,
            registry=r,
        )
        self.registrations = Counter(
            "vnfio_registrations", "Successful registrations with kubelet", ["resource"], registry=r
        )
        self.registration_failures = Counter(
            "vnfio_registration_failures", "Failed registration attempts with kubelet", ["resource"], registry=r
        )
        self.registered = Gauge(
            _REGISTERED, "1 while the pool is registered with the running kubelet", ["resource"], registry=r
        )
        self.kubelet_restarts = Counter("vnfio_kubelet_restarts", "Kubelet restarts noticed", registry=r)
        self.rescans = Counter("vnfio_rescans", "Rescans of sysfs, by what triggered them", ["reason"], registry=r)
        self.rescan_seconds = Histogram(
            "vnfio_rescan_duration_seconds",
            "Time to rediscover devices and rebuild the pools",
            ["reason"],
            buckets=_RESCAN_BUCKETS,
            registry=r,
        )
        self.config_reloads = Counter(
            "vnfio_config_reloads", "Config loads and reloads, by result (success|failure)", ["result"], registry=r
        )
        self.config_reload_ok = Gauge(
            "vnfio_config_last_reload_successful", "1 when the last config (re)load was applied", registry=r
        )
        self.config_reload_time = Gauge(
            "vnfio_config_last_reload_success_timestamp_seconds", "When a config was last applied", registry=r
        )
        self.file_write_failures = Counter(
            "vnfio_file_write_failures",
            "Failed writes or removals of files for the runtime and CNI: CDI specs (what=cdi), device information "
            "files (what=device-info); Allocate answers regardless",
            ["resource", "what"],
            registry=r,
        )
        self._resources: set[str] = set()
        self._stale_after = stale_after
        self._heartbeat = time.monotonic()
        self._lock = threading.Lock()  # the HTTP thread reads what the event loop writes

    # --------------------------------------------------------------------------------------- pools
    def set_pool(self, pool: ResourcePool) -> None:
        """Record how many devices the pool advertises as Healthy and Unhealthy."""
        resource = pool.resource_name
        healthy = sum(1 for dev in pool.devices if dev.healthy)
        self.devices.labels(resource, HEALTHY).set(healthy)
        self.devices.labels(resource, UNHEALTHY).set(len(pool.devices) - healthy)
        with self._lock:
            if resource not in self._resources:
                self._resources.add(resource)
                self.registered.labels(resource).set(0)

    def forget_pool(self, resource: str) -> None:
        """A pool left the config: its per-resource gauges disappear (counters stay: they only grow)."""
        for health in (HEALTHY, UNHEALTHY):
            self._remove(self.devices, resource, health)
        self._remove(self.registered, resource)
        with self._lock:
            self._resources.discard(resource)

    @staticmethod
    def _remove(metric: Gauge, *labels: str) -> None:
        with suppress(KeyError):
            metric.remove(*labels)

    # ---------------------------------------------------------------------------------------- RPCs
    def observe_allocate(self, resource: str, seconds: float, status: str, device_count: int) -> None:
        self.allocate_seconds.labels(resource).observe(seconds)
        if status == "OK":
            self.allocations.labels(resource).inc()
            self.allocated_devices.labels(resource).inc(device_count)
        else:
            self.allocation_failures.labels(resource, status).inc()

    def file_write_failed(self, resource: str, what: str) -> None:
        self.file_write_failures.labels(resource, what).inc()

    def observe_preferred_allocation(self, resource: str, seconds: float) -> None:
        self.preferred_seconds.labels(resource).observe(seconds)

    # -------------------------------------------------------------------------------- registration
    def registration_succeeded(self, resource: str) -> None:
        self.registrations.labels(resource).inc()
        self.registered.labels(resource).set(1)

    def registration_failed(self, resource: str) -> None:
        self.registration_failures.labels(resource).inc()
        self.registered.labels(resource).set(0)

    def unregistered(self, resource: str) -> None:
        """Kubelet forgot the pool (it restarted, or our socket went): not registered until we register again."""
        self.registered.labels(resource).set(0)

    def kubelet_restarted(self) -> None:
        self.kubelet_restarts.inc()

    # ------------------------------------------------------------------------------ rescan, config
    @contextmanager
    def time_rescan(self, reason: str) -> Iterator[None]:
        """Count one rescan and time it (also when it fails: a slow failure is still a slow rescan)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.rescans.labels(reason).inc()
            self.rescan_seconds.labels(reason).observe(time.perf_counter() - started)

    def config_loaded(self, ok: bool, when: float | None = None) -> None:
        self.config_reloads.labels("success" if ok else "failure").inc()
        self.config_reload_ok.set(1 if ok else 0)
        if ok:
            self.config_reload_time.set(time.time() if when is None else when)

    # --------------------------------------------------------------------------------------- health
    def heartbeat(self) -> None:
        """Called by the event loop regularly: /healthz fails when this stops (a wedged loop)."""
        self._heartbeat = time.monotonic()

    def live(self) -> tuple[bool, str]:
        age = time.monotonic() - self._heartbeat
        if age > self._stale_after:
            return False, f"event loop silent for {age:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """Ready when at least one pool exists and every pool is registered with kubelet."""
        with self._lock:
            resources = sorted(self._resources)
        if not resources:
            return False, "no pools"
        waiting = [r for r in resources if self.registry.get_sample_value(_REGISTERED, {"resource": r}) != 1]
        if waiting:
            return False, "not registered: " + ", ".join(waiting)
        return True, "ok"


class DraMetrics(PluginMetrics):
    """The DRA driver's metrics: the shared ones (devices by health, rescans, config) plus prepares,
    unprepares, failures by reason, their durations, the devices its ResourceSlices publish, and registration
    with kubelet. Pools are not registered one by one under DRA, so readiness is the driver's registration."""

    def __init__(self, registry: CollectorRegistry | None = None, *, stale_after: float = DEFAULT_STALE_AFTER) -> None:
        super().__init__(registry, stale_after=stale_after)
        r = self.registry
        self.prepares = Counter("vnfio_dra_prepares", "Claims prepared (NodePrepareResources)", registry=r)
        self.unprepares = Counter("vnfio_dra_unprepares", "Claims unprepared (NodeUnprepareResources)", registry=r)
        self.dra_failures = Counter(
            "vnfio_dra_failures", "Claims that failed to prepare or unprepare, by reason", ["call", "reason"],
            registry=r,
        )
        self.dra_seconds = Histogram(
            "vnfio_dra_duration_seconds", "Time to prepare or unprepare one claim", ["call"],
            buckets=_RPC_BUCKETS, registry=r,
        )
        self.published = Gauge(
            "vnfio_dra_published_devices", "Devices in this node's ResourceSlices, by health (only Healthy ones are "
            "published; Unhealthy counts the devices left out for their health)", ["health"], registry=r,
        )
        self.slice_generation = Gauge("vnfio_dra_slice_generation", "Generation of the published pool", registry=r)
        self.driver_registered = Gauge(
            "vnfio_dra_registered", "1 while kubelet has registered the driver", registry=r
        )

    def set_pool(self, pool: ResourcePool) -> None:
        resource = pool.resource_name
        healthy = sum(1 for dev in pool.devices if dev.healthy)
        self.devices.labels(resource, HEALTHY).set(healthy)
        self.devices.labels(resource, UNHEALTHY).set(len(pool.devices) - healthy)
        with self._lock:
            self._resources.add(resource)

    def observe_claim(self, call: str, seconds: float, reason: str) -> None:
        self.dra_seconds.labels(call).observe(seconds)
        if reason:
            self.dra_failures.labels(call, reason).inc()
        elif call == "prepare":
            self.prepares.inc()
        else:
            self.unprepares.inc()

    def set_published(self, healthy: int, unhealthy: int, generation: int) -> None:
        self.published.labels(HEALTHY).set(healthy)
        self.published.labels(UNHEALTHY).set(unhealthy)
        self.slice_generation.set(generation)

    def ready(self) -> tuple[bool, str]:
        """Ready when kubelet registered the driver."""
        if self.registry.get_sample_value("vnfio_dra_registered") != 1:
            return False, "not registered with kubelet"
        return True, "ok"


# ---------------------------------------------------------------------------------------- endpoint
class _BoundedWSGIServer(WSGIServer):
    """A WSGI server with one thread per connection, but at most `max_connections` of them, and none older than
    `request_deadline`: unauthenticated clients on the node's network must not be able to exhaust the plugin's
    memory or threads (with no bound, ~8,000 idle connections OOM-killed it)."""

    daemon_threads = True  # a slow scraper must not hold up shutdown
    request_queue_size = 128
    max_connections = MAX_CONNECTIONS
    request_deadline = REQUEST_DEADLINE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._open: dict[socket.socket, float] = {}  # connection → when accepted; insertion order is age
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Called by the accept loop: hang up on the oldest connection when full, then serve this one."""
        with self._open_lock:
            evicted = next(iter(self._open)) if len(self._open) >= self.max_connections else None
            if evicted is not None:
                del self._open[evicted]
            self._open[request] = time.monotonic()
        if evicted is not None:
            log.debug("metrics: %d connections open, hanging up on the oldest", self.max_connections)
            _hang_up(evicted)
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address), name="vnfio-metrics-conn", daemon=True
        )
        thread.start()

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception as exc:  # a timeout, a reset, a hang-up: the client's problem, not news
            log.debug("metrics: connection from %s ended: %r", client_address, exc)
        finally:
            with self._open_lock:
                self._open.pop(request, None)
            self.shutdown_request(request)

    def service_actions(self) -> None:
        """Runs in the accept loop after every poll: hang up on connections past their deadline."""
        cutoff = time.monotonic() - self.request_deadline
        with self._open_lock:
            late = [conn for conn, accepted in self._open.items() if accepted < cutoff]
            for conn in late:
                del self._open[conn]
        for conn in late:
            _hang_up(conn)

    def server_close(self) -> None:
        super().server_close()
        with self._open_lock:
            still_open, self._open = list(self._open), {}
        for conn in still_open:
            _hang_up(conn)


class _BoundedWSGIServer6(_BoundedWSGIServer):
    address_family = socket.AF_INET6


def _hang_up(conn: socket.socket) -> None:
    """Wake the connection's thread (its read or write fails at once); that thread closes the socket."""
    with suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


class _QuietHandler(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT  # applied to the connection's socket: every read and write

    def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds are not news
        log.debug("metrics: " + format, *args)


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def metrics_app(metrics: PluginMetrics) -> WsgiApp:
    """`/healthz` and `/readyz` answered here; everything else is prometheus_client's exposition."""
    exposition = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path in ("/healthz", "/readyz"):
            ok, reason = metrics.live() if path == "/healthz" else metrics.ready()
            status = "200 OK" if ok else "503 Service Unavailable"
            body = (reason + "\n").encode()
            start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
            return [body]
        return exposition(environ, start_response)

    return app


@dataclass
class MetricsEndpoint:
    """A running metrics endpoint; `port` is the bound port (useful when 0 asked for an ephemeral one)."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(metrics: PluginMetrics, host: str, port: int) -> MetricsEndpoint:
    """Serve /metrics, /healthz and /readyz on host:port in a background thread (port 0: any free port)."""
    server_class = _BoundedWSGIServer6 if ":" in host else _BoundedWSGIServer
    server = make_server(host, port, metrics_app(metrics), server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="vnfio-metrics", daemon=True)
    thread.start()
    bound = server.server_address[1]
    log.info("serving metrics on %s:%d", host, bound, extra={"port": bound})
    return MetricsEndpoint(host, bound, server, thread)
