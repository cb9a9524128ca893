"""Tell the cluster about this node through the Kubernetes API: labels for what it offers, Events for health.

Labels let workloads target nodes (`nodeSelector: {vnfio.io/dpaa2: "true"}`); Events on the Node make a device
turning Unhealthy, or recovering, show up in `kubectl describe node`. Both are optional (only with a node
name) and never in the way: API calls run in a worker thread, failures are logged and retried with
backoff, and nothing here can stop the device plugin.

A label is present with value "true" while at least one pool of its kind advertises at least one device
(healthy or not: capacity counts both); otherwise it is removed rather than set to "false", so a node that
lost its devices and one that never had any look the same to `-l vnfio.io/dpaa2` and to node selectors.
Labels stay when the daemon stops: a rolling update must not flap scheduling.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from deviceplugin.kinds import KINDS
from deviceplugin.records import ResourcePool

log = logging.getLogger(__name__)

EVENT_NAMESPACE = "default"  # where kubelet and the node controller put Node events
COMPONENT = "vnfio-device-plugin"
REASON_UNHEALTHY = "DeviceUnhealthy"
REASON_HEALTHY = "DeviceHealthy"
_MAX_QUEUED_EVENTS = 1000  # while the API server is unreachable; older ones are dropped first
_REQUEST_TIMEOUT = (5.0, 15.0)  # connect, read: a hung API server must not hold the worker forever
_MERGE_PATCH = "application/merge-patch+json"
_JSON = "application/json"  # the generated client sends no Content-Type on create unless told


# ------------------------------------------------------------------------------------------ policy
def offered_labels(pools: Iterable[ResourcePool]) -> dict[str, str | None]:
    """The node labels for these pools: "true" for a kind with devices, None (remove) for one without."""
    offered = {pool.device_type for pool in pools if pool.devices}
    return {kind.label: ("true" if name in offered else None) for name, kind in KINDS.items() if kind.label}


@dataclass(frozen=True)
class HealthChange:
    """A device of a pool whose health differs from the last snapshot (or that joined Unhealthy)."""

    resource: str
    device_id: str
    healthy: bool
    why: str | None = None

    @property
    def reason(self) -> str:
        return REASON_HEALTHY if self.healthy else REASON_UNHEALTHY

    @property
    def type(self) -> str:
        return "Normal" if self.healthy else "Warning"

    @property
    def message(self) -> str:
        if self.healthy:
            return f"{self.resource} device {self.device_id} is Healthy again"
        return f"{self.resource} device {self.device_id} is Unhealthy: {self.why or 'no reason given'}"


def health_changes(before: Mapping[str, ResourcePool], after: Mapping[str, ResourcePool]) -> list[HealthChange]:
    """Health transitions between two sets of pools keyed by resource name.

    A device present in both with a different health is a change; a device that joins Unhealthy is one too
    (an operator wants to hear about it, also at start); a device that leaves or joins Healthy is not.
    """
    changes = []
    for resource, pool in sorted(after.items()):
        old = before.get(resource)
        for dev in pool.devices:
            previous = old.device(dev.id) if old is not None else None
            was_healthy = previous.healthy if previous is not None else True
            if dev.healthy != was_healthy:
                changes.append(HealthChange(resource, dev.id, dev.healthy, dev.why_unhealthy))
    return changes


def event_body(node: str, change: HealthChange, name: str, when: datetime) -> dict[str, Any]:
    """A core/v1 Event on the Node, shaped as kubelet's own recorder makes them (uid = node name)."""
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": EVENT_NAMESPACE},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node},
        "reason": change.reason,
        "message": change.message,
        "type": change.type,
        "source": {"component": COMPONENT, "host": node},
        "reportingComponent": COMPONENT,
        "reportingInstance": node,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def labels_patch(labels: Mapping[str, str | None]) -> dict[str, Any]:
    """A JSON merge patch of metadata.labels: None deletes the key, other labels are untouched."""
    return {"metadata": {"labels": dict(labels)}}


# --------------------------------------------------------------------------------------- transport
def kubernetes_api(host: str | None = None, token: str | None = None) -> Any:
    """A CoreV1Api: in-cluster config (service account) unless `host` (and `token`) are given."""
    from kubernetes import client, config  # heavy (~0.3 s); only daemons with a node name pay for it

    configuration = client.Configuration()
    if host is None:
        config.load_incluster_config(client_configuration=configuration)
    else:
        configuration.host = host
        if token:
            configuration.api_key = {"authorization": token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
    configuration.retries = False  # we retry ourselves, with backoff, without blocking anything
    return client.CoreV1Api(client.ApiClient(configuration))


def _api_status(exc: BaseException) -> int | None:
    return getattr(exc, "status", None)


class NodeReporter:
    """Keeps the node's labels in step with the pools and posts an Event per health change.

    `report(pools)` is cheap and never blocks: it records the wanted labels and queues events; `run()` (a
    task) applies them through the API in a worker thread, retrying with exponential backoff. Labels are
    desired state (only the latest matters); events are delivered in order, each once.
    """

    def __init__(
        self,
        node_name: str,
        *,
        host: str | None = None,
        token: str | None = None,
        api_factory: Callable[[], Any] | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.node_name = node_name
        self._api_factory = api_factory or (lambda: kubernetes_api(host, token))
        self._api: Any = None
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._pools: dict[str, ResourcePool] = {}
        self._wanted_labels: dict[str, str | None] | None = None
        self._applied_labels: dict[str, str | None] | None = None
        self._events: deque[dict[str, Any]] = deque(maxlen=_MAX_QUEUED_EVENTS)
        self._names = itertools.count()
        self._last_stamp = 0
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vnfio-kube-api")
        self.failures = 0  # API calls that failed (and were or will be retried)

    # ------------------------------------------------------------------------------------ reporting
    def report(self, pools: Iterable[ResourcePool]) -> None:
        """Take the current pools: queue labels if they differ and an Event for every health change."""
        current = {pool.resource_name: pool for pool in pools}
        for change in health_changes(self._pools, current):
            log.info("device health changed: %s", change.message, extra={"resource": change.resource})
            self._events.append(event_body(self.node_name, change, self._event_name(), datetime.now(UTC)))
        self._pools = current
        self._wanted_labels = offered_labels(current.values())
        self._poke()

    def _event_name(self) -> str:
        # client-go's naming (<object>.<hex nanoseconds>): unique, and a retried create that did land
        # before the connection broke answers 409 instead of making a duplicate.
        stamp = max(time.time_ns(), self._last_stamp + 1)
        self._last_stamp = stamp
        return f"{self.node_name}.{stamp:x}"

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()
            self._idle.clear()  # type: ignore[union-attr]

    def pending(self) -> bool:
        return bool(self._events) or self._wanted_labels != self._applied_labels

    async def wait_idle(self) -> None:
        """Wait until everything reported so far reached the API server (tests and orderly shutdown)."""
        while self._idle is None:
            await asyncio.sleep(0.01)
        await self._idle.wait()

    # --------------------------------------------------------------------------------------- worker
    async def run(self) -> None:
        """Deliver reports until cancelled."""
        self._wake, self._idle = asyncio.Event(), asyncio.Event()
        if self.pending():
            self._wake.set()
        else:
            self._idle.set()
        backoff = self._backoff_initial
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self.pending():
                    if await self._deliver_one():
                        backoff = self._backoff_initial
                        continue
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._backoff_max)
                if not self._wake.is_set():
                    self._idle.set()
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _deliver_one(self) -> bool:
        """Apply the labels, else post the oldest event; False (after logging) when the call failed."""
        loop = asyncio.get_running_loop()
        if self._wanted_labels != self._applied_labels:
            labels = dict(self._wanted_labels or {})
            ok = await loop.run_in_executor(self._executor, self._patch_labels, labels)
            if ok:
                self._applied_labels = labels
            return ok
        event = self._events[0]
        ok = await loop.run_in_executor(self._executor, self._create_event, event)
        if ok and self._events and self._events[0] is event:
            self._events.popleft()
        return ok

    def _client(self) -> Any:
        if self._api is None:
            self._api = self._api_factory()
        return self._api

    def _patch_labels(self, labels: dict[str, str | None]) -> bool:
        try:
            self._client().patch_node(
                self.node_name, labels_patch(labels), _content_type=_MERGE_PATCH, _request_timeout=_REQUEST_TIMEOUT
            )
        except Exception as exc:
            self.failures += 1
            log.warning(
                "labelling node %s failed (will retry): %s", self.node_name, _brief(exc), extra={"labels": labels}
            )
            return False
        log.info("node %s labels set: %s", self.node_name, labels)
        return True

    def _create_event(self, event: dict[str, Any]) -> bool:
        try:
            self._client().create_namespaced_event(
                EVENT_NAMESPACE, event, _headers={"Content-Type": _JSON}, _request_timeout=_REQUEST_TIMEOUT
            )
        except Exception as exc:
            if _api_status(exc) == 409:  # an earlier attempt did land
                return True
            self.failures += 1
            log.warning(
                "posting event %s on node %s failed (will retry): %s",
                event["reason"],
                self.node_name,
                _brief(exc),
                extra={"event": event["metadata"]["name"]},
            )
            return False
        return True


def _brief(exc: BaseException) -> str:
    """One line for the log: ApiException's str() carries every response header."""
    status, reason = _api_status(exc), getattr(exc, "reason", None)
    if status is not None:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(exc).__name__}: {exc}"
