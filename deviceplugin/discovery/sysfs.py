"""Careful reads of a sysfs tree: every read either returns a value or raises `SysfsError` with a message
an operator can act on, so discovery can skip one bad entry and keep going.

sysfs on a real kernel is well formed, but the plugin also runs against generated trees, hostPath mounts of
the wrong thing and half-removed devices during hot-unplug; a dangling link or a symlink loop must cost one
device, never the daemon.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\Z")
_GROUP_NUMBER = re.compile(r"^[0-9]+\Z")


class SysfsError(Exception):
    """One entry of the tree could not be read or does not look like the kernel's."""


def is_pci_address(name: str) -> bool:
    return bool(_PCI_ADDRESS.match(name))


def read_value(path: Path) -> str | None:
    """The stripped content of a sysfs attribute; None when it does not exist."""
    try:
        # A FIFO or device where an attribute should be would block or misbehave on read: refuse it.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise SysfsError(f"cannot read {path}: not a regular file")
        return path.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise SysfsError(f"cannot read {path}: {_reason(exc)}") from exc


def link_name(path: Path) -> str | None:
    """The last component of a symlink's target (how the kernel names `driver`, `iommu_group`, `physfn`);
    None when the link does not exist. The target itself is not followed."""
    try:
        target = os.readlink(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SysfsError(f"cannot read link {path}: {_reason(exc)}") from exc
    name = os.path.basename(os.path.normpath(target))
    if not name or name in (".", ".."):
        raise SysfsError(f"link {path} points at {target!r}, which names nothing")
    return name


def driver_name(device_dir: Path, sysfs_root: Path) -> str | None:
    """The driver a device is bound to (the basename of its `driver` link, as the kernel names it); None when
    unbound. A link that dangles, loops or leads out of the tree proves no binding: it raises, so a device
    whose driver cannot be verified is never taken for vfio-bound."""
    link = device_dir / "driver"
    name = link_name(link)
    if name is not None:
        try:
            resolve_inside(link, sysfs_root)
        except SysfsError as exc:
            raise SysfsError(f"driver link {link} ({name}) does not lead to a driver: {exc}") from exc
    return name


def resolve_inside(path: Path, root: Path) -> Path:
    """Follow `path` to a real directory inside `root`; raise for dangling links, loops and escapes."""
    try:
        resolved = _real_path(path)
    except FileNotFoundError as exc:
        raise SysfsError(f"{path} is a dangling link") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SysfsError(f"{path} is a symlink loop") from exc
        raise SysfsError(f"cannot resolve {path}: {_reason(exc)}") from exc
    if not resolved.is_relative_to(_real_root(root)):
        raise SysfsError(f"{path} points outside {root} (to {resolved})")
    if not resolved.is_dir():
        raise SysfsError(f"{path} is not a directory")
    return resolved


def _real_path(path: Path) -> Path:
    """Where `path` leads with every symlink followed; OSError (ENOENT: dangling, ELOOP: a loop) otherwise.

    The kernel resolves the whole path in one open(O_PATH) and /proc/self/fd names where it landed, where
    os.path.realpath lstats every component in Python: a rescan of a node with thousands of functions
    resolves tens of thousands of links, and this keeps it fast. Without /proc, realpath does it."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except FileNotFoundError:
        return Path(os.path.realpath(path, strict=True))
    finally:
        os.close(fd)


def _real_root(root: Path) -> Path:
    try:
        return _real_path(root)
    except OSError:
        return root.resolve()


def group_number(device_dir: Path, sysfs_root: Path) -> int | None:
    """The IOMMU group of a device: the basename of its `iommu_group` link, as DPDK and sriov-dp read it.

    The link must also land on `kernel/iommu_groups/<N>` of this tree, so a group that points elsewhere
    is reported rather than trusted."""
    link = device_dir / "iommu_group"
    name = link_name(link)
    if name is None:
        return None
    if not _GROUP_NUMBER.match(name):
        raise SysfsError(f"{link} names group {name!r}, which is not a number")
    try:
        expected: Path | None = _real_path(sysfs_root / "kernel/iommu_groups" / name)
    except OSError:
        expected = None  # the group does not exist in this tree: the link cannot lead to it
    try:
        actual = _real_path(link)
    except OSError as exc:
        raise SysfsError(f"{link} does not lead to kernel/iommu_groups/{name}: {_reason(exc)}") from exc
    if actual != expected:
        raise SysfsError(f"{link} points at {actual}, not at kernel/iommu_groups/{name}")
    return int(name)


def subdirectories(path: Path) -> list[str]:
    """Names of real subdirectories (not symlinks), sorted: what DPDK's DT_DIR scan of a container sees."""
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SysfsError(f"cannot list {path}: {_reason(exc)}") from exc


def entries(path: Path) -> list[str]:
    """Every name in a directory, sorted; [] when the directory does not exist."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SysfsError(f"cannot list {path}: {_reason(exc)}") from exc


def device_node(path: Path, dev_root: Path) -> str | None:
    """`path` as a host path when it is a usable device node: a character device, or a regular file standing
    in for one in a generated tree. Symlinks and directories never count, and nothing outside `dev_root`."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SysfsError(f"cannot stat {path}: {_reason(exc)}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise SysfsError(f"{path} is a symlink, not a device node; ignored")
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise SysfsError(f"{path} is not a character device; ignored")
    try:
        real_parent = _real_path(path.parent)
    except OSError as exc:
        raise SysfsError(f"cannot resolve {path.parent}: {_reason(exc)}") from exc
    if not real_parent.is_relative_to(_real_root(dev_root)):
        raise SysfsError(f"{path} lies outside {dev_root}; ignored")
    return str(path)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
