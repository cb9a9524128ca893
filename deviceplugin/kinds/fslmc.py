"""Device kind `fslmc`: DPAA2 resource containers (child `dprc.N` bound to `vfio-fsl-mc`).

A container is one IOMMU group and DPDK takes exactly one per process (`DPRC=dprc.N`). The root container and
containers nested deeper than its children are never handed out. A pool may ask for minimum object counts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deviceplugin.discovery.fslmc import VFIO_FSL_MC, discover_containers
from deviceplugin.kinds.base import Attribute, Bad
from deviceplugin.policy.health import Unit, group_health, group_nodes, judge
from deviceplugin.policy.selectors import ANY_NAME, KeyParser, ListKey, binding, one_of, parse_keys, show
from deviceplugin.records import (
    DeviceNode,
    FslMcContainer,
    Inventory,
    PoolDevice,
    ResourcePool,
    UnsupportedRequest,
    env_suffix,
)

if TYPE_CHECKING:
    from deviceplugin.policy.config import PoolConfig

NAME = "fslmc"
# The object types of the fsl-mc bus (kernel fsl_mc_get_device_type); a minObjects key outside it is a typo.
OBJECT_TYPES = (
    "dprc", "dpni", "dpmac", "dpio", "dpbp", "dpcon", "dpmcp", "dpseci",
    "dpdmai", "dpdmux", "dpsw", "dprtc", "dpci", "dpaiop", "dpdcei", "dpdbg",
)  # fmt: skip
_DPRC = re.compile(r"^dprc\.[0-9]+\Z")
# DPDK's FSLMC_CONTAINER_MAX_LEN: a DPRC name this long or longer is refused by the fslmc bus.
DPDK_CONTAINER_NAME_MAX = 8


@dataclass(frozen=True)
class FslMcSelectors:
    """Selectors for DPAA2 pools. None = key not given."""

    containers: tuple[str, ...] | None = None
    drivers: tuple[str, ...] | None = None
    min_objects: Mapping[str, int] | None = None

    def identity_mismatch(self, container: FslMcContainer) -> str | None:
        if self.containers is not None and container.name not in self.containers:
            return f"{container.name} is not one of {one_of(self.containers)}"
        return None

    def driver_mismatch(self, container: FslMcContainer) -> str | None:
        if self.drivers is not None and container.driver not in self.drivers:
            return f"{container.name} needs driver {one_of(self.drivers)} but is {binding(container.driver)}"
        return None

    def objects_shortfall(self, container: FslMcContainer) -> str | None:
        """Which minimum object counts the container misses, e.g. `has 0 dpmcp, needs 1`."""
        missing = [
            f"has {container.object_counts.get(kind, 0)} {kind}, needs {need}"
            for kind, need in sorted((self.min_objects or {}).items())
            if container.object_counts.get(kind, 0) < need
        ]
        return "; ".join(missing) or None


def _min_objects(value: object) -> tuple[dict[str, int] | None, str | None]:
    refused = (
        None,
        'expected a mapping of fsl-mc object type to a count >= 0, like {"dpni": 1} '
        f"(types: {', '.join(OBJECT_TYPES)}), got {show(value)}",
    )
    if not isinstance(value, Mapping):
        return refused
    counts: dict[str, int] = {}
    for kind, need in value.items():
        if kind not in OBJECT_TYPES or isinstance(need, bool) or not isinstance(need, int) or need < 0:
            return refused
        counts[kind] = need
    return dict(sorted(counts.items())), None


# Config key → (FslMcSelectors field, parser), in documentation order.
_KEYS: dict[str, tuple[str, KeyParser]] = {
    "containers": ("containers", ListKey("a list of container names like dprc.2", _DPRC).checked),
    "drivers": ("drivers", ListKey("a list of driver names", ANY_NAME).checked),
    "minObjects": ("min_objects", _min_objects),
}


class FslMcKind:
    name = NAME
    label = "vnfio.io/dpaa2"
    uevent_subsystems = frozenset({"fsl-mc"})
    selector_keys = tuple(_KEYS)
    iommu_groups_rule: str | None = "a DPAA2 container is always one group"
    # No vfioInterface: DPDK's fslmc bus opens only /dev/vfio/vfio and the group node, never a VFIO cdev.
    pool_keys: tuple[str, ...] = ()

    def discover(self, sysfs_root: Path, dev_root: Path, problems: list[str]) -> tuple[FslMcContainer, ...]:
        containers = discover_containers(sysfs_root, problems)
        # Said here too, so the daemon logs it (once) and `list` shows it, whichever pool selects the container.
        for container in containers:
            if not container.is_root and (reason := dpdk_name_problem(container.name)) is not None:
                problems.append(f"fsl-mc {reason}; it is never handed out")
        return containers

    def parse_pool_keys(self, entry: Mapping[Any, Any], bad: Bad) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------------------------------ selectors
    def parse_selectors(self, raw: Mapping[Any, Any], bad: Bad) -> FslMcSelectors | None:
        values = parse_keys(raw, NAME, _KEYS, bad)
        return FslMcSelectors(**values) if values is not None else None

    # -------------------------------------------------------------------------------------------- units
    def units(self, cfg: PoolConfig, inventory: Inventory, known: set[str]) -> list[Unit]:
        selectors = cfg.selectors
        assert isinstance(selectors, FslMcSelectors)
        containers: tuple[FslMcContainer, ...] = inventory.of(NAME)
        roots = {c.name for c in containers if c.is_root}
        units = []
        for container in containers:
            if selectors.identity_mismatch(container) is not None:
                continue
            claims = (container.name,)
            if container.is_root:
                units.append(Unit(container.name, claims, excluded="root container: the kernel's, never handed out"))
            elif container.parent not in roots:
                why = f"nested in {container.parent}: only children of the root container are handed out"
                units.append(Unit(container.name, claims, excluded=why))
            else:
                units.append(_unit(container, selectors, inventory, known))
        return units

    # ------------------------------------------------------------------------------------ what a container gets
    def envs(self, resource_name: str, devices: Sequence[PoolDevice]) -> dict[str, str]:
        """DPDK finds its container through `DPRC=dprc.N` (one per process); the namespaced names are for
        workloads that take several resources. Kubelet merges envs of every resource and the first name wins,
        so only `DPRC`, which DPDK's fslmc bus reads verbatim, is not namespaced."""
        suffix = env_suffix(resource_name)
        containers = ",".join(d.container or d.id for d in devices)
        groups = ",".join(str(g) for d in devices for g in d.iommu_groups)
        return {
            "DPRC": containers,
            f"DPAA2_DPRC_{suffix}": containers,
            f"DPAA2_IOMMU_GROUP_{suffix}": groups,
        }

    def check_request(self, pool: ResourcePool, devices: Sequence[PoolDevice]) -> None:
        if len(devices) > 1:
            raise UnsupportedRequest(
                f"{pool.resource_name}: {len(devices)} DPAA2 containers asked for one container "
                f"({', '.join(d.id for d in devices)}); DPDK uses one DPRC per process, ask for 1"
            )

    def attributes(self, device: PoolDevice, inventory: Inventory) -> dict[str, Attribute]:
        """`dprc` (the name DPDK's `DPRC` takes) and the container's object counts (`dpni`, `dpio`, ...), so a
        DeviceClass or claim can ask for a container with enough of them, as `minObjects` does in the config."""
        attributes: dict[str, Attribute] = {"dprc": device.container or device.id}
        container = next((c for c in inventory.of(NAME) if c.name == device.container), None)
        if container is not None:
            attributes.update(
                {kind: count for kind, count in sorted(container.object_counts.items()) if kind in OBJECT_TYPES}
            )
        return attributes


def dpdk_name_problem(name: str) -> str | None:
    """Why DPDK cannot take this container by name; None when it can.

    DPDK's fslmc bus refuses `DPRC` values of FSLMC_CONTAINER_MAX_LEN (8) characters or more ("Invalid container
    name", `fslmc_get_container_group` in drivers/bus/fslmc/fslmc_vfio.c): `dprc.100` and above. Handing one out
    would only fail later inside the pod, so such a container is left out, and said so."""
    if len(name) < DPDK_CONTAINER_NAME_MAX:
        return None
    return (
        f"{name}: DPDK's fslmc bus refuses container names of {DPDK_CONTAINER_NAME_MAX} characters or more "
        f'("Invalid container name", FSLMC_CONTAINER_MAX_LEN); use a container numbered below 100'
    )


def _unit(container: FslMcContainer, selectors: FslMcSelectors, inventory: Inventory, known: set[str]) -> Unit:
    not_eligible = []
    if (reason := dpdk_name_problem(container.name)) is not None:
        not_eligible.append(reason)
    if container.driver != VFIO_FSL_MC:
        not_eligible.append(f"{container.name} needs driver {VFIO_FSL_MC} but is {binding(container.driver)}")
    elif (reason := selectors.driver_mismatch(container)) is not None:
        not_eligible.append(reason)
    # An unbound container shows no objects at all, so its counts say nothing until it is bound.
    elif (reason := selectors.objects_shortfall(container)) is not None:
        not_eligible.append(f"minObjects: {reason}")
    if container.iommu_group is None:
        not_eligible.append(f"{container.name} has no IOMMU group")
    unhealthy = []
    nodes: tuple[DeviceNode, ...] = ()
    groups: tuple[int, ...] = ()
    if container.iommu_group is not None:
        if container.unbound_objects:
            unhealthy.append(f"objects not bound to {VFIO_FSL_MC}: {', '.join(container.unbound_objects)}")
        unhealthy += group_health(inventory, container.iommu_group)
        groups = (container.iommu_group,)
        nodes = group_nodes(inventory, container.iommu_group)
    device = PoolDevice(
        id=container.name,
        kind=NAME,
        healthy=True,
        iommu_groups=groups,
        numa_node=container.numa_node,
        members=(container.name,),
        container=container.name,
        nodes=nodes,
    )
    return judge(device, (container.name,), known, not_eligible, unhealthy)


KIND = FslMcKind()
