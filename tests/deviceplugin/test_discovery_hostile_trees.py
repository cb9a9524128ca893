"""Hostile sysfs and dev trees: a generated board corrupted on purpose (dangling and looping links, groups that
point elsewhere or outside the tree, attributes that cannot be read, device nodes that are symlinks or
directories, foreign objects in a container), alone and in random combinations, and a 10,000-device tree.

Whatever the tree, discovery reports and skips instead of crashing, and policy never hands out anything unsafe.
Every advertised healthy device is checked against an oracle written here, independent of discovery: the
tree, read again with strict rules, must show a viable group, real device nodes inside the dev root and
links that agree both ways. Every Allocate answer must name exactly `/dev/vfio/vfio` and the nodes of the
allocated devices' groups, under the dev root, and never `/dev/dprc.*`.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deviceplugin.discovery.inventory import discover
from deviceplugin.policy.allocation import allocate, preferred_allocation
from deviceplugin.policy.config import SAMPLE_CONFIG, parse_config
from deviceplugin.policy.pools import build_pools
from deviceplugin.records import (
    AllocationError,
    ContainerAllocation,
    Inventory,
    PoolDevice,
    ResourcePool,
    UnknownDevices,
)
from deviceplugin.sampleboard import SampleBoard, build_sample_board

pytestmark = pytest.mark.hardening  # attacks and faults: tried as an attacker or a careless operator would

# The sample config, and a second one that takes everything it can (no selectors): more devices at stake.
CONFIGS = {
    "sample": parse_config(SAMPLE_CONFIG).pools,
    "greedy": parse_config(
        {
            "resourceList": [
                {"resourceName": "any_dprc", "deviceType": "fslmc"},
                {"resourceName": "any_pci", "deviceType": "pci"},
            ]
        }
    ).pools,
}
NEVER_ADVERTISED = {"dprc.1", "dprc.4", "0001:01:00.0", "0001:00:00.0"}
_OBJECT = re.compile(r"^[a-z]+\.[0-9]+$")
_DPRC = re.compile(r"^dprc\.[0-9]+$")


def scratch_base() -> str | None:
    """tmpfs when it has room: the 10,000-device tree is ~150,000 inodes, which a disk under the load of a
    parallel test run creates far too slowly. None (the default temp dir) otherwise."""
    try:
        fs = os.statvfs("/dev/shm")
    except OSError:
        return None
    if fs.f_favail < 400_000 or fs.f_bavail * fs.f_frsize < 16 << 20 or not os.access("/dev/shm", os.W_OK):
        return None
    return "/dev/shm"


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"vnfio-hostile-{os.getpid()}-", dir=scratch_base()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- oracle
def _real(path: Path) -> Path | None:
    """Where `path` leads, following every link; None for dangling links and loops."""
    try:
        return Path(os.path.realpath(path, strict=True))
    except OSError:
        return None


def _inside(path: Path, root: Path) -> Path | None:
    real = _real(path)
    return real if real is not None and real.is_relative_to(os.path.realpath(root)) else None


UNKNOWN = "<unknown>"


def _driver(device_dir: Path, sys_root: Path) -> str | None:
    """The kernel's name for the bound driver; UNKNOWN when the link exists but does not lead to a directory
    in this tree (a dangling or looping driver link proves nothing about the binding)."""
    link = device_dir / "driver"
    if not os.path.lexists(link):
        return None
    target = _inside(link, sys_root)
    if not os.path.islink(link) or target is None or not target.is_dir():
        return UNKNOWN
    return os.path.basename(os.path.normpath(os.readlink(link)))


def _attribute(path: Path) -> str | None:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _is_bridge(device_dir: Path) -> bool:
    return (_attribute(device_dir / "class") or "").lower().startswith("0x0604")


def _member_viable(entry: Path, sys_root: Path) -> bool:
    device_dir = _inside(entry, sys_root)
    if device_dir is None or not device_dir.is_dir():
        return False
    driver = _driver(device_dir, sys_root)
    if driver is None or (driver != UNKNOWN and (driver.startswith("vfio") or driver.endswith("vfio_pci"))):
        return True
    return driver == "pcieport" and _is_bridge(device_dir)


def _node_ok(node: Path, dev_root: Path) -> bool:
    try:
        st_ = os.lstat(node)
    except OSError:
        return False
    if not (stat.S_ISCHR(st_.st_mode) or stat.S_ISREG(st_.st_mode)):
        return False
    return Path(os.path.realpath(node.parent)).is_relative_to(os.path.realpath(dev_root))


class Tree:
    """The roots of one (possibly corrupted) board, read only through the oracle. The tree does not change
    while a Tree looks at it, so what it reads about a group is kept."""

    def __init__(self, sys_root: Path, dev_root: Path) -> None:
        self.sys = sys_root
        self.dev = dev_root
        self._members: dict[int, dict[str, Path] | str] = {}

    @property
    def noiommu(self) -> bool:
        value = _attribute(self.sys / "module/vfio/parameters/enable_unsafe_noiommu_mode")
        return value in ("Y", "y", "1")

    def group_dir(self, number: int) -> Path:
        return self.sys / "kernel/iommu_groups" / str(number)

    def group_node(self, number: int) -> Path:
        noiommu = self.noiommu or _attribute(self.group_dir(number) / "name") == "vfio-noiommu"
        return self.dev / "vfio" / (f"noiommu-{number}" if noiommu else str(number))

    def group_members(self, number: int) -> dict[str, Path]:
        """name → the member's device directory, for a group whose member list is a real directory and whose
        every member is viable; AssertionError otherwise."""
        if number not in self._members:
            try:
                self._members[number] = self._read_members(number)
            except AssertionError as exc:
                self._members[number] = str(exc)
        members = self._members[number]
        assert isinstance(members, dict), members
        return members

    def _read_members(self, number: int) -> dict[str, Path]:
        gdir = self.group_dir(number)
        assert not os.path.islink(gdir) and gdir.is_dir(), f"group {number} is not a real directory"
        devices = gdir / "devices"
        assert not os.path.islink(devices) and devices.is_dir(), f"group {number} has no member directory"
        members = {}
        for name in sorted(os.listdir(devices)):
            assert _member_viable(devices / name, self.sys), f"group {number}: member {name} is not viable"
            members[name] = _inside(devices / name, self.sys)
        assert members, f"group {number} has no members"
        return members

    def assert_group_usable(self, number: int) -> None:
        self.group_members(number)
        assert _node_ok(self.group_node(number), self.dev), f"{self.group_node(number)} is not a usable node"
        assert _node_ok(self.dev / "vfio/vfio", self.dev), "/dev/vfio/vfio is not a usable node"

    def assert_in_group(self, name: str, device_dir: Path, number: int) -> None:
        """Both sides agree: the device's link leads to the group directory and the group lists the device."""
        link = device_dir / "iommu_group"
        assert os.path.islink(link) and os.path.basename(os.readlink(link)) == str(number)
        assert _real(link) == _real(self.group_dir(number)), f"{name}: iommu_group leads elsewhere"
        assert self.group_members(number).get(name) == device_dir, f"group {number} does not list {name}"

    def device_dir(self, bus: str, name: str) -> Path:
        device_dir = _inside(self.sys / "bus" / bus / "devices" / name, self.sys)
        assert device_dir is not None and device_dir.is_dir(), f"{name}: its bus entry leads nowhere in the tree"
        assert device_dir.name == name, f"{name}: its bus entry leads to {device_dir.name}"
        return device_dir


def assert_safe_to_hand_out(tree: Tree, dev: PoolDevice) -> None:
    """A healthy device, read again with the oracle's strict rules."""
    assert dev.id not in NEVER_ADVERTISED
    assert dev.iommu_groups, f"{dev.id} is healthy without an IOMMU group"
    (number,) = dev.iommu_groups
    tree.assert_group_usable(number)
    members = tree.group_members(number)
    if dev.container is not None:
        cdir = tree.device_dir("fsl-mc", dev.container)
        assert _DPRC.match(cdir.parent.name) and not _DPRC.match(cdir.parent.parent.name), "not a root child"
        assert _driver(cdir, tree.sys) == "vfio-fsl-mc"
        tree.assert_in_group(dev.container, cdir, number)
        for obj in os.listdir(cdir):
            if _OBJECT.match(obj) and not os.path.islink(cdir / obj) and (cdir / obj).is_dir():
                assert _driver(cdir / obj, tree.sys) == "vfio-fsl-mc", f"{dev.id}: {obj} is not vfio-bound"
    else:
        for address in dev.pci_addresses:
            fdir = tree.device_dir("pci", address)
            assert _driver(fdir, tree.sys) == "vfio-pci", f"{address} is not bound to vfio-pci"
            tree.assert_in_group(address, fdir, number)
        functions = {name for name, path in members.items() if not _is_bridge(path)}
        assert functions == set(dev.pci_addresses), f"{dev.id} splits group {number}: {sorted(functions)}"


def assert_allocation_exact(
    tree: Tree, pool: ResourcePool, devices: list[PoolDevice], got: ContainerAllocation
) -> None:
    """Exactly /dev/vfio/vfio and the allocated groups' nodes, host paths inside the dev root, nothing else."""
    expected = {(str(tree.dev / "vfio/vfio"), "/dev/vfio/vfio", "rw")}
    for dev in devices:
        for number in dev.iommu_groups:
            expected.add((str(tree.group_node(number)), f"/dev/vfio/{number}", "rw"))
    specs = [(n.host_path, n.container_path, n.permissions) for n in got.devices]
    assert len(specs) == len(set(specs)) and set(specs) == expected, f"{pool.resource_name}: {specs} != {expected}"
    dev_root = os.path.realpath(tree.dev)
    for host, _, _ in specs:
        assert os.path.realpath(host).startswith(dev_root + os.sep), f"{host} is outside {tree.dev}"
        assert "dprc" not in host
    for value in got.envs.values():
        assert "/dev/" not in value


def assert_invariants(tree: Tree, inv: Inventory, pools: dict[str, ResourcePool]) -> tuple[int, int]:
    """Every healthy device is safe and allocates exactly; every unhealthy or unknown one is refused;
    no address, container or group is in two devices. Returns (healthy, refused) counts."""
    taken: list[str] = []
    healthy = refused = 0
    for pool in pools.values():
        good = [d for d in pool.devices if d.healthy]
        for dev in pool.devices:
            taken += [*dev.pci_addresses, *([dev.container] if dev.container else [])]
            taken += [f"group {n}" for n in dev.iommu_groups]
            if not dev.healthy:
                with pytest.raises(AllocationError):
                    allocate(pool, [dev.id])
                refused += 1
                continue
            assert_safe_to_hand_out(tree, dev)
            assert_allocation_exact(tree, pool, [dev], allocate(pool, [dev.id]))
            healthy += 1
        if good and pool.device_type == "pci":
            assert_allocation_exact(tree, pool, good, allocate(pool, [d.id for d in reversed(good)]))
        if pool.devices:
            chosen = preferred_allocation(pool, [d.id for d in pool.devices], [], len(good))
            assert set(chosen) == {d.id for d in good}  # healthy first: the whole healthy set
        with pytest.raises(AllocationError) as unknown:
            allocate(pool, ["dprc.1", "../../dev/dprc.1"])
        assert type(unknown.value) is UnknownDevices
    assert len(taken) == len(set(taken)), f"something is in two devices: {sorted(taken)}"
    return healthy, refused


# ------------------------------------------------------------------------------------------- corruptions
@dataclass
class Scene:
    board: SampleBoard
    outside: Path  # a directory next to the board, outside both roots

    def device_dir(self, name: str) -> Path:
        return self.board.mc_dir(name) if name in self.board.mc else self.board.pci_dir(name)

    def bus(self, name: str) -> str:
        return "fsl-mc" if name in self.board.mc else "pci"

    def group_of(self, name: str) -> int:
        obj = self.board.mc.get(name)
        group = obj.group if obj is not None else self.board.pci[name].group
        return 20 if group is None else group


def _relink(link: Path, target: str | Path) -> None:
    if os.path.lexists(link):
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        else:
            link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def _relative(link: Path, target: Path) -> str:
    return os.path.relpath(target, link.parent)


def _replace(path: Path, kind: str) -> None:
    """Make an attribute unreadable the honest way (root reads every mode): a directory, a FIFO (a read would
    block), bytes that are not text, or a value in the wrong format."""
    if os.path.lexists(path):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00\x01")
    elif kind == "format":
        path.write_text("0xzz12\n")


def _write_anew(path: Path, text: str) -> None:
    """Write a fresh file: an earlier step may have left a FIFO there, and opening that would block."""
    _replace(path, "none")
    path.write_text(text)


def _copy_outside(scene: Scene, name: str) -> Path:
    """A copy of a device directory outside the tree, whose links still look right by their names."""
    copy = scene.outside / "devices" / name
    if not copy.exists():
        copy.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(scene.device_dir(name)), str(copy)], check=True)
    return copy


def group_link_dangling(scene: Scene, name: str) -> None:
    link = scene.device_dir(name) / "iommu_group"
    _relink(link, _relative(link, scene.board.sys / "kernel/iommu_groups/999"))


def group_link_other(scene: Scene, args: tuple[str, int]) -> None:
    name, group = args
    link = scene.device_dir(name) / "iommu_group"
    _relink(link, _relative(link, scene.board.sys / "kernel/iommu_groups" / str(group)))


def group_link_outside(scene: Scene, name: str) -> None:
    """A group of the same number outside the tree that lists the device: only the tree's own group counts."""
    number = scene.group_of(name)
    fake = scene.outside / "kernel/iommu_groups" / str(number)
    (fake / "devices").mkdir(parents=True, exist_ok=True)
    _relink(fake / "devices" / name, scene.device_dir(name))
    _relink(scene.device_dir(name) / "iommu_group", fake)


def group_link_loop(scene: Scene, name: str) -> None:
    _relink(scene.device_dir(name) / "iommu_group", "iommu_group")


def group_link_not_a_number(scene: Scene, name: str) -> None:
    number = scene.group_of(name)
    fake = scene.board.sys / "kernel/iommu_groups" / f"{number}a"
    (fake / "devices").mkdir(parents=True, exist_ok=True)
    _relink(fake / "devices" / name, _relative(fake / "devices" / name, scene.device_dir(name)))
    link = scene.device_dir(name) / "iommu_group"
    _relink(link, _relative(link, fake))


def member_removed(scene: Scene, name: str) -> None:
    entry = scene.board.sys / "kernel/iommu_groups" / str(scene.group_of(name)) / "devices" / name
    if os.path.lexists(entry):
        entry.unlink()


def member_foreign(scene: Scene, args: tuple[int, str]) -> None:
    """A group lists a device that belongs elsewhere (for the PF: a kernel-bound one)."""
    group, name = args
    entry = scene.board.sys / "kernel/iommu_groups" / str(group) / "devices" / name
    _relink(entry, _relative(entry, scene.device_dir(name)))


def member_redirected(scene: Scene, args: tuple[str, str]) -> None:
    """A group's entry for one device leads to another device's directory."""
    name, other = args
    entry = scene.board.sys / "kernel/iommu_groups" / str(scene.group_of(name)) / "devices" / name
    _relink(entry, _relative(entry, scene.device_dir(other)))


def member_outside(scene: Scene, name: str) -> None:
    entry = scene.board.sys / "kernel/iommu_groups" / str(scene.group_of(name)) / "devices" / name
    _relink(entry, _copy_outside(scene, name))


def member_dangling(scene: Scene, group: int) -> None:
    _relink(scene.board.sys / "kernel/iommu_groups" / str(group) / "devices/0001:0f:00.0", "../../../../nowhere")


def member_loop(scene: Scene, group: int) -> None:
    _relink(scene.board.sys / "kernel/iommu_groups" / str(group) / "devices/0001:0e:00.0", "0001:0e:00.0")


def driver_dangling(scene: Scene, args: tuple[str, str]) -> None:
    """A driver link whose name says vfio but which leads nowhere: the binding cannot be verified."""
    name, driver = args
    link = scene.device_dir(name) / "driver"
    _relink(link, _relative(link, scene.board.sys / "bus/gone/drivers" / driver))


def driver_outside(scene: Scene, args: tuple[str, str]) -> None:
    name, driver = args
    fake = scene.outside / "drivers" / driver
    fake.mkdir(parents=True, exist_ok=True)
    _relink(scene.device_dir(name) / "driver", fake)


def driver_loop(scene: Scene, name: str) -> None:
    _relink(scene.device_dir(name) / "driver", "driver")


def driver_set(scene: Scene, args: tuple[str, str | None]) -> None:
    """A legitimate bind or unbind, as the kernel leaves it (mixes with the corruptions)."""
    name, driver = args
    if driver is None:
        scene.board.unbind(name)
    else:
        scene.board.bind(name, driver)


def attribute_unreadable(scene: Scene, args: tuple[str, str, str]) -> None:
    name, attribute, kind = args
    _replace(scene.device_dir(name) / attribute, kind)


def group_name_unreadable(scene: Scene, args: tuple[int, str]) -> None:
    group, kind = args
    _replace(scene.board.sys / "kernel/iommu_groups" / str(group) / "name", kind)


def group_named_noiommu(scene: Scene, group: int) -> None:
    """One group says it is a noiommu group: its node must then be noiommu-N, which is not there."""
    _write_anew(scene.board.sys / "kernel/iommu_groups" / str(group) / "name", "vfio-noiommu\n")


def group_devices_not_a_directory(scene: Scene, group: int) -> None:
    devices = scene.board.sys / "kernel/iommu_groups" / str(group) / "devices"
    shutil.rmtree(devices)
    devices.write_text("")


def group_dir_moved_outside(scene: Scene, group: int) -> None:
    gdir = scene.board.sys / "kernel/iommu_groups" / str(group)
    target = scene.outside / "moved-groups" / str(group)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(gdir), str(target))
    gdir.symlink_to(target)


def node_replaced(scene: Scene, args: tuple[int, str]) -> None:
    """The group's /dev/vfio node is missing, a directory, a FIFO, or a symlink (out of the dev root, to
    another group's node, or to the restool node /dev/dprc.1)."""
    group, kind = args
    node = scene.board.group_node(group)
    if os.path.lexists(node):
        node.unlink()
    if kind == "directory":
        node.mkdir()
    elif kind == "fifo":
        os.mkfifo(node)
    elif kind == "symlink-out":
        outside = scene.outside / "nodes" / node.name
        outside.parent.mkdir(parents=True, exist_ok=True)
        outside.write_text("")
        node.symlink_to(outside)
    elif kind == "symlink-other":
        node.symlink_to("20" if group != 20 else "21")
    elif kind == "symlink-dprc":
        node.symlink_to("../dprc.1")


def vfio_node_replaced(scene: Scene, kind: str) -> None:
    node = scene.board.dev / "vfio/vfio"
    node.unlink()
    if kind == "directory":
        node.mkdir()
    elif kind == "symlink-out":
        outside = scene.outside / "vfio-container"
        outside.write_text("")
        node.symlink_to(outside)


def vfio_dir_moved_outside(scene: Scene, _: object) -> None:
    """/dev/vfio itself a symlink out of the dev root: none of its nodes may be handed out."""
    vfio = scene.board.dev / "vfio"
    target = scene.outside / "dev-vfio"
    shutil.move(str(vfio), str(target))
    vfio.symlink_to(target)


def bus_entry(scene: Scene, args: tuple[str, str]) -> None:
    """A bus entry dangling, looping, leading out of the tree, or aliasing another device's directory."""
    name, kind = args
    link = scene.board.sys / "bus" / scene.bus(name) / "devices" / name
    if kind == "dangling":
        _relink(link, "../../../devices/nowhere/" + name)
    elif kind == "loop":
        _relink(link, name)
    elif kind == "outside":
        _relink(link, _copy_outside(scene, name))
    else:  # an alias: a new name that leads to this device's directory
        alias = "dprc.9" if name in scene.board.mc else "0001:01:00.7"
        alias_link = link.parent / alias
        _relink(alias_link, _relative(alias_link, scene.device_dir(name)))


def foreign_object_in_container(scene: Scene, args: tuple[str, str]) -> None:
    """A container holds an object bound to a kernel driver that its group does not even list."""
    container, driver = args
    obj = scene.board.mc_dir(container) / "dpni.77"
    obj.mkdir()
    drivers = scene.board.sys / "bus/fsl-mc/drivers" / driver
    drivers.mkdir(parents=True, exist_ok=True)
    (obj / "driver").symlink_to(_relative(obj / "driver", drivers))


def noiommu_parameter(scene: Scene, kind: str) -> None:
    path = scene.board.sys / "module/vfio/parameters/enable_unsafe_noiommu_mode"
    if kind == "Y":
        _write_anew(path, "Y\n")  # noiommu claimed, but only N nodes exist
    else:
        _replace(path, kind)


def bus_directory_replaced(scene: Scene, bus: str) -> None:
    devices = scene.board.sys / "bus" / bus / "devices"
    shutil.rmtree(devices)
    devices.symlink_to("devices")  # a loop where the bus lists its devices


PCI_NAMES = ["0001:00:00.0", "0001:01:00.0", "0001:01:00.1", "0001:01:00.2", "0001:01:00.3", "0001:01:00.4"]
MC_NAMES = ["dprc.1", "dprc.2", "dprc.3", "dprc.4", "dpni.1", "dpmcp.3", "dpseci.0"]
DEVICES = PCI_NAMES + MC_NAMES
GROUPS = [2, 10, 11, 19, 20, 21, 22]
VFIO_GROUPS = [10, 11, 20, 21, 22]
UNREADABLE = ["directory", "fifo", "binary", "format"]


@dataclass(frozen=True)
class Corruption:
    name: str
    apply: Callable[[Scene, Any], None]
    targets: list[Any]
    reported: bool  # discovery must list a problem for it (the rest show only as health or viability)

    def spread(self, count: int = 4) -> list[Any]:
        """`count` targets spread over the list: the deterministic cases."""
        step = max(1, len(self.targets) // count)
        return self.targets[::step][:count]


def _pairs(a: list[Any], b: list[Any]) -> list[tuple[Any, Any]]:
    return list(itertools.product(a, b))


CORRUPTIONS = [
    Corruption("group link dangling", group_link_dangling, DEVICES, True),
    Corruption("group link to another group", group_link_other, _pairs(DEVICES, GROUPS), False),
    Corruption("group link outside the tree", group_link_outside, DEVICES, True),
    Corruption("group link loop", group_link_loop, DEVICES, True),
    Corruption("group link not a number", group_link_not_a_number, DEVICES, True),
    Corruption("member removed", member_removed, DEVICES, False),
    Corruption("foreign member", member_foreign, _pairs(GROUPS, DEVICES), False),
    Corruption("member redirected", member_redirected, _pairs(DEVICES, DEVICES), False),
    Corruption("member outside the tree", member_outside, DEVICES, True),
    Corruption("member dangling", member_dangling, GROUPS, True),
    Corruption("member loop", member_loop, GROUPS, True),
    Corruption("driver link dangling", driver_dangling, _pairs(DEVICES, ["vfio-pci", "vfio-fsl-mc"]), True),
    Corruption("driver link outside", driver_outside, _pairs(DEVICES, ["vfio-pci", "vfio-fsl-mc"]), True),
    Corruption("driver link loop", driver_loop, DEVICES, True),
    Corruption(
        "rebinding",
        driver_set,
        _pairs(PCI_NAMES, ["vfio-pci", "i40e", None]) + _pairs(MC_NAMES, ["vfio-fsl-mc", "fsl_mc_allocator", None]),
        False,
    ),
    Corruption(
        "unreadable attribute",
        attribute_unreadable,
        list(itertools.product(PCI_NAMES, ["vendor", "device", "class"], UNREADABLE)),
        True,
    ),
    Corruption("unreadable group name", group_name_unreadable, _pairs(GROUPS, ["directory", "fifo", "binary"]), True),
    Corruption("group says noiommu", group_named_noiommu, VFIO_GROUPS, False),
    Corruption("group devices not a directory", group_devices_not_a_directory, GROUPS, True),
    Corruption("group moved outside", group_dir_moved_outside, GROUPS, True),
    Corruption(
        "group node replaced",
        node_replaced,
        _pairs(VFIO_GROUPS, ["missing", "directory", "fifo", "symlink-out", "symlink-other", "symlink-dprc"]),
        False,
    ),
    Corruption("vfio node replaced", vfio_node_replaced, ["missing", "directory", "symlink-out"], False),
    Corruption("/dev/vfio outside", vfio_dir_moved_outside, [None], True),
    Corruption("bus entry", bus_entry, _pairs(DEVICES, ["dangling", "loop", "outside", "alias"]), True),
    Corruption(
        "foreign object in a container",
        foreign_object_in_container,
        _pairs(["dprc.2", "dprc.3"], ["fsl_dpaa2_eth", "fsl_mc_dpio"]),
        False,
    ),
    Corruption("noiommu parameter", noiommu_parameter, ["Y", "directory", "fifo", "binary"], False),
    Corruption("bus devices a loop", bus_directory_replaced, ["pci", "fsl-mc"], True),
]
_BY_NAME = {c.name: c for c in CORRUPTIONS}


@pytest.fixture(scope="module")
def templates() -> Iterator[dict[bool, SampleBoard]]:
    """One clean board per mode, built once; each case works on a copy (`cp -a` keeps nodes and links)."""
    base = Path(tempfile.mkdtemp(prefix=f"vnfio-hostile-tpl-{os.getpid()}-", dir=scratch_base()))
    try:
        yield {mode: build_sample_board(base / f"board-{mode}", noiommu=mode) for mode in (False, True)}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _scene(template: SampleBoard, work: Path) -> Scene:
    board_root = work / "board"
    subprocess.run(["cp", "-a", str(template.root), str(board_root)], check=True)
    board = SampleBoard(board_root, noiommu=template.noiommu)
    board.mc, board.pci = dict(template.mc), dict(template.pci)
    (work / "outside").mkdir()
    return Scene(board, work / "outside")


def _check(scene: Scene) -> tuple[Inventory, int, int]:
    """Discover, build every config fresh and sticky (devices kubelet knew from the clean board), and hold
    the invariants over all of them."""
    tree = Tree(scene.board.sys, scene.board.dev)
    inv = discover(scene.board.sys, scene.board.dev)
    healthy = refused = 0
    for configs in CONFIGS.values():
        fresh = build_pools(configs, inv)
        clean = build_pools(configs, CLEAN_INVENTORIES[scene.board.noiommu])
        sticky = build_pools(configs, inv, previous=clean.pools)
        for built in (fresh, sticky):
            h, r = assert_invariants(tree, inv, built.pools)
            healthy, refused = healthy + h, refused + r
    return inv, healthy, refused


CLEAN_INVENTORIES: dict[bool, Inventory] = {}
FIGURES: dict[str, int] = {"single": 0, "combined": 0, "healthy checked": 0, "refusals checked": 0}


@pytest.fixture(scope="module", autouse=True)
def _print_figures() -> Iterator[None]:
    """The reliability figures of this file, printed once it is done (run pytest with -s to see them)."""
    yield
    print(
        f"\nFIGURE sysfs: {FIGURES['single']} single corruptions and {FIGURES['combined']} random combinations "
        f"of {len(CORRUPTIONS)} kinds; {FIGURES['healthy checked']} healthy devices checked against the oracle "
        f"and allocated, {FIGURES['refusals checked']} unhealthy ones refused"
    )


@pytest.fixture(scope="module", autouse=True)
def _clean_inventories(templates: dict[bool, SampleBoard]) -> None:
    for mode, board in templates.items():
        CLEAN_INVENTORIES[mode] = discover(board.sys, board.dev)


def _single_cases() -> list[Any]:
    """Every corruption against a spread of its targets (deterministic, so each kind is always exercised)."""
    return [pytest.param(c.name, t, id=f"{c.name}-{t}") for c in CORRUPTIONS for t in c.spread()]


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize(("name", "target"), _single_cases())
def test_each_corruption_alone_is_reported_and_nothing_unsafe_is_handed_out(
    templates: dict[bool, SampleBoard], scratch: Path, name: str, target: Any
) -> None:
    corruption = _BY_NAME[name]
    scene = _scene(templates[False], scratch)
    corruption.apply(scene, target)
    inv, healthy, refused = _check(scene)
    if corruption.reported:
        assert inv.problems, f"{name} {target}: discovery reported nothing"
    FIGURES["single"] += 1
    FIGURES["healthy checked"] += healthy
    FIGURES["refusals checked"] += refused


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    noiommu=st.booleans(),
    steps=st.lists(
        st.one_of([st.tuples(st.just(c.name), st.sampled_from(c.targets)) for c in CORRUPTIONS]), min_size=1, max_size=5
    ),
)
def test_random_corruptions_never_crash_and_never_hand_out_anything_unsafe(
    templates: dict[bool, SampleBoard], noiommu: bool, steps: list[tuple[str, Any]]
) -> None:
    with tempfile.TemporaryDirectory(prefix=f"vnfio-hostile-{os.getpid()}-", dir=scratch_base()) as work:
        scene = _scene(templates[noiommu], Path(work))
        for name, target in steps:
            try:
                _BY_NAME[name].apply(scene, target)
            except (OSError, KeyError, subprocess.CalledProcessError):
                continue  # an earlier step already removed what this one would corrupt
        _, healthy, refused = _check(scene)
    FIGURES["combined"] += 1
    FIGURES["healthy checked"] += healthy
    FIGURES["refusals checked"] += refused


def test_a_clean_board_passes_the_oracle(templates: dict[bool, SampleBoard]) -> None:
    """The oracle is not vacuous: on clean boards it accepts every device the pools hand out."""
    for board in templates.values():
        inv = discover(board.sys, board.dev)
        assert inv.problems == ()
        built = build_pools(CONFIGS["sample"], inv)
        healthy, refused = assert_invariants(Tree(board.sys, board.dev), inv, built.pools)
        assert (healthy, refused) == (5, 0)  # dprc.2, dprc.3, two VFs, group 22


# ------------------------------------------------------------------------------------ 10,000 devices
BIG_PFS = 40
VFS_PER_PF = 250
PORT = "devices/pci0002:00/0002:00:00.0"


@dataclass(frozen=True)
class BigBoard:
    sys: Path
    dev: Path
    healthy: frozenset[str]
    unhealthy: frozenset[str]
    kernel_bound: frozenset[str]
    numa: dict[str, int]
    pf_of: dict[str, str]


def build_big_board(root: Path) -> BigBoard:
    """40 i40e PFs with 250 VFs each, one group per function, written straight to disk: the attribute files
    are hard links to a handful of shared files, so 10,000 devices cost inodes but hardly any space. Every
    100th VF stays on the kernel's iavf driver and every 97th has no /dev/vfio node."""
    sys_root, dev_root = root / "sys", root / "dev"
    port = sys_root / PORT
    for d in ("bus/pci/devices", "kernel/iommu_groups", "module/vfio/parameters", "shared"):
        (sys_root / d).mkdir(parents=True)
    for drv in ("vfio-pci", "i40e", "iavf"):
        (sys_root / "bus/pci/drivers" / drv).mkdir(parents=True)
    (sys_root / "module/vfio/parameters/enable_unsafe_noiommu_mode").write_text("N\n")
    shared = sys_root / "shared"
    for name, value in {"8086": "0x8086", "154c": "0x154c", "1572": "0x1572", "class": "0x020000"}.items():
        (shared / name).write_text(value + "\n")
    for node in (0, 1):
        (shared / f"numa{node}").write_text(f"{node}\n")
    port.mkdir(parents=True)
    (dev_root / "vfio").mkdir(parents=True)
    os.mknod(dev_root / "vfio/vfio", stat.S_IFCHR | 0o666, os.makedev(10, 196))
    healthy, unhealthy, kernel_bound = set(), set(), set()
    numa: dict[str, int] = {}
    pf_of: dict[str, str] = {}
    group = 1000

    def function(address: str, device: str, driver: str, node: int, physfn: str | None) -> None:
        nonlocal group
        fdir = port / address
        fdir.mkdir()
        for attribute, source in (("vendor", "8086"), ("device", device), ("class", "class")):
            os.link(shared / source, fdir / attribute)
        os.link(shared / f"numa{node}", fdir / "numa_node")
        os.symlink(f"../../../../bus/pci/drivers/{driver}", fdir / "driver")
        if physfn:
            os.symlink(f"../{physfn}", fdir / "physfn")
        os.symlink(f"../../../{PORT}/{address}", sys_root / "bus/pci/devices" / address)
        gdir = sys_root / "kernel/iommu_groups" / str(group)
        (gdir / "devices").mkdir(parents=True)
        os.symlink(f"../../../../kernel/iommu_groups/{group}", fdir / "iommu_group")
        os.symlink(f"../../../../{PORT}/{address}", gdir / "devices" / address)
        group += 1

    for p in range(BIG_PFS):
        pf = f"0002:{p + 1:02x}:00.0"
        function(pf, "1572", "i40e", p % 2, None)
        (port / pf / "net" / f"ens{p}").mkdir(parents=True)
        for i in range(1, VFS_PER_PF + 1):
            vf = f"0002:{p + 1:02x}:{i // 8:02x}.{i % 8}"
            number = group
            index = p * VFS_PER_PF + i
            driver = "iavf" if index % 100 == 0 else "vfio-pci"
            function(vf, "154c", driver, p % 2, pf)
            numa[vf], pf_of[vf] = p % 2, pf
            if driver == "iavf":
                kernel_bound.add(vf)
            elif index % 97 == 0:
                unhealthy.add(vf)
            else:
                os.mknod(dev_root / "vfio" / str(number), stat.S_IFCHR | 0o600, os.makedev(243, number % 256))
                healthy.add(vf)
    return BigBoard(sys_root, dev_root, frozenset(healthy), frozenset(unhealthy), frozenset(kernel_bound), numa, pf_of)


@pytest.mark.timeout(120)
def test_ten_thousand_devices_are_discovered_and_handed_out_exactly(scratch: Path) -> None:
    big = build_big_board(scratch)
    assert len(big.healthy | big.unhealthy | big.kernel_bound) == BIG_PFS * VFS_PER_PF == 10_000
    inv = discover(big.sys, big.dev)
    assert inv.problems == ()
    assert len(inv.pci) == 10_000 + BIG_PFS and len(inv.groups) == 10_000 + BIG_PFS
    pools = build_pools(CONFIGS["sample"], inv).pools
    pool = pools["intel.com/intel_vf"]
    assert {d.id for d in pool.devices if d.healthy} == big.healthy
    assert {d.id for d in pool.devices if not d.healthy} == big.unhealthy
    assert {e for e, _ in pool.excluded} == big.kernel_bound
    assert all(d.numa_node == big.numa[d.id] and d.pfs == (big.pf_of[d.id],) for d in pool.devices)
    # Sticky rebuild over the same inventory changes nothing: a rescan of a quiet big node is a no-op.
    assert build_pools(CONFIGS["sample"], inv, previous=pools).pools == pools
    tree = Tree(big.sys, big.dev)
    by_id = {d.id: d for d in pool.devices}
    sample = sorted(big.healthy)[::50]
    for device_id in sample:
        assert_allocation_exact(tree, pool, [by_id[device_id]], allocate(pool, [device_id]))
    many = sorted(big.healthy)[:1000]
    assert_allocation_exact(tree, pool, [by_id[i] for i in many], allocate(pool, many))
    for device_id in sorted(big.unhealthy)[:20]:
        with pytest.raises(AllocationError):
            allocate(pool, [device_id])
    # GetPreferredAllocation over the whole pool: 8 healthy VFs, one NUMA node, one PF.
    chosen = preferred_allocation(pool, sorted(by_id), [], 8)
    assert len(chosen) == 8 and set(chosen) <= big.healthy
    assert len({big.numa[i] for i in chosen}) == 1 and len({big.pf_of[i] for i in chosen}) == 1
    FIGURES["tree size"] = len(inv.pci)
    print(f"\nFIGURE sysfs: a {len(inv.pci)}-function tree ({len(big.healthy)} healthy VFs) discovered and checked")
