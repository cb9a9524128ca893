"""What a device kind is to the rest of the plugin: the small protocol every kind module implements.

A kind (`fslmc`, `pci`, …) owns everything that differs between kinds of device — its selectors and how they
parse, how discovered records become allocation units, what a container gets for them, the rules on a request,
its node label and the uevent subsystems that announce its changes — so discovery, policy, the transports and
observability stay free of per-kind branches. The idea is dra-example-driver's profiles and
sriov-network-device-plugin's info providers, in one module per kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from deviceplugin.policy.config import PoolConfig
    from deviceplugin.policy.health import Unit
    from deviceplugin.records import Inventory, PoolDevice, ResourcePool

# A DRA device attribute value: ResourceSlices carry exactly one of int, bool, string (or version) per attribute.
Attribute = int | bool | str

# A config problem reporter: `bad(key, reason)` records that the pool's `key` is wrong for `reason`.
Bad = Callable[[str, str], None]


class DeviceKind(Protocol):
    """One kind of device. Kinds are stateless singletons listed in `deviceplugin.kinds.KINDS`."""

    name: str  # the config's deviceType, and PoolDevice.kind / ResourcePool.device_type
    label: str | None  # the node label set while a pool of this kind advertises a device; None: no label
    uevent_subsystems: frozenset[str]  # kernel subsystems whose uevents may change what this kind discovers
    selector_keys: tuple[str, ...]  # the keys its `selectors` mapping accepts, in documentation order
    # None: the pool key iommuGroups applies; otherwise why it does not (shown in the config problem).
    iommu_groups_rule: str | None
    # Pool-level keys only this kind takes (beside the common ones in policy/config.py), e.g. `count`,
    # `vfioInterface`: the config accepts them for this kind and names the kinds that take them otherwise.
    pool_keys: tuple[str, ...]

    def discover(self, sysfs_root: Path, dev_root: Path, problems: list[str]) -> tuple[Any, ...]:
        """Read this kind's records from the trees (never write); append a line per thing skipped."""
        ...

    def parse_selectors(self, raw: Mapping[Any, Any], bad: Bad) -> object | None:
        """The kind's selectors from the config's `selectors` mapping; None after reporting a problem."""
        ...

    def parse_pool_keys(self, entry: Mapping[Any, Any], bad: Bad) -> dict[str, Any]:
        """The kind's own pool keys from a pool entry (only `pool_keys` are looked at), as PoolConfig.options;
        a bad value is reported through `bad(key, reason)`."""
        ...

    def units(self, cfg: PoolConfig, inventory: Inventory, known: set[str]) -> list[Unit]:
        """The allocation units the pool's identity selectors name: devices to advertise, or left out with why.

        `known` holds the IDs the pool advertised last time: an eligibility failure only makes those Unhealthy."""
        ...

    def envs(self, resource_name: str, devices: Sequence[PoolDevice]) -> dict[str, str]:
        """The env vars a container gets for `devices` of one pool (the kind's info provider)."""
        ...

    def check_request(self, pool: ResourcePool, devices: Sequence[PoolDevice]) -> None:
        """Refuse a request the workload cannot use (raises an `AllocationError` subclass); None when fine."""
        ...

    def attributes(self, device: PoolDevice, inventory: Inventory) -> dict[str, Attribute]:
        """What a DRA DeviceClass or claim can select this device by, beyond the attributes every kind shares
        (`type`, `resource`, `iommuGroup`, `numaNode`): unprefixed names belong to the driver's domain, others
        carry their own (`resource.kubernetes.io/pciBusID`). Values are int, bool or str."""
        ...
