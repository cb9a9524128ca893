"""The sample board itself: builds the tree and mutates it the way the kernel would on bind, unbind, hot-plug and
device-node removal (see the package docstring)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from deviceplugin.discovery.iommu import group_node_path
from deviceplugin.sampleboard.parts import (
    AMBA_DRIVERS,
    DPRC_MISC,
    FSL_MC_DRIVERS,
    FSL_MC_PLATFORM,
    FSL_MC_VENDOR,
    IOMMUFD_MISC,
    PCI_DRIVERS,
    PCI_ROOT_PORT,
    PLATFORM_DRIVERS,
    SOC,
    TUN_MISC,
    VFIO_CDEV_MAJOR,
    VFIO_DRIVERS,
    VFIO_GROUP_MAJOR,
    VFIO_MISC,
    VHOST_NET_MISC,
    McObject,
    PciFunction,
    SocDevice,
    _link,
    _mknod,
    _unlink,
    _write,
    default_mc_objects,
    default_pci_functions,
    default_soc_devices,
)


class SampleBoard:
    """A fake board rooted at `root`: `root/sys` is the sysfs root and `root/dev` the dev root."""

    def __init__(self, root: Path, *, noiommu: bool = False, cdev: bool = False) -> None:
        """`cdev`: the kernel has CONFIG_VFIO_DEVICE_CDEV (every VFIO device gets vfio-dev/vfioX and a node)."""
        self.root = Path(root)
        self.cdev = cdev
        self.sys = self.root / "sys"
        self.dev = self.root / "dev"
        self.noiommu = noiommu
        self.mc: dict[str, McObject] = {}
        self.pci: dict[str, PciFunction] = {}
        self.soc: dict[str, SocDevice] = {}
        self.cdevs: dict[str, int] = {}  # VFIO device → X of its /dev/vfio/devices/vfioX (iommu mode only)

    # ----------------------------------------------------------------------------------------- building
    def build(
        self,
        mc_objects: Iterable[McObject] | None = None,
        pci_functions: Iterable[PciFunction] | None = None,
        soc_devices: Iterable[SocDevice] = (),
        *,
        unbound_dprc_group: bool = False,
    ) -> SampleBoard:
        """Write the whole tree. `unbound_dprc_group` gives the unbound dprc.4 an iommu_group link too,
        as some kernel versions show for a never-probed container."""
        self._write_bus_files()
        for obj in default_mc_objects() if mc_objects is None else mc_objects:
            self.add_mc_object(obj)
        if unbound_dprc_group and "dprc.4" in self.mc:
            self.add_mc_object(McObject("dprc.4", "dprc.1", None, None, 12))
        for fn in default_pci_functions() if pci_functions is None else pci_functions:
            self.add_pci_function(fn)
        for dev in soc_devices:
            self.add_soc_device(dev)
        _write(
            self.sys / "module/vfio/parameters/enable_unsafe_noiommu_mode", "Y\n" if self.noiommu else "N\n"
        )
        _mknod(self.dev / "vfio/vfio", 0o666, *VFIO_MISC)
        _mknod(self.dev / "dprc.1", 0o600, *DPRC_MISC)
        (self.dev / "hugepages").mkdir(parents=True, exist_ok=True)
        for group in sorted(self.vfio_groups()):
            self.add_group_node(group)
        self.add_vhost_net()
        _mknod(self.dev / "iommu", 0o660, *IOMMUFD_MISC)
        for name in sorted(self.cdevs, key=self.cdevs.__getitem__):
            self.add_cdev_node(name)
        return self

    def _write_bus_files(self) -> None:
        bus = self.sys / "bus/fsl-mc"
        for name, content in {
            "drivers_autoprobe": "1\n",
            "autorescan": "1\n",
            "rescan": "",
            "drivers_probe": "",
            "uevent": "",
        }.items():
            _write(bus / name, content)
        (bus / "devices").mkdir(parents=True, exist_ok=True)
        for drv in FSL_MC_DRIVERS:
            for name in ("bind", "unbind", "uevent"):
                _write(bus / "drivers" / drv / name, "")
        pci = self.sys / "bus/pci"
        (pci / "devices").mkdir(parents=True, exist_ok=True)
        for name, content in {"drivers_autoprobe": "1\n", "rescan": "", "drivers_probe": "", "uevent": ""}.items():
            _write(pci / name, content)
        for drv in PCI_DRIVERS:
            for name in ("bind", "unbind", "new_id", "uevent"):
                _write(pci / "drivers" / drv / name, "")
        (self.sys / "kernel/iommu_groups").mkdir(parents=True, exist_ok=True)
        (self.sys / "class/net").mkdir(parents=True, exist_ok=True)
        for bus, drivers in (("platform", PLATFORM_DRIVERS), ("amba", AMBA_DRIVERS)):
            (self.sys / "bus" / bus / "devices").mkdir(parents=True, exist_ok=True)
            for name, content in {"drivers_autoprobe": "1\n", "drivers_probe": "", "uevent": ""}.items():
                _write(self.sys / "bus" / bus / name, content)
            for drv in drivers:
                for name in ("bind", "unbind", "uevent"):
                    _write(self.sys / "bus" / bus / "drivers" / drv / name, "")
        _write(self.sys / "module/vfio_platform/parameters/reset_required", "Y\n")
        for misc, (major, minor) in (("vhost-net", VHOST_NET_MISC), ("tun", TUN_MISC), ("iommu", IOMMUFD_MISC)):
            _write(self.sys / "devices/virtual/misc" / misc / "dev", f"{major}:{minor}\n")
            _link(self.sys / "class/misc" / misc, self.sys / "devices/virtual/misc" / misc)

    def _group_dir(self, group: int) -> Path:
        gdir = self.sys / "kernel/iommu_groups" / str(group)
        if not gdir.exists():
            (gdir / "devices").mkdir(parents=True)
            _write(gdir / "type", "DMA\n")
            _write(gdir / "reserved_regions", "")
            if self.noiommu:
                _write(gdir / "name", "vfio-noiommu\n")
        return gdir

    def mc_dir(self, name: str) -> Path:
        """The device directory of an fsl-mc object: nested under its container chain."""
        parts = [name]
        parent = self.mc[name].parent
        while parent is not None:
            parts.append(parent)
            parent = self.mc[parent].parent
        return self.sys / FSL_MC_PLATFORM / "/".join(reversed(parts))

    def pci_dir(self, bdf: str) -> Path:
        root_port = PCI_ROOT_PORT.rsplit("/", 1)[1]
        if bdf == root_port:
            return self.sys / PCI_ROOT_PORT
        return self.sys / PCI_ROOT_PORT / bdf

    def add_mc_object(self, obj: McObject) -> None:
        """Write one fsl-mc object (its parent must exist), as the kernel shows it after a container scan."""
        self.mc[obj.name] = obj
        d = self.mc_dir(obj.name)
        (d / "power").mkdir(parents=True, exist_ok=True)
        modalias = f"fsl-mc:v{FSL_MC_VENDOR:08X}d{obj.type}"
        _write(d / "modalias", modalias + "\n")
        _write(d / "driver_override", f"{obj.override or '(null)'}\n")
        _link(d / "subsystem", self.sys / "bus/fsl-mc")
        _link(self.sys / "bus/fsl-mc/devices" / obj.name, d)
        self._set_mc_driver(obj.name, obj.driver)
        if obj.group is not None:
            gdir = self._group_dir(obj.group)
            _link(d / "iommu_group", gdir)
            _link(gdir / "devices" / obj.name, d)

    def _mc_uevent(self, obj: McObject, driver: str | None) -> str:
        lines = [f"DEVTYPE=fsl_mc_bus_{obj.type}"]
        if driver:
            lines.append(f"DRIVER={driver}")
        lines.append(f"MODALIAS=fsl-mc:v{FSL_MC_VENDOR:08X}d{obj.type}")
        return "\n".join(lines) + "\n"

    def _set_mc_driver(self, name: str, driver: str | None) -> None:
        obj = self.mc[name]
        d = self.mc_dir(name)
        for drv in FSL_MC_DRIVERS:
            _unlink(self.sys / "bus/fsl-mc/drivers" / drv / name)
        _unlink(d / "driver")
        if driver:
            drv_dir = self.sys / "bus/fsl-mc/drivers" / driver
            for f in ("bind", "unbind", "uevent"):
                if not (drv_dir / f).exists():
                    _write(drv_dir / f, "")
            _link(d / "driver", drv_dir)
            _link(drv_dir / name, d)
        _write(d / "uevent", self._mc_uevent(obj, driver))
        self.mc[name] = McObject(obj.name, obj.parent, driver, obj.override, obj.group)

    def add_pci_function(self, fn: PciFunction) -> None:
        """Write one PCI function with its ids, links, driver and group, as pci-sysfs shows it."""
        self.pci[fn.bdf] = fn
        d = self.pci_dir(fn.bdf)
        d.mkdir(parents=True, exist_ok=True)
        (d / "power").mkdir(exist_ok=True)
        for name, value in {
            "vendor": f"0x{fn.vendor:04x}",
            "device": f"0x{fn.device:04x}",
            "subsystem_vendor": "0x8086" if fn.vendor == 0x8086 else f"0x{fn.vendor:04x}",
            "subsystem_device": "0x0000",
            "class": f"0x{fn.pci_class:06x}",
            "numa_node": "-1",
            "driver_override": "(null)",
        }.items():
            _write(d / name, value + "\n")
        _link(d / "subsystem", self.sys / "bus/pci")
        _link(self.sys / "bus/pci/devices" / fn.bdf, d)
        gdir = self._group_dir(fn.group)
        _link(d / "iommu_group", gdir)
        _link(gdir / "devices" / fn.bdf, d)
        if fn.netdev:
            ndir = d / "net" / fn.netdev
            _write(ndir / "address", "3c:fd:fe:a0:00:01\n")
            _write(ndir / "ifindex", "5\n")
            _link(self.sys / "class/net" / fn.netdev, ndir)
        if fn.physfn:
            _link(d / "physfn", self.pci_dir(fn.physfn))
            self._refresh_sriov(fn.physfn)
        self._set_pci_driver(fn.bdf, fn.driver)

    def _refresh_sriov(self, pf: str) -> None:
        pf_dir = self.pci_dir(pf)
        vfs = sorted(b for b, f in self.pci.items() if f.physfn == pf)
        for old in pf_dir.glob("virtfn*"):
            old.unlink()
        for i, vf in enumerate(vfs):
            _link(pf_dir / f"virtfn{i}", self.pci_dir(vf))
        _write(pf_dir / "sriov_totalvfs", "64\n")
        _write(pf_dir / "sriov_numvfs", f"{len(vfs)}\n")

    def _pci_uevent(self, fn: PciFunction, driver: str | None) -> str:
        sub_vendor = 0x8086 if fn.vendor == 0x8086 else fn.vendor
        lines = [f"DRIVER={driver}"] if driver else []
        lines += [
            f"PCI_CLASS={fn.pci_class:X}",
            f"PCI_ID={fn.vendor:04X}:{fn.device:04X}",
            f"PCI_SUBSYS_ID={sub_vendor:04X}:0000",
            f"PCI_SLOT_NAME={fn.bdf}",
            f"MODALIAS=pci:v{fn.vendor:08X}d{fn.device:08X}sv{sub_vendor:08X}sd00000000"
            f"bc{fn.pci_class >> 16:02X}sc{(fn.pci_class >> 8) & 0xFF:02X}i{fn.pci_class & 0xFF:02X}",
        ]
        return "\n".join(lines) + "\n"

    def _set_pci_driver(self, bdf: str, driver: str | None) -> None:
        fn = self.pci[bdf]
        d = self.pci_dir(bdf)
        for drv in PCI_DRIVERS:
            _unlink(self.sys / "bus/pci/drivers" / drv / bdf)
        _unlink(d / "driver")
        if driver:
            drv_dir = self.sys / "bus/pci/drivers" / driver
            for f in ("bind", "unbind", "new_id", "uevent"):
                if not (drv_dir / f).exists():
                    _write(drv_dir / f, "")
            _link(d / "driver", drv_dir)
            _link(drv_dir / bdf, d)
        _write(d / "uevent", self._pci_uevent(fn, driver))
        self.pci[bdf] = PciFunction(
            fn.bdf, fn.vendor, fn.device, fn.pci_class, driver, fn.group, fn.netdev, fn.physfn
        )
        self._set_cdev(bdf, d, driver)

    # ------------------------------------------------------------------------------------ SoC devices
    def soc_dir(self, name: str) -> Path:
        return self.sys / SOC / name

    def add_soc_device(self, dev: SocDevice) -> None:
        """Write one platform (or AMBA) device with its devicetree node, as drivers/base/platform.c and
        drivers/of show it: `of_node` into firmware/devicetree, NUL-terminated `compatible`, OF_* uevent lines."""
        self.soc[dev.name] = dev
        d = self.soc_dir(dev.name)
        (d / "power").mkdir(parents=True, exist_ok=True)
        ofdir = self.sys / "firmware/devicetree/base" / dev.of_node
        ofdir.mkdir(parents=True, exist_ok=True)
        (ofdir / "compatible").write_bytes(b"".join(c.encode() + b"\0" for c in dev.compatibles))
        (ofdir / "name").write_bytes(dev.node_name.encode() + b"\0")
        _link(d / "of_node", ofdir)
        _write(d / "modalias", f"{self._soc_modalias(dev)}\n")
        _write(d / "driver_override", f"{dev.driver if dev.driver and dev.driver.startswith('vfio') else '(null)'}\n")
        _link(d / "subsystem", self.sys / "bus" / dev.bus)
        _link(self.sys / "bus" / dev.bus / "devices" / dev.name, d)
        if dev.bus == "amba":
            _write(d / "id", "00041011\n")  # PL011's peripheral ID
            base = int(dev.name.split(".")[0], 16)
            _write(d / "resource", f"0x{base:016x}\t0x{base + 0xFFF:016x}\t0x0000000000000200\n")
        if dev.group is not None:
            gdir = self._group_dir(dev.group)
            _link(d / "iommu_group", gdir)
            _link(gdir / "devices" / dev.name, d)
        self._set_soc_driver(dev.name, dev.driver)

    @staticmethod
    def _soc_modalias(dev: SocDevice) -> str:
        return f"of:N{dev.node_name}T(null)" + "".join(f"C{c}" for c in dev.compatibles)

    def _soc_uevent(self, dev: SocDevice, driver: str | None) -> str:
        lines = [f"DRIVER={driver}"] if driver else []
        lines += [f"OF_NAME={dev.node_name}", f"OF_FULLNAME=/{dev.of_node}", f"OF_COMPATIBLE_N={len(dev.compatibles)}"]
        lines += [f"OF_COMPATIBLE_{i}={c}" for i, c in enumerate(dev.compatibles)]
        lines.append(f"MODALIAS={self._soc_modalias(dev)}")
        return "\n".join(lines) + "\n"

    def _set_soc_driver(self, name: str, driver: str | None) -> None:
        dev = self.soc[name]
        d = self.soc_dir(name)
        drivers_dir = self.sys / "bus" / dev.bus / "drivers"
        for drv in PLATFORM_DRIVERS + AMBA_DRIVERS:
            _unlink(drivers_dir / drv / name)
        _unlink(d / "driver")
        if driver:
            for f in ("bind", "unbind", "uevent"):
                if not (drivers_dir / driver / f).exists():
                    _write(drivers_dir / driver / f, "")
            _link(d / "driver", drivers_dir / driver)
            _link(drivers_dir / driver / name, d)
        _write(d / "uevent", self._soc_uevent(dev, driver))
        self.soc[name] = SocDevice(dev.name, dev.compatibles, driver, dev.group, dev.bus)
        self._set_cdev(name, d, driver)

    def remove_soc_device(self, name: str) -> None:
        """Hot-unplug one platform device (an overlay removed, a driver module unloaded with its device)."""
        dev = self.soc.pop(name)
        self._drop_cdev(name)
        for drv in PLATFORM_DRIVERS + AMBA_DRIVERS:
            _unlink(self.sys / "bus" / dev.bus / "drivers" / drv / name)
        _unlink(self.sys / "bus" / dev.bus / "devices" / name)
        if dev.group is not None:
            _unlink(self.sys / "kernel/iommu_groups" / str(dev.group) / "devices" / name)
        shutil.rmtree(self.soc_dir(name))

    # --------------------------------------------------------------------------------- VFIO cdevs
    def _set_cdev(self, name: str, device_dir: Path, driver: str | None) -> None:
        """A VFIO-bound device gets `vfio-dev/vfioX/dev` (lowest free X) with CONFIG_VFIO_DEVICE_CDEV; noiommu
        mode creates none. The /dev node follows in build() or add_cdev_node(), as udev would."""
        if driver not in VFIO_DRIVERS or self.noiommu or not self.cdev:
            self._drop_cdev(name)
            return
        if name not in self.cdevs:
            used = set(self.cdevs.values())
            self.cdevs[name] = next(i for i in range(len(used) + 1) if i not in used)
        x = self.cdevs[name]
        vdir = device_dir / "vfio-dev" / f"vfio{x}"
        _write(vdir / "dev", f"{VFIO_CDEV_MAJOR}:{x}\n")
        _write(vdir / "uevent", f"MAJOR={VFIO_CDEV_MAJOR}\nMINOR={x}\nDEVNAME=vfio/devices/vfio{x}\n")
        _link(vdir / "device", device_dir)
        _link(vdir / "subsystem", self.sys / "class/vfio-dev")
        _link(self.sys / "class/vfio-dev" / f"vfio{x}", vdir)

    def _drop_cdev(self, name: str) -> None:
        x = self.cdevs.pop(name, None)
        if x is None:
            return
        _unlink(self.sys / "class/vfio-dev" / f"vfio{x}")
        _unlink(self.dev / "vfio/devices" / f"vfio{x}")
        owner = self.soc_dir(name) if name in self.soc else self.pci_dir(name) if name in self.pci else None
        if owner is not None and (owner / "vfio-dev").exists():
            shutil.rmtree(owner / "vfio-dev")

    def cdev_node(self, name: str) -> Path:
        return self.dev / "vfio/devices" / f"vfio{self.cdevs[name]}"

    def add_cdev_node(self, name: str) -> None:
        _mknod(self.cdev_node(name), 0o600, VFIO_CDEV_MAJOR, self.cdevs[name])

    def remove_cdev_node(self, name: str) -> None:
        _unlink(self.cdev_node(name))

    def remove_iommufd(self) -> None:
        _unlink(self.dev / "iommu")

    def add_iommufd(self) -> None:
        _mknod(self.dev / "iommu", 0o660, *IOMMUFD_MISC)

    # ---------------------------------------------------------------------------------- vhost-net
    def add_vhost_net(self) -> None:
        """/dev/vhost-net and /dev/net/tun, as udev makes them (0666) when vhost_net and tun are loaded."""
        _mknod(self.dev / "vhost-net", 0o666, *VHOST_NET_MISC)
        _mknod(self.dev / "net/tun", 0o666, *TUN_MISC)

    def remove_vhost_net(self) -> None:
        """`modprobe -r vhost_net`: the node goes (tun stays)."""
        _unlink(self.dev / "vhost-net")

    # ------------------------------------------------------------------------------- device nodes
    def vfio_groups(self) -> set[int]:
        """Groups that get a /dev/vfio node: those with a vfio-bound member (what the kernel creates)."""
        groups = {o.group for o in self.mc.values() if o.driver == "vfio-fsl-mc" and o.group is not None}
        groups |= {f.group for f in self.pci.values() if f.driver == "vfio-pci"}
        groups |= {d.group for d in self.soc.values() if d.driver in VFIO_DRIVERS and d.group is not None}
        return groups

    def group_node(self, group: int) -> Path:
        return group_node_path(self.dev, group, self.noiommu)

    def add_group_node(self, group: int) -> None:
        _mknod(self.group_node(group), 0o600, VFIO_GROUP_MAJOR, group)

    def remove_group_node(self, group: int) -> None:
        _unlink(self.group_node(group))

    # ----------------------------------------------------------------------------- kernel events
    def unbind(self, name: str) -> None:
        """What `echo NAME > …/drivers/<drv>/unbind` leaves behind (fsl-mc object, PCI function, SoC device)."""
        if name in self.mc:
            self._set_mc_driver(name, None)
        elif name in self.soc:
            self._set_soc_driver(name, None)
        else:
            self._set_pci_driver(name, None)

    def bind(self, name: str, driver: str) -> None:
        """What binding NAME to DRIVER leaves behind."""
        if name in self.mc:
            self._set_mc_driver(name, driver)
        elif name in self.soc:
            self._set_soc_driver(name, driver)
        else:
            self._set_pci_driver(name, driver)

    def add_vf(self, bdf: str, group: int, *, pf: str = "0001:01:00.0", device: int = 0x154C) -> None:
        """Hot-plug one more vfio-pci VF of `pf` in its own group, with its /dev/vfio node."""
        vendor = self.pci[pf].vendor
        self.add_pci_function(PciFunction(bdf, vendor, device, 0x020000, "vfio-pci", group, physfn=pf))
        self.add_group_node(group)
        if bdf in self.cdevs:
            self.add_cdev_node(bdf)

    def add_platform_device(self, dev: SocDevice) -> None:
        """Hot-plug one SoC device (a devicetree overlay) bound as given, with its group and VFIO nodes."""
        self.add_soc_device(dev)
        if dev.group is not None and dev.group in self.vfio_groups():
            self.add_group_node(dev.group)
        if dev.name in self.cdevs:
            self.add_cdev_node(dev.name)

    def remove_pci_function(self, bdf: str) -> None:
        """Hot-unplug one PCI function: its directory and every link to it disappear."""
        self._drop_cdev(bdf)
        fn = self.pci.pop(bdf)
        for drv in PCI_DRIVERS:
            _unlink(self.sys / "bus/pci/drivers" / drv / bdf)
        _unlink(self.sys / "bus/pci/devices" / bdf)
        _unlink(self.sys / "kernel/iommu_groups" / str(fn.group) / "devices" / bdf)
        shutil.rmtree(self.pci_dir(bdf))
        if fn.physfn:
            self._refresh_sriov(fn.physfn)


def build_sample_board(
    root: Path, *, noiommu: bool = False, unbound_dprc_group: bool = False, soc: bool = False, cdev: bool = False
) -> SampleBoard:
    """Write the default LX2160A-like board under `root` and return it.

    `soc` adds the SoC's platform and AMBA devices (`default_soc_devices`), `cdev` the VFIO device cdevs of a
    CONFIG_VFIO_DEVICE_CDEV kernel. Both are off by default so the classic board (DPAA2 and vfio-pci only, group
    nodes only under /dev/vfio) stays what earlier tests know; `full_sample_board` turns both on."""
    board = SampleBoard(root, noiommu=noiommu, cdev=cdev)
    return board.build(soc_devices=default_soc_devices() if soc else (), unbound_dprc_group=unbound_dprc_group)


def full_sample_board(root: Path, *, noiommu: bool = False) -> SampleBoard:
    """Every kind the plugin knows: DPAA2, vfio-pci, platform/AMBA, vhost-net and VFIO cdevs (what `list
    --sample-board`, the daemon's `--sample-board` and the demo use)."""
    return build_sample_board(root, noiommu=noiommu, soc=True, cdev=True)
