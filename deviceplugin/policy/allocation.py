"""Allocation policy: what a container gets for a set of device IDs, and which IDs to prefer when kubelet
has a choice. Pure functions over a `ResourcePool` snapshot; the gRPC layer only translates.

Answers never depend on the order kubelet lists IDs in: everything is sorted first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from deviceplugin.kinds import kind_of
from deviceplugin.records import (
    AllocationError,
    ContainerAllocation,
    DeviceNode,
    InvalidRequest,
    PoolDevice,
    ResourcePool,
    UnhealthyDevices,
    UnknownDevices,
    env_suffix,
)


def allocate(pool: ResourcePool, device_ids: Sequence[str]) -> ContainerAllocation:
    """Device nodes and env vars for one container that was given `device_ids` of `pool`; an `AllocationError`
    subclass names the outcome of a refusal."""
    if not device_ids:
        raise InvalidRequest(f"{pool.resource_name}: no device IDs to allocate")
    duplicates = sorted(i for i, n in Counter(device_ids).items() if n > 1)
    if duplicates:
        raise InvalidRequest(f"{pool.resource_name}: device IDs repeated: {', '.join(duplicates)}")
    devices = _known(pool, device_ids, UnknownDevices)
    unhealthy = [d for d in devices if not d.healthy]
    if unhealthy:
        detail = "; ".join(f"{d.id} ({d.why_unhealthy or 'unhealthy'})" for d in unhealthy)
        raise UnhealthyDevices(f"{pool.resource_name}: unhealthy devices: {detail}")
    kind = kind_of(pool.device_type)
    kind.check_request(pool, devices)
    nodes: dict[str, DeviceNode] = {}
    for node in sorted((n for d in devices for n in d.nodes), key=_node_order):
        nodes.setdefault(node.container_path, node)
    envs = kind.envs(pool.resource_name, devices)
    envs.update(cdev_env(pool.resource_name, devices))
    return ContainerAllocation(envs=envs, devices=tuple(nodes.values()))


def cdev_env(resource_name: str, devices: Sequence[PoolDevice]) -> dict[str, str]:
    """`VFIO_CDEV_<RES>=0000:03:10.0=vfio3,0000:03:10.1=vfio4` for pools with vfioInterface cdev or both.

    The cdev index X is the kernel's lowest free number, unrelated to the address or the group, so a workload
    cannot guess which /dev/vfio/devices/vfioX is which device: this says it, sorted by device name, namespaced
    per resource as kubelet merges every resource's env (first name wins)."""
    pairs = sorted({pair for d in devices for pair in d.cdevs})
    if not pairs:
        return {}
    return {f"VFIO_CDEV_{env_suffix(resource_name)}": ",".join(f"{member}={cdev}" for member, cdev in pairs)}


def preferred_allocation(
    pool: ResourcePool, available: Sequence[str], must_include: Sequence[str], size: int
) -> list[str]:
    """Exactly `size` IDs from `available`, including every `must_include`: healthy devices first, on one
    NUMA node (the one that can hold the most, best fit among equals), and for PCI over as few PFs as possible."""
    name = pool.resource_name
    pool_avail = sorted(set(available))
    must = sorted(set(must_include))
    if size < 0:
        raise InvalidRequest(f"{name}: allocation size {size} is negative")
    if size > len(pool_avail):
        raise InvalidRequest(f"{name}: asked for {size} of {len(pool_avail)} available devices")
    if not set(must) <= set(pool_avail):
        missing = ", ".join(sorted(set(must) - set(pool_avail)))
        raise InvalidRequest(f"{name}: must-include devices not available: {missing}")
    if len(must) > size:
        raise InvalidRequest(f"{name}: {len(must)} must-include devices exceed size {size}")
    candidates = _known(pool, pool_avail, InvalidRequest)
    chosen = [d for d in candidates if d.id in must]
    rest = [d for d in candidates if d.id not in must]
    node = _best_node(chosen, rest, size)
    pfs_used = {pf for d in chosen for pf in d.pfs}
    while len(chosen) < size:
        pf_spare = Counter(pf for d in rest for pf in d.pfs)
        best = min(rest, key=lambda d: _preference(d, node, pfs_used, pf_spare))
        rest.remove(best)
        chosen.append(best)
        pfs_used.update(best.pfs)
    return sorted(d.id for d in chosen)


def _known(pool: ResourcePool, device_ids: Sequence[str], error: type[AllocationError]) -> list[PoolDevice]:
    """The devices `device_ids` name; `error` when some are unknown (kubelet's choices must be ours)."""
    devices = {d.id: d for d in pool.devices}
    unknown = sorted(i for i in set(device_ids) if i not in devices)
    if unknown:
        raise error(f"{pool.resource_name}: unknown device IDs: {', '.join(unknown)}")
    return [devices[i] for i in sorted(set(device_ids))]


def _node_order(node: DeviceNode) -> tuple[int, int, str]:
    """/dev/vfio/vfio first, then the group nodes by number."""
    tail = node.container_path.rsplit("/", 1)[-1]
    if node.container_path == "/dev/vfio/vfio":
        return (0, 0, tail)
    return (1, int(tail), tail) if tail.isdigit() else (2, 0, node.container_path)


def _best_node(chosen: list[PoolDevice], rest: list[PoolDevice], size: int) -> int | None:
    """The NUMA node that can hold the most of the allocation: must-include devices count first, then healthy
    candidates (capped at what is still needed). Among equals, the best fit — the node with the fewest
    spare devices, which keeps bigger blocks free for later requests — then the lowest number."""
    nodes = sorted({d.numa_node for d in chosen + rest if d.numa_node is not None})
    if not nodes:
        return None
    need = size - len(chosen)

    def score(node: int) -> tuple[int, int, int, int]:
        pinned = sum(d.numa_node == node for d in chosen)
        spare = sum(d.numa_node == node and d.healthy for d in rest)
        return (pinned, min(need, spare), -spare, -node)

    return max(nodes, key=score)


def _preference(
    dev: PoolDevice, node: int | None, pfs_used: set[str], pf_spare: Counter[str]
) -> tuple[bool, int, int, int, str]:
    """Lower is better: healthy, on the chosen node (unknown node next), reusing PFs already in the
    allocation, from the PF with the most spare devices, then by ID for determinism."""
    if node is None or dev.numa_node == node:
        numa_rank = 0
    elif dev.numa_node is None:
        numa_rank = 1
    else:
        numa_rank = 2
    new_pfs = len(set(dev.pfs) - pfs_used)
    spare = max((pf_spare[pf] for pf in dev.pfs), default=0)
    return (not dev.healthy, numa_rank, new_pfs, -spare, dev.id)
