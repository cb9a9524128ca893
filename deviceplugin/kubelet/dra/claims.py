"""What a prepared ResourceClaim gives a container: its allocation results for this driver and node, turned into
one CDI spec with the device plugin's own answer for the same devices. Pure: no I/O.

The device plugin's `allocate` decides the nodes and env (so a DPRC gets `DPRC=dprc.N` and a VF its
`PCIDEVICE_…` exactly as under the Device Plugin API); per pool, over all of the claim's devices of that pool.
The spec carries the env and the shared `/dev/vfio/vfio` at spec level (applied once, whichever of its devices a
container gets) and each device's group node under that device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deviceplugin.kubelet.cdi import CdiDevice, CdiSpec, file_name
from deviceplugin.policy.allocation import allocate
from deviceplugin.policy.health import VFIO_CONTAINER_PATH
from deviceplugin.records import (
    AllocationError,
    DeviceNode,
    PoolDevice,
    ResourcePool,
    UnhealthyDevices,
    UnknownDevices,
    UnsupportedRequest,
)

CDI_CLASS = "vfio"


class ClaimError(Exception):
    """A claim this driver cannot prepare; `reason` is the metrics label (not-found, unknown-device, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_REASONS: tuple[tuple[type[AllocationError], str], ...] = (
    (UnknownDevices, "unknown-device"),
    (UnhealthyDevices, "unhealthy-device"),
    (UnsupportedRequest, "unsupported"),
)


def refusal_reason(refusal: AllocationError) -> str:
    return next((reason for cls, reason in _REASONS if isinstance(refusal, cls)), "invalid")


@dataclass(frozen=True)
class AllocationResult:
    """One `status.allocation.devices.results[]` entry for this driver and pool."""

    request: str
    device: str


@dataclass(frozen=True)
class PreparedDevice:
    """One device of a prepared claim, as the DRA answer's `Device` says it."""

    request_names: tuple[str, ...]
    pool_name: str
    device_name: str
    cdi_device_ids: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "requestNames": list(self.request_names),
            "poolName": self.pool_name,
            "deviceName": self.device_name,
            "cdiDeviceIDs": list(self.cdi_device_ids),
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> PreparedDevice:
        return PreparedDevice(
            tuple(data.get("requestNames") or ()),
            str(data["poolName"]),
            str(data["deviceName"]),
            tuple(data.get("cdiDeviceIDs") or ()),
        )


@dataclass(frozen=True)
class ClaimPlan:
    """What Prepare writes and answers for one claim."""

    spec: CdiSpec
    spec_file: str
    devices: tuple[PreparedDevice, ...]


def allocation_results(claim: Mapping[str, Any], uid: str, driver: str, pool: str) -> list[AllocationResult]:
    """The claim's results for this driver and node pool; ClaimError when it is not the claim kubelet meant or
    has nothing allocated here."""
    metadata = claim.get("metadata") or {}
    if metadata.get("uid") != uid:
        raise ClaimError(
            "uid-mismatch",
            f"ResourceClaim {metadata.get('namespace')}/{metadata.get('name')} has UID {metadata.get('uid')}, "
            f"not {uid}: it was deleted and made anew",
        )
    allocation = (claim.get("status") or {}).get("allocation")
    if not allocation:
        raise ClaimError("not-allocated", f"ResourceClaim {metadata.get('name')} is not allocated")
    for config in (allocation.get("devices") or {}).get("config") or []:
        if ((config or {}).get("opaque") or {}).get("driver") == driver:
            # vnfio has no per-claim settings: a config meant for it would be silently ignored otherwise.
            raise ClaimError(
                "unsupported", f"ResourceClaim {metadata.get('name')} carries opaque config for {driver}, which "
                "takes none"
            )
    results = [
        AllocationResult(str(r.get("request", "")), str(r.get("device", "")))
        for r in (allocation.get("devices") or {}).get("results") or []
        if r.get("driver") == driver and r.get("pool") == pool
    ]
    if not results:
        raise ClaimError("not-allocated", f"ResourceClaim {metadata.get('name')} has no device of {driver} on {pool}")
    return results


def plan_claim(
    uid: str,
    results: Sequence[AllocationResult],
    devices: Mapping[str, tuple[ResourcePool, PoolDevice]],
    driver: str,
    pool_name: str,
) -> ClaimPlan:
    """The CDI spec and answer for a claim's `results`, given every device this node has (healthy or not) by slice
    name; ClaimError for an unknown or unhealthy device, or a combination the kind refuses (a second DPRC)."""
    requests: dict[str, list[str]] = {}
    for result in results:
        requests.setdefault(result.device, [])
        if result.request not in requests[result.device]:
            requests[result.device].append(result.request)
    unknown = sorted(name for name in requests if name not in devices)
    if unknown:
        raise ClaimError("unknown-device", f"devices not on this node: {', '.join(unknown)}")
    by_pool: dict[str, list[str]] = {}
    for name in requests:
        pool, device = devices[name]
        by_pool.setdefault(pool.resource_name, []).append(device.id)
    env: dict[str, str] = {}
    shared: dict[str, DeviceNode] = {}
    for resource, ids in sorted(by_pool.items()):
        pool = next(p for p, _ in devices.values() if p.resource_name == resource)
        try:
            allocation = allocate(pool, ids)
        except AllocationError as exc:
            raise ClaimError(refusal_reason(exc), str(exc)) from exc
        for key, value in allocation.envs.items():
            if env.get(key, value) != value:
                raise ClaimError("unsupported", f"{key} would be both {env[key]} and {value}: ask for one per claim")
            env[key] = value
        for node in allocation.devices:
            if node.container_path == VFIO_CONTAINER_PATH:
                shared.setdefault(node.container_path, node)
    kind = f"{driver}/{CDI_CLASS}"
    cdi_devices = []
    prepared = []
    for name, request_names in requests.items():
        _, device = devices[name]
        nodes = tuple(n for n in device.nodes if n.container_path != VFIO_CONTAINER_PATH)
        cdi_name = f"{uid}-{name}"
        # A device without nodes of its own still needs an edit: its env says which device it is.
        cdi_devices.append(CdiDevice(cdi_name, nodes, {} if nodes else {"VNFIO_DRA_DEVICE": name}))
        prepared.append(PreparedDevice(tuple(request_names), pool_name, name, (f"{kind}={cdi_name}",)))
    spec = CdiSpec(kind, tuple(cdi_devices), nodes=tuple(shared.values()), env=env)
    return ClaimPlan(spec, file_name(kind, uid), tuple(prepared))
