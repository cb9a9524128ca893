"""IPAM for the vnfio CNI plugin: built-in `host-local` and `static`, any other `ipam.type` run from CNI_PATH.

The interface plugins call these five functions with an `IpamRequest`; every failure is a `CniError` with the
spec's code. Contract for callers:

- `ipam_add` returns a 1.1.0 abbreviated IPAM result (`ips`, `routes`, `dns`). If anything after a
  successful `ipam_add` fails, the caller must call `ipam_del` with the same request before reporting the
  error: for a delegated IPAM that is the spec's "run DEL on the delegate", for host-local it frees the
  reservation. `ipam_del` is idempotent and succeeds when nothing is held.
- The host-local store is safe across threads and processes (one flock per network directory), so the
  node daemon may call these concurrently for different containers.

The modules behind the dispatch are imported only when a command needs them, to keep the CNI start-up
path light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cni.errors import INVALID_CONFIG, CniError

BUILTIN_TYPES = ("host-local", "static")


@dataclass(frozen=True)
class IpamRequest:
    """One IPAM call: the runtime's parameters and the whole network config as the interface plugin got it.
    `mount_ns_fd`: the runtime's mount namespace, which a delegated plugin must run in (None: it is ours)."""

    command: str
    container_id: str
    ifname: str
    netns: str
    cni_args: Mapping[str, str]
    cni_path: tuple[str, ...]
    env: Mapping[str, str]
    netconf: Mapping[str, Any]
    mount_ns_fd: int | None = None


def _ipam_type(req: IpamRequest) -> str:
    ipam = req.netconf.get("ipam")
    if not isinstance(ipam, Mapping):
        raise CniError(INVALID_CONFIG, "IPAM config missing 'ipam' key")
    ipam_type = ipam.get("type")
    if not isinstance(ipam_type, str) or not ipam_type:
        raise CniError(INVALID_CONFIG, f"invalid ipam.type: {ipam_type!r} (expected a plugin name)")
    return ipam_type


def ipam_add(req: IpamRequest) -> dict[str, Any]:
    """Allocate (or look up) the pod's addresses; the 1.1.0 abbreviated result."""
    ipam_type = _ipam_type(req)
    if ipam_type == "host-local":
        from cni.ipam import hostlocal

        return hostlocal.add(req)
    if ipam_type == "static":
        from cni.ipam import static

        return static.add(req)
    from cni.ipam import delegate

    return delegate.to_ipam_result(delegate.run(req, "ADD", req.netconf))


def ipam_del(req: IpamRequest) -> None:
    """Release what ADD took for (containerID, ifname); success when nothing is held."""
    ipam_type = _ipam_type(req)
    if ipam_type == "host-local":
        from cni.ipam import hostlocal

        hostlocal.delete(req)
    elif ipam_type != "static":
        from cni.ipam import delegate

        delegate.run(req, "DEL", req.netconf)


def ipam_check(req: IpamRequest) -> None:
    """Verify the reservation still exists (and matches prevResult where the plugin can tell)."""
    ipam_type = _ipam_type(req)
    if ipam_type == "host-local":
        from cni.ipam import hostlocal

        hostlocal.check(req)
    elif ipam_type == "static":
        from cni.ipam import static

        static.check(req)
    else:
        from cni.ipam import delegate

        delegate.run(req, "CHECK", req.netconf)


def ipam_gc(req: IpamRequest, valid: Sequence[tuple[str, str]]) -> None:
    """Release every reservation whose (containerID, ifname) is not in `valid`; all errors in one CniError."""
    ipam_type = _ipam_type(req)
    if ipam_type == "host-local":
        from cni.ipam import hostlocal

        hostlocal.gc(req, valid)
    elif ipam_type != "static":
        from cni.ipam import delegate

        netconf = dict(req.netconf)
        if "cni.dev/valid-attachments" not in netconf:
            attachments = [{"containerID": cid, "ifname": ifname} for cid, ifname in valid]
            netconf["cni.dev/valid-attachments"] = attachments
            netconf.setdefault("cni.dev/attachments", attachments)
        delegate.run(req, "GC", netconf)


def ipam_status(req: IpamRequest) -> None:
    """CniError 50 when the IPAM cannot serve ADD (exhausted ranges, unusable dataDir, failing delegate)."""
    ipam_type = _ipam_type(req)
    if ipam_type == "host-local":
        from cni.ipam import hostlocal

        hostlocal.status(req)
    elif ipam_type == "static":
        from cni.ipam import static

        static.check(req)
    else:
        from cni.ipam import delegate

        delegate.run(req, "STATUS", req.netconf)
