"""What each kind of device contributes to a container's environment, one small provider per kind (the
idea of sriov-network-device-plugin's info providers): a new device kind adds a provider, not a branch.

Kubelet merges the responses of every resource a container asks for and the first env name wins, so every
name here is namespaced by resource, except `DPRC`, which DPDK's fslmc bus reads verbatim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from deviceplugin.policy.config import env_suffix
from deviceplugin.records import DeviceType, PoolDevice


class EnvProvider(Protocol):
    def envs(self, resource_name: str, devices: Sequence[PoolDevice]) -> dict[str, str]: ...


class FslMcEnvProvider:
    """DPAA2: DPDK finds its container through `DPRC=dprc.N` (one per process)."""

    def envs(self, resource_name: str, devices: Sequence[PoolDevice]) -> dict[str, str]:
        suffix = env_suffix(resource_name)
        containers = ",".join(d.container or d.id for d in devices)
        groups = ",".join(str(g) for d in devices for g in d.iommu_groups)
        return {
            "DPRC": containers,
            f"DPAA2_DPRC_{suffix}": containers,
            f"DPAA2_IOMMU_GROUP_{suffix}": groups,
        }


class VfioPciEnvProvider:
    """vfio-pci: the PCI addresses under sriov-dp's name (`PCIDEVICE_…`) and KubeVirt's (`PCI_RESOURCE_…`)."""

    def envs(self, resource_name: str, devices: Sequence[PoolDevice]) -> dict[str, str]:
        suffix = env_suffix(resource_name)
        addresses = ",".join(sorted({a for d in devices for a in d.pci_addresses}))
        return {f"PCIDEVICE_{suffix}": addresses, f"PCI_RESOURCE_{suffix}": addresses}


def env_provider(kind: DeviceType) -> EnvProvider:
    return {DeviceType.FSLMC: FslMcEnvProvider, DeviceType.PCI: VfioPciEnvProvider}[kind]()
