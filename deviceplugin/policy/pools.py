"""Pools: turn the configured pools and a discovered `Inventory` into `ResourcePool` snapshots.

Each pool's kind (`deviceplugin.kinds`) says which units its selectors name and how healthy they are; this
module only keeps pools apart: the first pool in file order to take a device keeps it. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from deviceplugin.kinds import kind_of
from deviceplugin.policy.config import ConfigProblem, PoolConfig
from deviceplugin.policy.health import with_vhost_net
from deviceplugin.records import Inventory, PoolDevice, ResourcePool


@dataclass(frozen=True)
class PoolBuild:
    pools: dict[str, ResourcePool] = field(default_factory=dict)  # keyed by prefix/name
    problems: tuple[ConfigProblem, ...] = ()


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
        units = kind_of(cfg.device_type).units(cfg, inventory, known)
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
            devices.append(with_vhost_net(unit.device, inventory) if cfg.need_vhost_net else unit.device)
        pools[cfg.resource_name] = ResourcePool(
            name=cfg.name,
            prefix=cfg.prefix,
            device_type=cfg.device_type,
            devices=tuple(devices),
            excluded=tuple(excluded),
        )
    return PoolBuild(pools, tuple(problems))
