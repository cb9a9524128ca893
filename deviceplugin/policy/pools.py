"""Pools: turn the configured selectors and a discovered `Inventory` into `ResourcePool` snapshots.

The unit of allocation is the unit of VFIO isolation: a child DPRC for DPAA2, an IOMMU group for PCI
(one function → its address; several → `iommu-group-N` or left out; never split). Health is sticky: a device
kubelet already knows keeps its ID and turns Unhealthy when its binding, group or node goes wrong, and leaves
only when it is gone from sysfs or no longer named by the identity selectors (see selectors.py). Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deviceplugin.discovery.fslmc import VFIO_FSL_MC
from deviceplugin.discovery.iommu import group_node_path, is_vfio_driver
from deviceplugin.policy.config import ConfigProblem, PoolConfig
from deviceplugin.policy.selectors import FslMcSelectors, PciSelectors, binding
from deviceplugin.records import (
    DeviceNode,
    DeviceType,
    FslMcContainer,
    Inventory,
    PciDevice,
    PoolDevice,
    ResourcePool,
)

VFIO_CONTAINER_PATH = "/dev/vfio/vfio"


@dataclass(frozen=True)
class PoolBuild:
    pools: dict[str, ResourcePool] = field(default_factory=dict)  # keyed by prefix/name
    problems: tuple[ConfigProblem, ...] = ()


@dataclass(frozen=True)
class _Unit:
    """A candidate the pool's identity selectors named: a device to advertise, or a reason to leave it out."""

    id: str
    claims: tuple[str, ...]  # function addresses / container names: what no other pool may also take
    device: PoolDevice | None = None
    excluded: str | None = None


def build_pools(
    configs: Sequence[PoolConfig], inventory: Inventory, previous: Mapping[str, ResourcePool] | None = None
) -> PoolBuild:
    """One pool per config, in file order; the first pool to take a device keeps it."""
    pools: dict[str, ResourcePool] = {}
    problems: list[ConfigProblem] = []
    claimed: dict[str, str] = {}
    for cfg in configs:
        before = (previous or {}).get(cfg.resource_name)
        known = {d.id for d in before.devices} if before is not None else set()
        if cfg.device_type is DeviceType.FSLMC:
            units = _fslmc_units(cfg, inventory, known)
        else:
            units = _pci_units(cfg, inventory, known)
        devices: list[PoolDevice] = []
        excluded: list[tuple[str, str]] = []
        for unit in units:
            if unit.device is None:
                excluded.append((unit.id, unit.excluded or "left out"))
                continue
            owner = next((claimed[c] for c in unit.claims if c in claimed), None)
            if owner is not None:
                problems.append(
                    ConfigProblem(cfg.name, "selectors", f"{unit.id} is also selected by pool {owner}, which keeps it")
                )
                excluded.append((unit.id, f"already in pool {owner}"))
                continue
            claimed.update(dict.fromkeys(unit.claims, cfg.resource_name))
            devices.append(unit.device)
        pools[cfg.resource_name] = ResourcePool(
            name=cfg.name,
            prefix=cfg.prefix,
            device_type=cfg.device_type,
            devices=tuple(devices),
            excluded=tuple(excluded),
        )
    return PoolBuild(pools, tuple(problems))


# ------------------------------------------------------------------------------------------ device nodes
def _vfio_node(inventory: Inventory) -> DeviceNode:
    host = inventory.vfio_container_node or str(_dev_root(inventory) / "vfio/vfio")
    return DeviceNode(host, VFIO_CONTAINER_PATH)


def _dev_root(inventory: Inventory) -> Path:
    return Path(inventory.dev_root or "/dev")


def _group_node(inventory: Inventory, number: int) -> DeviceNode:
    """Host node of the group (noiommu-N in noiommu mode); the container always sees /dev/vfio/N, the only
    name DPDK's fslmc bus opens."""
    group = inventory.groups.get(number)
    if group is not None and group.dev_node is not None:
        host = group.dev_node
    else:
        noiommu = group.noiommu if group is not None else inventory.noiommu
        host = str(group_node_path(_dev_root(inventory), number, noiommu))
    return DeviceNode(host, f"/dev/vfio/{number}")


def _group_health(inventory: Inventory, number: int) -> list[str]:
    """Why the group's node could not be opened and used right now; [] when it can."""
    reasons = []
    group = inventory.groups.get(number)
    if group is None:
        reasons.append(f"IOMMU group {number} is gone")
    else:
        if not group.viable:
            reasons.append(f"IOMMU group {number} is not viable: {group.why_not_viable}")
        if group.dev_node is None:
            reasons.append(f"{_group_node(inventory, number).host_path} is missing")
    if inventory.vfio_container_node is None:
        reasons.append(f"{_vfio_node(inventory).host_path} is missing")
    return reasons


def _unit(
    device: PoolDevice, claims: tuple[str, ...], known: set[str], not_eligible: list[str], unhealthy: list[str]
) -> _Unit:
    """Eligibility failures leave a new device out but only make a known one Unhealthy (health stickiness)."""
    if not_eligible and device.id not in known:
        return _Unit(device.id, claims, excluded="; ".join(not_eligible))
    reasons = not_eligible + unhealthy
    judged = dataclasses.replace(device, healthy=not reasons, why_unhealthy="; ".join(reasons) or None)
    return _Unit(device.id, claims, device=judged)


# ------------------------------------------------------------------------------------------------ DPAA2
def _fslmc_units(cfg: PoolConfig, inventory: Inventory, known: set[str]) -> list[_Unit]:
    selectors = cfg.selectors
    assert isinstance(selectors, FslMcSelectors)
    roots = {c.name for c in inventory.containers if c.is_root}
    units = []
    for container in inventory.containers:
        if selectors.identity_mismatch(container) is not None:
            continue
        claims = (container.name,)
        if container.is_root:
            units.append(_Unit(container.name, claims, excluded="root container: the kernel's, never handed out"))
        elif container.parent not in roots:
            units.append(
                _Unit(
                    container.name,
                    claims,
                    excluded=f"nested in {container.parent}: only children of the root container are handed out",
                )
            )
        else:
            units.append(_fslmc_unit(container, selectors, inventory, known))
    return units


def _fslmc_unit(container: FslMcContainer, selectors: FslMcSelectors, inventory: Inventory, known: set[str]) -> _Unit:
    not_eligible = []
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
        unhealthy += _group_health(inventory, container.iommu_group)
        groups = (container.iommu_group,)
        nodes = (_vfio_node(inventory), _group_node(inventory, container.iommu_group))
    device = PoolDevice(
        id=container.name,
        kind=DeviceType.FSLMC,
        healthy=True,
        iommu_groups=groups,
        numa_node=container.numa_node,
        container=container.name,
        nodes=nodes,
    )
    return _unit(device, (container.name,), known, not_eligible, unhealthy)


# -------------------------------------------------------------------------------------------------- PCI
def _pci_units(cfg: PoolConfig, inventory: Inventory, known: set[str]) -> list[_Unit]:
    selectors = cfg.selectors
    assert isinstance(selectors, PciSelectors)
    by_address = {fn.address: fn for fn in inventory.pci}
    bridges = {fn.address for fn in inventory.pci if fn.is_bridge}

    def selected(addresses: list[str], sticky: bool, group: int | None = None) -> list[PciDevice]:
        # A function only belongs to a group both sides agree on (its link and the group's member list).
        named = [by_address[a] for a in addresses if a in by_address and by_address[a].iommu_group == group]
        named = [fn for fn in named if selectors.identity_mismatch(fn) is None]
        return [fn for fn in named if sticky or selectors.pf_mismatch(fn) is None]

    units: list[_Unit] = []
    members_of: dict[int, set[str]] = {n: set(g.members) for n, g in inventory.groups.items()}
    for fn in inventory.pci:
        if fn.iommu_group is not None:
            members_of.setdefault(fn.iommu_group, set()).add(fn.address)
        elif not fn.is_bridge and selected([fn.address], fn.address in known):
            no_group = [f"{fn.address} has no IOMMU group"]
            units.append(_pci_unit(fn.address, [fn], None, selectors, inventory, known, no_group))
    for fn in [by_address[a] for a in sorted(bridges)]:
        if selectors.identity_mismatch(fn) is not None or selectors.pf_mismatch(fn) is not None:
            continue
        units.append(_Unit(fn.address, (fn.address,), excluded="PCI bridge: never handed out"))
    for number, member_names in sorted(members_of.items()):
        # Bridges may share a group (kernel-owned on pcieport); every other member travels with the unit.
        functions = sorted(member_names - bridges)
        if not functions:
            continue
        unit_id = functions[0] if len(functions) == 1 else f"iommu-group-{number}"
        matched = selected(functions, unit_id in known, number)
        if not matched:
            continue
        if len(functions) == 1:
            units.append(_pci_unit(unit_id, matched, number, selectors, inventory, known, []))
            continue
        listing = f"IOMMU group {number} holds {len(functions)} functions ({', '.join(functions)})"
        if cfg.iommu_groups == "exclude":
            units.append(_Unit(unit_id, tuple(functions), excluded=f"{listing} and iommuGroups is exclude"))
            continue
        foreign = [a for a in functions if a not in {fn.address for fn in matched}]
        split = [f"{listing}; the selectors do not take {', '.join(foreign)} and a group is never split"]
        units.append(
            _pci_unit(unit_id, matched, number, selectors, inventory, known, split if foreign else [], functions)
        )
    return sorted(units, key=lambda u: (u.claims[0], u.id))


def _pci_unit(
    unit_id: str,
    functions: list[PciDevice],
    group: int | None,
    selectors: PciSelectors,
    inventory: Inventory,
    known: set[str],
    not_eligible: list[str],
    addresses: list[str] | None = None,
) -> _Unit:
    """One advertised PCI unit from the `functions` the selectors took (all of `addresses`, unless split)."""
    not_eligible = list(not_eligible)
    for fn in functions:
        if (reason := selectors.pf_mismatch(fn) or selectors.driver_mismatch(fn)) is not None:
            not_eligible.append(reason)
        elif not is_vfio_driver(fn.driver):
            not_eligible.append(f"{fn.address} needs a vfio driver but is {binding(fn.driver)}")
    unhealthy = _group_health(inventory, group) if group is not None else []
    numa = {fn.numa_node for fn in functions}
    all_addresses = tuple(addresses or sorted(fn.address for fn in functions))
    device = PoolDevice(
        id=unit_id,
        kind=DeviceType.PCI,
        healthy=True,
        iommu_groups=(group,) if group is not None else (),
        numa_node=numa.pop() if len(numa) == 1 else None,
        pci_addresses=all_addresses,
        pfs=tuple(sorted({fn.pf_address for fn in functions if fn.pf_address})),
        nodes=(_vfio_node(inventory), _group_node(inventory, group)) if group is not None else (),
    )
    return _unit(device, all_addresses, known, not_eligible, unhealthy)
