"""Careful reads of a sysfs tree: every read either returns a value or raises `SysfsError` with a message
an operator can act on, so discovery can skip one bad entry and keep going.

sysfs on a real kernel is well formed, but the plugin also runs against generated trees, hostPath mounts of
the wrong thing and half-removed devices during hot-unplug; a dangling link or a symlink loop must cost one
device, never the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\Z")
_GROUP_NUMBER = re.compile(r"^[0-9]+\Z")


class SysfsError(Exception):
    """One entry of the tree could not be read or does not look like the kernel's."""


def is_pci_address(name: str) -> bool:
    return bool(_PCI_ADDRESS.match(name))


def read_value(path: str | Path) -> str | None:
    """The stripped content of a sysfs attribute; None when it does not exist."""
    try:
        # A FIFO or device where an attribute should be would block or misbehave on read: refuse it. Opened
        # non-blocking (a FIFO without a writer does not hang the open) and never as a controlling tty, then
        # checked on the descriptor: one path walk per attribute instead of two.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SysfsError(f"cannot read {path}: not a regular file")
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks).decode().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise SysfsError(f"cannot read {path}: {_reason(exc)}") from exc


def link_name(path: str | Path) -> str | None:
    """The last component of a symlink's target (how the kernel names `driver`, `iommu_group`, `physfn`);
    None when the link does not exist. The target itself is not followed."""
    found = _link(path)
    return found[0] if found is not None else None


def _link(path: str | Path) -> tuple[str, str] | None:
    """(the name a link's target ends in, the target as written); None when the link does not exist."""
    try:
        target = os.readlink(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SysfsError(f"cannot read link {path}: {_reason(exc)}") from exc
    name = os.path.basename(os.path.normpath(target))
    if not name or name in (".", ".."):
        raise SysfsError(f"link {path} points at {target!r}, which names nothing")
    return name, target


def driver_name(device_dir: str | Path, sysfs_root: str | Path) -> str | None:
    """The driver a device is bound to (the basename of its `driver` link, as the kernel names it); None when
    unbound. A link that dangles, loops or leads out of the tree proves no binding: it raises, so a device
    whose driver cannot be verified is never taken for vfio-bound."""
    link = f"{os.fspath(device_dir)}/driver"
    if _SCAN.active and link in _SCAN.drivers:
        return _SCAN.drivers[link]  # the group reader and the device's own reader both ask
    found = _link(link)
    if found is None:
        name = None
    else:
        name, target = found
        try:
            real_dir(link, sysfs_root, target=target)
        except SysfsError as exc:
            raise SysfsError(f"driver link {link} ({name}) does not lead to a driver: {exc}") from exc
    if _SCAN.active:
        _SCAN.drivers[link] = name
    return name


def resolve_inside(path: str | Path, root: str | Path) -> Path:
    """Follow `path` to a real directory inside `root`; raise for dangling links, loops and escapes."""
    return Path(real_dir(path, root))


def real_dir(path: str | Path, root: str | Path, *, target: str | None = None) -> str:
    """`resolve_inside` as a string (discovery's hot path: no Path objects for tens of thousands of links).
    `target`: the link's target when the caller has already read it."""
    path = os.fspath(path)
    resolved = _lexical(path, target)
    if resolved is None:
        try:
            resolved = _real_path(path, directory=True)
        except FileNotFoundError as exc:
            raise SysfsError(f"{path} is a dangling link") from exc
        except NotADirectoryError as exc:
            # O_DIRECTORY refused it: either it leads to a file, or a component on the way is one.
            if os.path.exists(path):
                raise SysfsError(f"{path} is not a directory") from exc
            raise SysfsError(f"{path} is a dangling link") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SysfsError(f"{path} is a symlink loop") from exc
            raise SysfsError(f"cannot resolve {path}: {_reason(exc)}") from exc
    real_root = _real_root(root)
    if resolved != real_root and not resolved.startswith(real_root.rstrip("/") + "/"):
        raise SysfsError(f"{path} points outside {os.fspath(root)} (to {resolved})")
    return resolved


def _real_path(path: str | Path, *, directory: bool = False) -> str:
    """Where `path` leads with every symlink followed; OSError (ENOENT: dangling, ELOOP: a loop, ENOTDIR with
    `directory` when it is no directory) otherwise.

    The kernel resolves the whole path in one open(O_PATH) and /proc/self/fd names where it landed, where
    os.path.realpath lstats every component in Python: a rescan of a node with thousands of functions
    resolves tens of thousands of links, and this keeps it fast. Without /proc, realpath does it."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0))
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        return os.path.realpath(path, strict=True)
    finally:
        os.close(fd)


def _real_root(root: str | Path) -> str:
    """The root's real path; asked for once per link, so remembered for the scan."""
    key = os.fspath(root)
    if _SCAN.active and key in _SCAN.reals:
        return _SCAN.reals[key]
    try:
        real = _real_path(key)
    except OSError:
        real = str(Path(root).resolve())
    if _SCAN.active:
        _SCAN.reals[key] = real
    return real


# ------------------------------------------------------------------------------------ per-scan shortcuts
class _Scan(threading.local):
    active = False
    dirs: dict[str, bool]  # a path → whether it is a directory and its own real path (checked once per scan)
    reals: dict[str, str]  # a path → its real path (roots and group directories, once per scan)
    drivers: dict[str, str | None]  # a device's `driver` link → the driver it names (verified), once per scan


_SCAN = _Scan()


@contextlib.contextmanager
def scan() -> Iterator[None]:
    """One discovery pass: links whose target is `../` steps followed by names are resolved by string operations
    against the link's own (already real) directory, and each target directory is checked once per pass.

    Sysfs links are all of that shape (`driver -> ../../../bus/pci/drivers/vfio-pci`), and thousands of them share
    a few targets, so a big node costs one readlink per link instead of a kernel path walk. The cache lives only
    for the pass: a driver unloaded between rescans is seen by the next one."""
    _SCAN.active, _SCAN.dirs, _SCAN.reals, _SCAN.drivers = True, {}, {}, {}
    try:
        yield
    finally:
        _SCAN.active, _SCAN.dirs, _SCAN.reals, _SCAN.drivers = False, {}, {}, {}


def _lexical(path: str, target: str | None = None) -> str | None:
    """The real directory `path` (a link in a real directory) leads to, by string operations; None when that
    cannot be decided that way (no scan, not a link, a target not of the `../../name/name` shape, a link whose own
    directory is not known to be real)."""
    if not _SCAN.active:
        return None
    if target is None:
        try:
            target = os.readlink(path)
        except OSError:
            return None
    parent = path.rpartition("/")[0]
    if target.startswith("/") or not _known_real_dir(parent):
        return None
    ups = 0
    while target.startswith("../", ups * 3):
        ups += 1
    rest = target[ups * 3 :]
    # Only plain names after the `../` steps: a `.`, `..` or empty component would need the kernel's walk.
    if not rest or f"/{rest}/".find("/./") >= 0 or f"/{rest}/".find("/../") >= 0 or "//" in rest or rest == "..":
        return None
    pieces = parent.rsplit("/", ups)
    if len(pieces) <= ups:
        return None
    candidate = f"{pieces[0]}/{rest}"
    return candidate if _known_real_dir(candidate) else None


def _known_real_dir(path: str) -> bool:
    """Whether `path` is a directory and its own real path (no symlink on the way), once per scan."""
    known = _SCAN.dirs.get(path)
    if known is None:
        try:
            known = _real_path(path, directory=True) == path
        except OSError:
            known = False
        _SCAN.dirs[path] = known
    return known


def group_number(device_dir: str | Path, sysfs_root: str | Path) -> int | None:
    """The IOMMU group of a device: the basename of its `iommu_group` link, as DPDK and sriov-dp read it.

    The link must also land on `kernel/iommu_groups/<N>` of this tree, so a group that points elsewhere
    is reported rather than trusted."""
    link = f"{os.fspath(device_dir)}/iommu_group"
    found = _link(link)
    if found is None:
        return None
    name, target = found
    if not _GROUP_NUMBER.match(name):
        raise SysfsError(f"{link} names group {name!r}, which is not a number")
    group_dir = f"{os.fspath(sysfs_root)}/kernel/iommu_groups/{name}"
    try:
        expected: str | None = _real_path(group_dir) if not _SCAN.active else _scan_real(group_dir)
    except OSError:
        expected = None  # the group does not exist in this tree: the link cannot lead to it
    lexical = _lexical(link, target)
    if lexical is not None and lexical == expected:
        return int(name)
    try:
        actual = _real_path(link)
    except OSError as exc:
        raise SysfsError(f"{link} does not lead to kernel/iommu_groups/{name}: {_reason(exc)}") from exc
    if actual != expected:
        raise SysfsError(f"{link} points at {actual}, not at kernel/iommu_groups/{name}")
    return int(name)


def _scan_real(path: str) -> str:
    """`_real_path`, remembered for the scan (the group directories every device's link is checked against)."""
    cached = _SCAN.reals.get(path)
    if cached is None:
        cached = _SCAN.reals[path] = _real_path(path)
    return cached


def subdirectories(path: Path) -> list[str]:
    """Names of real subdirectories (not symlinks), sorted: what DPDK's DT_DIR scan of a container sees."""
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SysfsError(f"cannot list {path}: {_reason(exc)}") from exc


def entries(path: str | Path) -> list[str]:
    """Every name in a directory, sorted; [] when the directory does not exist."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SysfsError(f"cannot list {path}: {_reason(exc)}") from exc


def device_node(path: str | Path, dev_root: str | Path) -> str | None:
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
    path = os.fspath(path)
    parent = os.path.dirname(path)
    try:
        # Every group node sits in the same /dev/vfio: one walk per scan.
        real_parent = _scan_real(parent) if _SCAN.active else _real_path(parent)
    except OSError as exc:
        raise SysfsError(f"cannot resolve {parent}: {_reason(exc)}") from exc
    real_root = _real_root(dev_root)
    if real_parent != real_root and not real_parent.startswith(real_root.rstrip("/") + "/"):
        raise SysfsError(f"{path} lies outside {os.fspath(dev_root)}; ignored")
    return path


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
