"""CDI (Container Device Interface) specs: what the container runtime injects for a device, written as files the
runtime resolves by name (`vendor.com/class=device`).

Both kubelet transports hand out devices this way: the Device Plugin API returns `cdi_devices` beside its device
specs (kubelet ≥ 1.31 passes them on; containerd 2 and CRI-O resolve them), and DRA answers with CDI device IDs
only. A spec is plain data built from policy records; this module renders it in the spec's JSON form, checks it
against the rules the CDI library applies when loading (so a runtime never rejects what we wrote), and writes
it atomically (a runtime reads the directory at any moment: it must see the old file or the new one, never half).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deviceplugin.atomicfile import write_atomically
from deviceplugin.records import DeviceNode

# 0.6.0: device nodes with hostPath (0.5.0) and spec-level edits; nothing here needs a later version.
CDI_VERSION = "0.6.0"
DEFAULT_CDI_DIR = Path("/var/run/cdi")

# The CDI library's name rules (pkg/parser): a vendor is a DNS-like name, a class and a device name start and end
# with a letter or digit.
_VENDOR = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?\Z")
_CLASS = re.compile(r"[A-Za-z]([A-Za-z0-9_.-]*[A-Za-z0-9])?\Z")
_DEVICE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?\Z")
_ENV_NAME = re.compile(r"[^=\0]+\Z")
_PERMISSIONS = re.compile(r"[rwm]{1,3}\Z")


class CdiError(ValueError):
    """A spec that a runtime's CDI library would refuse to load."""


@dataclass(frozen=True)
class CdiDevice:
    """One named device of a spec and the edits it brings: device nodes (host path → container path) and env."""

    name: str
    nodes: tuple[DeviceNode, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class CdiSpec:
    """A spec file's content: its kind (`vendor/class`), its devices, and edits that come with any of them."""

    kind: str
    devices: tuple[CdiDevice, ...]
    nodes: tuple[DeviceNode, ...] = ()  # spec-level edits: applied once when any device of the spec is injected
    env: Mapping[str, str] = field(default_factory=dict, hash=False)

    def qualified_name(self, device: str) -> str:
        """`nxp.com/dpaa2_dprc=dprc.2`: how kubelet and the runtime name a device of this spec."""
        return f"{self.kind}={device}"

    def document(self) -> dict[str, Any]:
        """The spec in CDI's JSON form; CdiError when the library would refuse it."""
        check(self)
        doc: dict[str, Any] = {
            "cdiVersion": CDI_VERSION,
            "kind": self.kind,
            "devices": [{"name": d.name, "containerEdits": _edits(d.nodes, d.env)} for d in self.devices],
        }
        if self.nodes or self.env:
            doc["containerEdits"] = _edits(self.nodes, self.env)
        return doc


def _edits(nodes: Iterable[DeviceNode], env: Mapping[str, str]) -> dict[str, Any]:
    edits: dict[str, Any] = {}
    if env:
        edits["env"] = [f"{name}={value}" for name, value in sorted(env.items())]
    node_list = [
        {"path": n.container_path, "hostPath": n.host_path, "permissions": n.permissions} for n in nodes
    ]
    if node_list:
        edits["deviceNodes"] = node_list
    return edits


def file_name(kind: str, suffix: str = "") -> str:
    """The spec file for a kind, `vnfio-<vendor>-<class>[-suffix].json`: the `vnfio-` prefix marks our files, so
    removing stale specs never touches another driver's."""
    vendor, _, cls = kind.partition("/")
    return f"vnfio-{vendor}-{cls}{'-' + suffix if suffix else ''}.json"


def check(spec: CdiSpec) -> None:
    """The library's load-time rules the JSON schema does not carry: names, env entries, node paths, permissions,
    at least one edit per device, and no device name twice."""
    vendor, sep, cls = spec.kind.partition("/")
    if not sep or not _VENDOR.match(vendor) or not _CLASS.match(cls):
        raise CdiError(f"CDI kind {spec.kind!r} is not vendor/class")
    seen: set[str] = set()
    for device in spec.devices:
        if not _DEVICE.match(device.name):
            raise CdiError(f"CDI device name {device.name!r} of {spec.kind} is not a valid name")
        if device.name in seen:
            raise CdiError(f"CDI device name {device.name!r} appears twice in {spec.kind}")
        seen.add(device.name)
        if not device.nodes and not device.env:
            raise CdiError(f"CDI device {spec.qualified_name(device.name)} has no container edits")
        _check_edits(device.nodes, device.env, spec.qualified_name(device.name))
    _check_edits(spec.nodes, spec.env, spec.kind)


def _check_edits(nodes: Iterable[DeviceNode], env: Mapping[str, str], where: str) -> None:
    for name, value in env.items():
        if not _ENV_NAME.match(name) or "\0" in value:
            raise CdiError(f"{where}: env {name!r} is not a valid variable")
    for node in nodes:
        for path in (node.container_path, node.host_path):
            if not path.startswith("/") or "\0" in path:
                raise CdiError(f"{where}: device node path {path!r} is not absolute")
        if not _PERMISSIONS.match(node.permissions) or len(set(node.permissions)) != len(node.permissions):
            raise CdiError(f"{where}: device node permissions {node.permissions!r} are not letters of rwm")


def write_spec(directory: Path, name: str, spec: CdiSpec) -> Path:
    """Write `spec` as `directory/name` atomically (temp file, fsync, rename; 0644 as runtimes read it as any
    user); OSError when the directory is unusable, CdiError when the spec is invalid (nothing is written)."""
    document = json.dumps(spec.document(), indent=2, sort_keys=False) + "\n"
    target = Path(directory) / name
    write_atomically(target, document)
    return target


def remove_spec(directory: Path, name: str) -> bool:
    """Remove one spec file; False when it was not there."""
    try:
        (Path(directory) / name).unlink()
    except FileNotFoundError:
        return False
    return True
