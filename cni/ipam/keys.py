"""Who holds a reservation and where a network's reservations live: the (CNI_CONTAINERID, CNI_IFNAME) key and the
network directory, validated as the reference skel does, so no name can leave the data directory."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cni.errors import INVALID_CONFIG, INVALID_ENV, CniError
from cni.request import MAX_CONTAINER_ID, MAX_NETWORK_NAME

INDEX_DIR = "by-key"
LINE_BREAK = "\r\n"

_MAX_IFNAME = 15
_MAX_CONTAINER_ID = MAX_CONTAINER_ID  # the skeleton refuses longer ones first; the store checks again on its own
_MAX_NETWORK_NAME = MAX_NETWORK_NAME
_NAME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_REST = _NAME_FIRST | frozenset("_.-")


@dataclass(frozen=True)
class ReservationKey:
    """Who holds a reservation: the runtime's (CNI_CONTAINERID, CNI_IFNAME) pair."""

    container_id: str
    ifname: str

    @property
    def owner(self) -> str:
        """The content of an address file held by this key, as the reference writes it."""
        return self.container_id + LINE_BREAK + self.ifname

    @property
    def index_name(self) -> str:
        return f"{INDEX_DIR}/{self.container_id}:{self.ifname}"


def _is_cni_name(value: str) -> bool:
    """The spec's rule for container IDs and network names: alphanumeric, then alphanumerics, `_`, `.`, `-`."""
    return bool(value) and value[0] in _NAME_FIRST and all(c in _NAME_REST for c in value)


def reservation_key(container_id: str, ifname: str) -> ReservationKey:
    """Validate the pair the way the reference skel does, so no name can leave the network directory."""
    if not container_id:
        raise CniError(INVALID_ENV, "missing containerID (CNI_CONTAINERID)")
    if not _is_cni_name(container_id):
        raise CniError(INVALID_ENV, "invalid characters in containerID (CNI_CONTAINERID)", container_id[:300])
    if len(container_id) > _MAX_CONTAINER_ID:
        raise CniError(INVALID_ENV, f"containerID (CNI_CONTAINERID) is longer than {_MAX_CONTAINER_ID} characters")
    if not ifname:
        raise CniError(INVALID_ENV, "interface name (CNI_IFNAME) is empty")
    if len(ifname.encode()) > _MAX_IFNAME:
        raise CniError(INVALID_ENV, "interface name (CNI_IFNAME) is too long",
                       f"interface name should be less than {_MAX_IFNAME + 1} characters")
    if ifname in (".", ".."):
        raise CniError(INVALID_ENV, "interface name (CNI_IFNAME) is . or ..")
    if any(c in "/:" or c.isspace() or not c.isprintable() for c in ifname):
        raise CniError(INVALID_ENV, "interface name (CNI_IFNAME) contains / or : or whitespace characters",
                       repr(ifname))
    return ReservationKey(container_id, ifname)


def network_dir(data_dir: str, network: object) -> str:
    """`<dataDir>/<network name>`, refusing names that are not plain directory names."""
    if not isinstance(network, str) or not _is_cni_name(network):
        raise CniError(INVALID_CONFIG, f"invalid characters found in network name: {network!r}")
    if len(network) > _MAX_NETWORK_NAME:
        raise CniError(INVALID_CONFIG, f"network name is longer than {_MAX_NETWORK_NAME} characters: "
                                       f"{network[:40]!r}...")
    if not isinstance(data_dir, str) or not data_dir or "\0" in data_dir:
        raise CniError(INVALID_CONFIG, f"invalid ipam.dataDir: {data_dir!r}")
    return os.path.join(data_dir, network)
