"""Files a pool writes beside its gRPC answers: a CDI spec for the container runtime and, at Allocate, Network
Plumbing WG device-information files for Multus. Transport only: both are renderings of policy records.

**CDI and multi-device env.** Each advertised device is one CDI device whose `containerEdits` carry exactly that
device's nodes (host paths under the dev root; `/dev/vfio/vfio`, `/dev/iommu` and `/dev/vhost-net` repeat in
every device, which runtimes dedupe by path). The env stays in the Allocate response only and is never dropped,
not even with `--cdi-only`: a variable such as `PCIDEVICE_<RES>=a,b` describes the whole allocation, and a
runtime that merges two CDI devices' env keeps one value per name, so putting it per device would hand a pod that
got two VFs `a` or `b` instead of `a,b`. Kubelet applies the response's env itself, whatever the runtime does
with CDI. `--cdi-only` drops the DeviceSpecs (the runtime injects the nodes from the spec), but only while the
pool's spec is on disk: if writing it failed, the DeviceSpecs stay so the container still gets its devices.

**Device information** (device-info-spec 1.1.0, section 4.1): `<dir>/<resource, "/" → "->-<device ID>-device.json`,
`{"type": "pci", "version": "1.1.0", "pci": {"pci-address", "pf-pci-address" for a VF, "vhost-net" with
needVhostNet}}`, for devices that carry PCI functions; the directory is created when missing, files are written
atomically at Allocate, removed when their device is no longer advertised and when the plugin stops (the spec makes
the device plugin responsible for deleting what it created). A whole-group unit (`iommu-group-N`) names its first
function: the format has one address per device.

Every write failure at runtime is logged, counted (`vnfio_file_write_failures`) and never fails an Allocate.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deviceplugin.atomicfile import write_atomically
from deviceplugin.kubelet.cdi import CdiDevice, CdiError, CdiSpec, file_name, remove_spec, write_spec
from deviceplugin.records import PoolDevice, ResourcePool

log = logging.getLogger(__name__)

DEFAULT_DEVICE_INFO_DIR = Path("/var/run/k8s.cni.cncf.io/devinfo/dp")
DEVICE_INFO_VERSION = "1.1.0"
_VHOST_NET = "/dev/vhost-net"

# (resource, what) → None: the daemon passes its metrics' counter here.
FailureCounter = Callable[[str, str], None]


@dataclass(frozen=True)
class OutputSettings:
    """Where the files go; None turns each off."""

    cdi_dir: Path | None = None
    cdi_only: bool = False
    device_info_dir: Path | None = None


def check_output_dir(path: Path, flag: str) -> None:
    """At start: the directory exists (made when missing) and takes a file; OSError naming the flag, the path and
    the errno otherwise (the daemon refuses to start, as a runtime would never see our files)."""
    try:
        make_dir(path)
        fd, probe = tempfile.mkstemp(prefix=".vnfio-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        raise OSError(exc.errno, f"{flag} {path} is not writable: {exc.strerror or exc} ({code})") from exc


def make_dir(path: Path) -> None:
    """Create `path` and its missing parents as 0755 whatever the umask (Path.mkdir gives parents 0777 & ~umask:
    under umask 000 a world-writable /var/run/k8s.cni.cncf.io)."""
    missing = []
    current = Path(path)
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        with suppress(FileExistsError):
            directory.mkdir()
            os.chmod(directory, 0o755)


def spec_for(pool: ResourcePool) -> CdiSpec:
    """The pool's CDI spec: kind `<prefix>/<name>`, one device per advertised device with its nodes."""
    return CdiSpec(
        kind=pool.resource_name,
        devices=tuple(CdiDevice(name=d.id, nodes=d.nodes) for d in pool.devices if d.nodes),
    )


def device_info(device: PoolDevice) -> dict[str, Any] | None:
    """The device-info-spec 1.1.0 document for a device carrying PCI functions; None for any other."""
    if not device.pci_addresses:
        return None
    pci: dict[str, str] = {"pci-address": device.pci_addresses[0]}
    if len(device.pfs) == 1:
        pci["pf-pci-address"] = device.pfs[0]
    if any(n.container_path == _VHOST_NET for n in device.nodes):
        pci["vhost-net"] = _VHOST_NET
    return {"type": "pci", "version": DEVICE_INFO_VERSION, "pci": pci}


def device_info_name(resource_name: str, device_id: str) -> str:
    """`intel.com-intel_vf-0001:01:00.1-device.json` (device-info-spec section 4.1)."""
    return f"{resource_name.replace('/', '-')}-{device_id}-device.json"


class PoolOutputs:
    """The CDI spec and device-information files of one pool. Call from the daemon's event loop."""

    def __init__(self, settings: OutputSettings, resource: str, failed: FailureCounter | None = None) -> None:
        self._settings = settings
        self._resource = resource
        self._failed = failed
        self._spec_written: dict[str, Any] | None = None  # the document on disk, None when there is none
        self._info_written: set[str] = set()  # device-info file names we wrote and have not removed
        self._last_failure: str | None = None

    @property
    def cdi_names_available(self) -> bool:
        """Whether Allocate may name CDI devices: the pool's spec is on disk."""
        return self._spec_written is not None

    @property
    def drop_device_specs(self) -> bool:
        """--cdi-only, and the spec is there to carry the nodes instead."""
        return self._settings.cdi_only and self.cdi_names_available

    def cdi_names(self, device_ids: Sequence[str]) -> list[str]:
        if not self.cdi_names_available:
            return []
        return [f"{self._resource}={i}" for i in sorted(set(device_ids))]

    # -------------------------------------------------------------------------------------------- CDI
    def sync(self, pool: ResourcePool) -> None:
        """Bring the spec and the device-info files in line with the pool's advertised devices."""
        self._sync_spec(pool)
        self._prune_device_info({d.id for d in pool.devices})

    def _sync_spec(self, pool: ResourcePool) -> None:
        directory = self._settings.cdi_dir
        if directory is None:
            return
        spec = spec_for(pool)
        name = file_name(spec.kind)
        if not spec.devices:
            self._remove_spec()
            return
        try:
            document = spec.document()
            if document == self._spec_written:
                return
            write_spec(directory, name, spec)
        except (OSError, CdiError) as exc:
            self._fail("cdi", f"cannot write CDI spec {directory / name}: {_reason(exc)}")
            self._spec_written = None
            return
        self._spec_written = document
        self._last_failure = None
        log.info("CDI spec %s written: %d devices", directory / name, len(spec.devices),
                 extra={"resource": self._resource})  # fmt: skip

    def _remove_spec(self) -> None:
        directory = self._settings.cdi_dir
        if directory is None:
            return
        name = file_name(self._resource)
        try:
            remove_spec(directory, name)
        except OSError as exc:
            self._fail("cdi", f"cannot remove CDI spec {directory / name}: {_reason(exc)}")
            return
        self._spec_written = None

    # ------------------------------------------------------------------------------------ device info
    def allocated(self, devices: Sequence[PoolDevice]) -> None:
        """Write the device-information file of each allocated device that has one (Allocate's hook)."""
        directory = self._settings.device_info_dir
        if directory is None:
            return
        for device in devices:
            document = device_info(device)
            if document is None:
                continue
            name = device_info_name(self._resource, device.id)
            try:
                make_dir(directory)
                write_atomically(directory / name, json.dumps(document) + "\n")
            except OSError as exc:
                self._fail("device-info", f"cannot write {directory / name}: {_reason(exc)}")
                continue
            self._info_written.add(name)

    def _prune_device_info(self, advertised: set[str]) -> None:
        keep = {device_info_name(self._resource, i) for i in advertised}
        self._remove_device_info([n for n in self._info_written if n not in keep])

    def _remove_device_info(self, names: Sequence[str]) -> None:
        directory = self._settings.device_info_dir
        if directory is None:
            return
        for name in sorted(names):
            try:
                (directory / name).unlink(missing_ok=True)
            except OSError as exc:
                self._fail("device-info", f"cannot remove {directory / name}: {_reason(exc)}")
                continue
            self._info_written.discard(name)

    # ---------------------------------------------------------------------------------------- release
    def release(self) -> None:
        """The pool is gone or the plugin stops: its spec and every device-info file it wrote go."""
        self._remove_spec()
        self._remove_device_info(list(self._info_written))

    def _fail(self, what: str, message: str) -> None:
        """Log a failure (once while it repeats: a spec that cannot be written fails again on every rescan) and
        count every attempt."""
        level = logging.DEBUG if message == self._last_failure else logging.ERROR
        self._last_failure = message
        log.log(level, "pool %s: %s", self._resource, message, extra={"resource": self._resource, "what": what})
        if self._failed is not None:
            with suppress(Exception):
                self._failed(self._resource, what)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} (errno {exc.errno})"
    return str(exc)
