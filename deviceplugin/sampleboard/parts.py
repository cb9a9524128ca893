"""What the sample board is made of: the kernel's names and numbers, the records of its MC objects, PCI functions
and SoC devices with the default sets, and the file primitives that write a sysfs-shaped tree."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

FSL_MC_PLATFORM = "devices/platform/soc/80c000000.fsl-mc"
PCI_ROOT_PORT = "devices/platform/soc/3800000.pcie/pci0001:00/0001:00:00.0"
FSL_MC_VENDOR = 0x1957
FSL_MC_DRIVERS = ("fsl_mc_dprc", "fsl_mc_allocator", "fsl_mc_dpio", "fsl_dpaa2_eth", "vfio-fsl-mc")
PCI_DRIVERS = ("vfio-pci", "i40e", "pcieport")
VFIO_GROUP_MAJOR = 243  # dynamic on a real kernel; any value will do
VFIO_CDEV_MAJOR = 511  # the vfio-dev class's major, dynamic too
VFIO_MISC = (10, 196)
DPRC_MISC = (10, 60)
VHOST_NET_MISC = (10, 238)
TUN_MISC = (10, 200)
IOMMUFD_MISC = (10, 124)  # dynamic minor on a real kernel
SOC = "devices/platform/soc"
PLATFORM_DRIVERS = ("vfio-platform", "ahci-qoriq", "i2c-imx", "sdhci-esdhc")
AMBA_DRIVERS = ("vfio-amba", "uart-pl011")
VFIO_DRIVERS = ("vfio-pci", "vfio-platform", "vfio-amba")


@dataclass(frozen=True)
class McObject:
    """One fsl-mc object of the sample board: `name` is `type.id`, `parent` the container's name."""

    name: str
    parent: str | None
    driver: str | None
    override: str | None
    group: int | None

    @property
    def type(self) -> str:
        return self.name.split(".", 1)[0]


@dataclass(frozen=True)
class PciFunction:
    """One PCI function of the sample board."""

    bdf: str
    vendor: int
    device: int
    pci_class: int
    driver: str | None
    group: int
    netdev: str | None = None
    physfn: str | None = None


@dataclass(frozen=True)
class SocDevice:
    """One platform-bus (or AMBA) device of the sample board, with its devicetree node."""

    name: str  # <unit-address>.<node-name>, e.g. 3200000.sata
    compatibles: tuple[str, ...]
    driver: str | None
    group: int | None
    bus: str = "platform"

    @property
    def node_name(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def of_node(self) -> str:
        """The devicetree path under firmware/devicetree/base: soc/<node-name>@<unit-address>."""
        address, node = self.name.split(".", 1)
        return f"soc/{node}@{address}"


def default_soc_devices() -> list[SocDevice]:
    """LX2160A SoC devices: a SATA controller alone in group 30, two I2C controllers sharing group 31 (one unit or
    left out), a kernel-owned eSDHC (never advertised) and a PL011 UART on the AMBA bus handed to vfio-amba."""
    return [
        SocDevice("3200000.sata", ("fsl,lx2160a-ahci",), "vfio-platform", 30),
        SocDevice("2000000.i2c", ("fsl,lx2160a-i2c", "fsl,vf610-i2c"), "vfio-platform", 31),
        SocDevice("2010000.i2c", ("fsl,lx2160a-i2c", "fsl,vf610-i2c"), "vfio-platform", 31),
        SocDevice("2140000.mmc", ("fsl,lx2160a-esdhc", "fsl,esdhc"), "sdhci-esdhc", 32),
        SocDevice("21c0000.serial", ("arm,sbsa-uart", "arm,pl011", "arm,primecell"), "vfio-amba", 33, bus="amba"),
    ]


def _dprc2_objects() -> list[McObject]:
    names = ["dpni.1", "dpio.16", "dpio.17", "dpbp.1", "dpmcp.2", "dpcon.1"]
    return [McObject(n, "dprc.2", "vfio-fsl-mc", "vfio-fsl-mc", 10) for n in names]


def _dprc3_objects() -> list[McObject]:
    names = ["dpni.2", "dpio.18", "dpio.19", "dpbp.2", "dpmcp.3", "dpcon.2", "dpseci.0"]
    return [McObject(n, "dprc.3", "vfio-fsl-mc", "vfio-fsl-mc", 11) for n in names]


def default_mc_objects() -> list[McObject]:
    """The fsl-mc table of the design notes: a kernel-owned root container, two vfio containers, one unbound."""
    root = [
        McObject("dprc.1", None, "fsl_mc_dprc", None, 2),
        McObject("dpni.0", "dprc.1", "fsl_dpaa2_eth", None, 2),
        McObject("dpio.0", "dprc.1", "fsl_mc_dpio", None, 2),
        McObject("dpbp.0", "dprc.1", "fsl_mc_allocator", None, 2),
        McObject("dpmcp.1", "dprc.1", "fsl_mc_allocator", None, 2),
        McObject("dpcon.0", "dprc.1", "fsl_mc_allocator", None, 2),
        McObject("dpmac.3", "dprc.1", None, None, 2),
        McObject("dprc.2", "dprc.1", "vfio-fsl-mc", "vfio-fsl-mc", 10),
        McObject("dprc.3", "dprc.1", "vfio-fsl-mc", "vfio-fsl-mc", 11),
        McObject("dprc.4", "dprc.1", None, None, None),
    ]
    return root + _dprc2_objects() + _dprc3_objects()


def default_pci_functions() -> list[PciFunction]:
    """An i40e PF with four vfio-pci VFs; VF2 and VF3 share group 22 (a missing ACS, synthetic)."""
    pf = "0001:01:00.0"
    return [
        PciFunction("0001:00:00.0", 0x1957, 0x8D80, 0x060400, "pcieport", 19),
        PciFunction(pf, 0x8086, 0x1572, 0x020000, "i40e", 19, netdev="eth1"),
        PciFunction("0001:01:00.1", 0x8086, 0x154C, 0x020000, "vfio-pci", 20, physfn=pf),
        PciFunction("0001:01:00.2", 0x8086, 0x154C, 0x020000, "vfio-pci", 21, physfn=pf),
        PciFunction("0001:01:00.3", 0x8086, 0x154C, 0x020000, "vfio-pci", 22, physfn=pf),
        PciFunction("0001:01:00.4", 0x8086, 0x154C, 0x020000, "vfio-pci", 22, physfn=pf),
    ]


def _write(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


def _link(link: Path, target: Path) -> None:
    """Create `link` pointing at `target` with a relative path, as sysfs does."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent))


def _unlink(path: Path) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()


def _mknod(path: Path, mode: int, major: int, minor: int) -> None:
    """A character device node when we may create one (root), else a regular file standing in for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _unlink(path)
    try:
        os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EACCES):
            raise
        path.write_text("")
    os.chmod(path, mode)


