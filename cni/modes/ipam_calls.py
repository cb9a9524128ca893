"""A mode's IPAM calls for one attachment (the built-ins and external plugins live in `cni.ipam`).

An L2-only config (no `ipam`) makes every call a no-op and ADD an empty result.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from cni.result import Result, parse_result

if TYPE_CHECKING:
    from cni.ipam import IpamRequest
    from cni.modes.call import Call

def _ipam_request(call: Call) -> IpamRequest:
    from cni.ipam import IpamRequest

    req = call.req
    return IpamRequest(
        command=req.command,
        container_id=req.container_id,
        ifname=req.ifname,
        netns=req.netns,
        cni_args=req.args,
        cni_path=req.path,
        env=req.env,
        netconf=call.conf.raw,
        mount_ns_fd=call.mount_ns_fd,
    )


def ipam_add(call: Call) -> Result:
    """IPAM ADD, or an empty result for an L2-only config (no `ipam`)."""
    if call.conf.ipam is None:
        return Result()
    from cni.ipam import ipam_add as add

    return parse_result(add(_ipam_request(call)), "1.1.0", "IPAM result")


def ipam_del(call: Call) -> None:
    if call.conf.ipam is not None:
        from cni.ipam import ipam_del as delete

        delete(_ipam_request(call))


def ipam_release(call: Call) -> None:
    """ADD's undo of `ipam_add`: a DEL of the same attachment, so the delegate releases what it reserved."""
    ipam_del(replace(call, req=replace(call.req, command="DEL")))


def ipam_check(call: Call) -> None:
    if call.conf.ipam is not None:
        from cni.ipam import ipam_check as check

        check(_ipam_request(call))


def ipam_gc(call: Call, valid: list[tuple[str, str]]) -> None:
    if call.conf.ipam is not None:
        from cni.ipam import ipam_gc as gc

        gc(_ipam_request(call), valid)


def ipam_status(call: Call) -> None:
    if call.conf.ipam is not None:
        from cni.ipam import ipam_status as status

        status(_ipam_request(call))
