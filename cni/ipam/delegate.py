"""Delegated IPAM: run the executable named by `ipam.type` from CNI_PATH, exactly as a runtime runs a plugin.

The delegate gets the same CNI_* environment with CNI_COMMAND set to the command at hand, and the whole
network config as JSON on stdin. Its stdout is the result (or the error JSON, whose code and message are kept).
If the delegate's ADD succeeded but the interface plugin then fails, the caller must undo it with
`ipam_del` (the spec's "run DEL on the delegate before returning").

In the node daemon the delegate must see the node's files as the runtime's own exec would (`dhcp` talks to
/run/cni/dhcp.sock, whereabouts reads its kubeconfig and writes its files on the node), not the daemon container's.
So with the caller's mount namespace at hand (`IpamRequest.mount_ns_fd`, passed over the socket by `vnfio`), the
plugin is looked up in CNI_PATH and exec'd in a forked child that has entered that namespace with setns() first
(single-threaded there, as setns into a mount namespace requires; CAP_SYS_ADMIN and CAP_SYS_CHROOT). The daemon
itself never mounts the host's root.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cni.errors import INTERNAL, INVALID_CONFIG, TRY_AGAIN, CniError

if TYPE_CHECKING:
    from cni.ipam import IpamRequest

log = logging.getLogger(__name__)

RESULT_VERSION = "1.1.0"
_CLONE_NEWNS = 0x00020000
_LOOKUP_FAILED = 127  # exit status of a child that could not enter the mount namespace or find the plugin there
_LOOKUP_MARK = "vnfio-delegate-lookup: "  # how such a child's stderr starts, then "<code> <message>"
# A runtime would wait as long as its own context allows; we bound it so a wedged delegate cannot hold a
# node-daemon worker forever.
DELEGATE_TIMEOUT = 120.0


def find_plugin(plugin_type: str, cni_path: Sequence[str]) -> str:
    """The first executable named `plugin_type` in `cni_path`, as libcni's invoke.FindInPath."""
    dirs = _plugin_dirs(plugin_type, cni_path)
    for directory in dirs:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(INVALID_CONFIG, f'failed to find plugin "{plugin_type}" in path [{" ".join(dirs)}]')


def _plugin_dirs(plugin_type: str, cni_path: Sequence[str]) -> list[str]:
    """`find_plugin`'s checks that need no file system: the plugin name, and a non-empty CNI_PATH."""
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        raise CniError(INVALID_CONFIG, f"invalid ipam.type: {plugin_type!r} is not a plugin name")
    dirs = [d for d in cni_path if d]
    if not dirs:
        raise CniError(INVALID_CONFIG, f"no paths provided (CNI_PATH is empty) to find plugin {plugin_type!r}")
    return dirs


def _enter_and_find(mount_ns_fd: int, plugin_type: str, dirs: list[str]) -> Callable[[], None]:
    """The child's step between fork and exec: enter the caller's mount namespace, then make the first CNI_PATH
    directory holding the plugin (as seen there) the working directory, so exec'ing `./<type>` runs that file.
    On failure it says why on stderr (already the parent's pipe) and exits: there is no other channel back."""
    import ctypes

    setns = ctypes.CDLL(None, use_errno=True).setns  # looked up here, in the parent: the child only calls it

    def fail(code: int, message: str) -> None:
        os.write(2, f"{_LOOKUP_MARK}{code} {message}".encode(errors="replace"))
        os._exit(_LOOKUP_FAILED)

    def child() -> None:
        if setns(mount_ns_fd, _CLONE_NEWNS) != 0:
            fail(INTERNAL, f"cannot enter the caller's mount namespace to run IPAM plugin {plugin_type!r}: "
                           f"{os.strerror(ctypes.get_errno())}")
        for directory in dirs:
            candidate = os.path.join(directory, plugin_type)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                os.chdir(directory)
                return
        fail(INVALID_CONFIG, f'failed to find plugin "{plugin_type}" in path [{" ".join(dirs)}] (in the '
                             "caller's mount namespace)")

    return child


def _environment(req: IpamRequest, command: str) -> dict[str, str]:
    env = dict(req.env)
    env["CNI_COMMAND"] = command
    env["CNI_PATH"] = os.pathsep.join(req.cni_path)
    for name, value in (("CNI_CONTAINERID", req.container_id), ("CNI_IFNAME", req.ifname),
                        ("CNI_NETNS", req.netns)):
        if value:
            env[name] = value
    return env


def run(req: IpamRequest, command: str, netconf: Mapping[str, Any]) -> Any:
    """Exec the delegate for `command`; its parsed stdout on success (None when empty), CniError otherwise."""
    plugin_type = str(netconf["ipam"].get("type", ""))
    if req.mount_ns_fd is None:
        plugin = find_plugin(plugin_type, req.cni_path)
        how: dict[str, Any] = {"args": [plugin]}
    else:
        # Found and exec'd in the caller's mount namespace; argv[0] is the plugin's name, its directory unknown here.
        plugin = plugin_type
        how = {"args": [plugin_type], "executable": f"./{plugin_type}",
               "preexec_fn": _enter_and_find(req.mount_ns_fd, plugin_type, _plugin_dirs(plugin_type, req.cni_path))}
    try:
        proc = subprocess.run(**how, input=json.dumps(netconf).encode(), env=_environment(req, command),
                              capture_output=True, timeout=DELEGATE_TIMEOUT, check=False, close_fds=True)
    except subprocess.TimeoutExpired:
        msg = f"IPAM plugin {plugin} did not answer {command} within {DELEGATE_TIMEOUT:g}s"
        raise CniError(TRY_AGAIN, msg) from None
    except OSError as exc:
        raise CniError(INTERNAL, f"failed to run IPAM plugin {plugin}: {exc.strerror}") from None
    if proc.returncode == _LOOKUP_FAILED and proc.stderr.startswith(_LOOKUP_MARK.encode()):
        code, _, message = proc.stderr[len(_LOOKUP_MARK):].decode(errors="replace").partition(" ")
        raise CniError(int(code), message)
    if proc.stderr:
        log.info("IPAM plugin %s %s stderr: %s", plugin, command, proc.stderr.decode(errors="replace").strip())
    stdout = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        raise _error_from(plugin, stdout, proc.stderr.decode(errors="replace").strip())
    if not stdout:
        return None
    try:
        return json.loads(stdout)
    except ValueError:
        raise CniError(INTERNAL, f"failed to parse the result of IPAM plugin {plugin}: {stdout[:200]!r}") from None


def _error_from(plugin: str, stdout: str, stderr: str) -> CniError:
    """The delegate's own error (code, msg, details kept), or libcni's wording when it printed none."""
    try:
        body = json.loads(stdout) if stdout else None
    except ValueError:
        body = None
    if isinstance(body, Mapping) and isinstance(body.get("code"), int) and body.get("code"):
        return CniError(body["code"], str(body.get("msg", "")), str(body.get("details", "") or ""))
    if stderr or stdout:
        return CniError(INTERNAL, f"netplugin failed: {(stdout or stderr)!r}")
    return CniError(INTERNAL, f"netplugin failed with no error message (IPAM plugin {plugin})")


def to_ipam_result(raw: Any) -> dict[str, Any]:
    """Any version of an IPAM result as the 1.1.0 abbreviated form: `ips`, `routes`, `dns`."""
    if not isinstance(raw, Mapping):
        raise CniError(INTERNAL, f"IPAM plugin returned no result object: {raw!r}")
    result: dict[str, Any] = {"cniVersion": RESULT_VERSION}
    ips: list[dict[str, Any]] = []
    routes: list[Any] = list(raw.get("routes") or [])
    if "ip4" in raw or "ip6" in raw:  # 0.1.0/0.2.0: one address per family, routes nested
        for family in ("ip4", "ip6"):
            entry = raw.get(family)
            if isinstance(entry, Mapping) and entry.get("ip"):
                ips.append({"address": entry["ip"], **({"gateway": entry["gateway"]} if entry.get("gateway") else {})})
                routes += list(entry.get("routes") or [])
    for entry in raw.get("ips") or []:
        if isinstance(entry, Mapping) and entry.get("address"):
            ips.append({k: v for k, v in entry.items() if k in ("address", "gateway") and v})
    if ips:
        result["ips"] = ips
    if routes:
        result["routes"] = routes
    result["dns"] = dict(raw.get("dns") or {})
    return result
