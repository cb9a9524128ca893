"""The CNI skeleton: one invocation from (env, stdin) to (exit code, stdout text), for every mode.

It validates the environment, negotiates the version, opens the pod netns, dispatches to the mode and prints the
result at the config's version, or the error JSON. It never raises and never prints, so the node daemon can run
several at once in threads; logs go to stderr through `logging`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cni.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INTERNAL,
    INVALID_CONFIG,
    INVALID_NETNS,
    UNKNOWN_CONTAINER,
    CniError,
)
from cni.versions import CURRENT, SUPPORTED, version_info

if TYPE_CHECKING:
    from cni.netconf import NetConf
    from cni.request import CniRequest

log = logging.getLogger(__name__)


def execute(env: Mapping[str, str], stdin: bytes, netns_fd: int | None = None,
            mount_ns_fd: int | None = None) -> tuple[int, str]:
    """Run one CNI command completely. `netns_fd`, if given, is an open fd on the pod netns used instead of opening
    CNI_NETNS (which is still reported as the sandbox); `mount_ns_fd`, if given, the caller's mount namespace, in
    which delegated IPAM plugins run (the node daemon's own is not the runtime's). Both stay owned by the caller."""
    version = CURRENT
    try:
        from cni.request import parse_env

        req = parse_env(env)
        if req.command == "VERSION":
            return 0, json.dumps(_version_answer(stdin)) + "\n"
        raw = _decode(stdin)
        from cni.netconf import check_version

        if isinstance(raw, Mapping):
            version = check_version(raw)
        return _run(req, raw, netns_fd, mount_ns_fd)
    except CniError as exc:
        log.info("CNI %s failed: code %d: %s", env.get("CNI_COMMAND", ""), exc.code, exc.msg)
        return 1, exc.to_json(_error_version(stdin, version))
    except Exception as exc:
        log.exception("CNI %s failed unexpectedly", env.get("CNI_COMMAND", ""))
        return 1, CniError(INTERNAL, f"internal error: {exc}").to_json(version)


def _stdin_version(stdin: bytes) -> str | None:
    try:
        given = json.loads(stdin or b"{}").get("cniVersion")
    except (ValueError, AttributeError):
        return None
    return given if isinstance(given, str) and given else None


def _version_answer(stdin: bytes) -> dict[str, Any]:
    answer = version_info()
    given = _stdin_version(stdin)
    if given:
        answer["cniVersion"] = given
    return answer


def _error_version(stdin: bytes, known: str) -> str:
    """The version to print an error at: the config's when it is one we speak (also for errors found before the
    config was read, such as a bad environment), else the newest."""
    if known != CURRENT:
        return known
    given = _stdin_version(stdin)
    return given if given in SUPPORTED else CURRENT


def _decode(stdin: bytes) -> Any:
    try:
        return json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODE_FAILURE, f"failed to decode the network config on stdin: {exc}") from exc


def _run(req: CniRequest, raw: Any, netns_fd: int | None, mount_ns_fd: int | None) -> tuple[int, str]:
    from cni.netconf import parse_netconf
    from cni.result import version_tuple

    conf = parse_netconf(raw, req)
    vt = version_tuple(conf.cni_version)
    if req.command == "CHECK" and vt < (0, 4, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"config version {conf.cni_version} does not allow CHECK")
    if req.command in ("GC", "STATUS") and vt < (1, 1, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"config version {conf.cni_version} does not allow {req.command}")
    if req.command == "GC":
        _gc(req, conf, mount_ns_fd)
        return 0, ""
    if req.command == "STATUS":
        _status(req, conf, mount_ns_fd)
        return 0, ""
    from cni.modes import load_mode
    from cni.modes.call import Call, chain
    from cni.netns import NetnsGone, check_netns_fd, open_netns

    mode = load_mode(conf.mode)
    owned_fd: int | None = None
    fd = netns_fd
    if fd is not None:
        check_netns_fd(fd, req.netns)
    elif req.netns:
        try:
            fd = owned_fd = open_netns(req.netns)
        except NetnsGone:
            if req.command != "DEL":
                raise CniError(UNKNOWN_CONTAINER, f"netns {req.netns!r} does not exist") from None
            log.info("DEL %s/%s: netns %s already gone, releasing IPAM only", req.container_id, req.ifname, req.netns)
        except CniError as exc:
            # A path left behind by a deleted netns is no netns any more: DEL still cleans up what it can.
            if req.command != "DEL" or exc.code != INVALID_NETNS:
                raise
            log.info("DEL %s/%s: %s; releasing IPAM only", req.container_id, req.ifname, exc.msg)
    try:
        call = Call(req=req, conf=conf, netns_fd=fd, mount_ns_fd=mount_ns_fd)
        if req.command == "ADD":
            result = chain(conf.prev_result, mode.add(call))
            return 0, json.dumps(result.to_dict(conf.cni_version)) + "\n"
        if req.command == "DEL":
            mode.delete(call)
            return 0, ""
        mode.check(call)
        return 0, ""
    finally:
        if owned_fd is not None:
            os.close(owned_fd)


def _valid_attachments(conf: NetConf) -> list[tuple[str, str]]:
    raw = conf.raw.get("cni.dev/valid-attachments", conf.raw.get("cni.dev/attachments"))
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise CniError(INVALID_CONFIG, f"cni.dev/valid-attachments: expected a list, got {raw!r}")
    valid = []
    for item in raw:
        if not isinstance(item, Mapping) or not isinstance(item.get("containerID"), str):
            raise CniError(INVALID_CONFIG, f"cni.dev/valid-attachments: invalid entry {item!r}")
        valid.append((item["containerID"], str(item.get("ifname", ""))))
    return valid


def _gc(req: CniRequest, conf: NetConf, mount_ns_fd: int | None) -> None:
    """GC: links die with their netns; IPAM reservations and nftables rules (ipMasq, macspoofchk) can outlive it."""
    from cni import ipmasq, macspoofchk
    from cni.modes.call import Call
    from cni.modes.ipam_calls import ipam_gc

    valid = _valid_attachments(conf)
    errors = []
    # Continue past errors and report them all, as the spec asks of GC.
    for step in (lambda: ipam_gc(Call(req=req, conf=conf, netns_fd=None, mount_ns_fd=mount_ns_fd), valid),
                 lambda: ipmasq.gc(conf.name, valid), lambda: macspoofchk.gc(conf.name, valid)):
        try:
            step()
        except CniError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise CniError(errors[0].code, "; ".join(e.msg for e in errors))


def _status(req: CniRequest, conf: NetConf, mount_ns_fd: int | None) -> None:
    """STATUS: can ADD be served? The mode says, if it has anything to check (it asks IPAM too), else IPAM."""
    from cni.modes import load_mode
    from cni.modes.call import Call
    from cni.modes.ipam_calls import ipam_status

    call = Call(req=req, conf=conf, netns_fd=None, mount_ns_fd=mount_ns_fd)
    status = load_mode(conf.mode).status
    if status is not None:
        status(call)
    else:
        ipam_status(call)


__all__ = ["SUPPORTED", "execute"]
