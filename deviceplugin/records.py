"""Plain records that cross the device plugin's layers: discovery → policy → transport.

Discovery returns `Inventory`; policy turns it (with the config) into `ResourcePool` snapshots and answers
allocations with `ContainerAllocation`; transport only translates these to and from protobuf. Records are
frozen so a snapshot handed to a gRPC stream can never change under it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


# ------------------------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class IommuGroup:
    """One IOMMU group: the unit VFIO hands to user space (a /dev/vfio node opens once)."""

    number: int
    members: tuple[str, ...]  # device names: PCI addresses or fsl-mc object names, sorted
    member_drivers: Mapping[str, str | None] = field(default_factory=dict, compare=False, hash=False)
    viable: bool = False  # every member bound to a vfio driver, to none, or (bridges) to pcieport
    why_not_viable: str | None = None
    dev_node: str | None = None  # host path of /dev/vfio/N or /dev/vfio/noiommu-N; None when absent
    noiommu: bool = False
    # VFIO device cdevs (CONFIG_VFIO_DEVICE_CDEV): member → its `vfioX` (only members whose `vfio-dev/vfioX/dev`
    # exists), and member → host path of /dev/vfio/devices/vfioX, None while that node is missing.
    cdevs: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    cdev_nodes: Mapping[str, str | None] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class FslMcContainer:
    """A DPAA2 resource container (dprc.N) as sysfs shows it."""

    name: str
    parent: str | None  # None for the root container
    driver: str | None
    iommu_group: int | None
    object_counts: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False)
    unbound_objects: tuple[str, ...] = ()  # objects inside not bound to vfio-fsl-mc
    numa_node: int | None = None

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def all_objects_vfio(self) -> bool:
        return not self.unbound_objects


@dataclass(frozen=True)
class PciDevice:
    """A PCI function as sysfs shows it."""

    address: str  # DDDD:BB:DD.F
    vendor: str  # four lower-case hex digits, no 0x: "8086"
    device: str  # "154c"
    pci_class: str  # six hex digits: "020000"
    driver: str | None
    iommu_group: int | None
    numa_node: int | None  # None when sysfs says -1 or nothing
    pf_address: str | None = None  # for a VF: its PF
    pf_name: str | None = None  # for a VF: the PF's netdev name, when the PF is kernel-bound
    netdev: str | None = None  # this function's netdev name, when kernel-bound
    root_device: str | None = None  # the upstream bridge/root port address, when there is one
    vf_index: int | None = None  # for a VF: N of the PF's `virtfnN` link that leads to it; None when unknown
    # The host bridge's sysfs directory above it (`pci0001:00`), when there is one. Derived from where the function
    # sits, like root_device, so it does not take part in comparing records.
    pcie_root: str | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        """The kernel's name for the function (its address), as IOMMU groups list it."""
        return self.address

    @property
    def is_bridge(self) -> bool:
        return self.pci_class.startswith("0604")


@dataclass(frozen=True)
class VhostNetNodes:
    """The two character devices a virtio-user / vhost-net user needs, as host paths; None while missing."""

    vhost_net: str | None
    tun: str | None


@dataclass(frozen=True)
class Inventory:
    """Everything discovery found under one sysfs root and dev root, plus what it skipped and why.

    `devices` holds each kind's records under the kind's name (`fslmc`: `FslMcContainer`s, `pci`: `PciDevice`s):
    a new kind brings its own reader and record type without a new field here."""

    devices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict, hash=False)
    groups: Mapping[int, IommuGroup] = field(default_factory=dict, compare=False, hash=False)
    noiommu: bool = False
    vfio_container_node: str | None = None  # host path of /dev/vfio/vfio, None when absent
    iommufd_node: str | None = None  # host path of /dev/iommu (VFIO cdev users need it), None when absent
    problems: tuple[str, ...] = ()
    dev_root: str | None = None  # the dev root discovery read, so policy can name a node that went missing

    def of(self, kind: str) -> tuple[Any, ...]:
        """The records discovery found for one kind (empty when the kind found none)."""
        return tuple(self.devices.get(kind, ()))

    @property
    def containers(self) -> tuple[FslMcContainer, ...]:
        return self.of("fslmc")

    @property
    def pci(self) -> tuple[PciDevice, ...]:
        return self.of("pci")


# ---------------------------------------------------------------------------------------------- policy
def env_suffix(resource_name: str) -> str:
    """`intel.com/intel_vf` → `INTEL_COM_INTEL_VF`, as sriov-network-device-plugin and KubeVirt name env vars."""
    return re.sub(r"[./-]", "_", resource_name.upper())


@dataclass(frozen=True)
class DeviceNode:
    """A device node for the container: host path, path inside the container, cgroup permissions."""

    host_path: str
    container_path: str
    permissions: str = "rw"


@dataclass(frozen=True)
class PoolDevice:
    """One allocatable unit of a pool: a DPRC, a single-function group, or a whole multi-function group."""

    id: str  # dprc.N | PCI address | iommu-group-N
    kind: str  # the device kind's name (deviceType): fslmc, pci
    healthy: bool
    iommu_groups: tuple[int, ...]
    numa_node: int | None = None
    members: tuple[str, ...] = ()  # the kernel device names the unit carries: the DPRC, PCI addresses, ...
    pci_addresses: tuple[str, ...] = ()  # PCI: every function the unit carries
    container: str | None = None  # fslmc: dprc.N
    pfs: tuple[str, ...] = ()  # PCI: PF addresses of the functions (for preferred allocation)
    nodes: tuple[DeviceNode, ...] = ()  # every node the unit needs: /dev/vfio/vfio and its group nodes
    why_unhealthy: str | None = None
    cdevs: tuple[tuple[str, str], ...] = ()  # vfioInterface cdev/both: (member, vfioX) of every member

    @property
    def health(self) -> str:
        return HEALTHY if self.healthy else UNHEALTHY


@dataclass(frozen=True)
class ResourcePool:
    """A snapshot of one configured pool: what it advertises and what it left out."""

    name: str  # resourceName, e.g. dpaa2_dprc
    prefix: str  # resourcePrefix, e.g. nxp.com
    device_type: str  # the device kind's name (deviceType)
    devices: tuple[PoolDevice, ...] = ()
    excluded: tuple[tuple[str, str], ...] = ()  # (device, reason) left out by this pool

    @property
    def resource_name(self) -> str:
        return f"{self.prefix}/{self.name}"

    @property
    def socket_name(self) -> str:
        return f"vnfio-{self.name}.sock"

    def device(self, device_id: str) -> PoolDevice | None:
        for dev in self.devices:
            if dev.id == device_id:
                return dev
        return None


@dataclass(frozen=True)
class ContainerAllocation:
    """What one container gets for one resource (maps 1:1 to ContainerAllocateResponse)."""

    envs: Mapping[str, str] = field(default_factory=dict, compare=True, hash=False)
    devices: tuple[DeviceNode, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict, compare=True, hash=False)


class AllocationError(Exception):
    """An allocation kubelet asked for that policy refuses. Each outcome is a subclass; each transport maps the
    class to its own error form (the Device Plugin API: a gRPC status code)."""


class InvalidRequest(AllocationError):
    """The request itself is malformed: no IDs, repeated IDs, an impossible size or must-include set."""


class UnknownDevices(AllocationError):
    """The request names device IDs the pool does not advertise."""


class UnhealthyDevices(AllocationError):
    """The request names devices that are advertised but Unhealthy right now."""


class UnsupportedRequest(AllocationError):
    """The devices exist and are healthy, but their kind's rules refuse the combination (e.g. two DPRCs)."""
