"""The IPAM requests and the view of a host-local directory that the store tests share, here and in the child
processes they start (which import only this and the package under test, so they start fast)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cni.ipam import IpamRequest


def request(data_dir: Path, container_id: str, ifname: str = "eth0", ranges: list | None = None,
            command: str = "ADD") -> IpamRequest:
    """A host-local request for network `net1` under `data_dir` (one /24 unless `ranges`)."""
    netconf = {"cniVersion": "1.1.0", "name": "net1", "type": "vnfio",
               "ipam": {"type": "host-local", "dataDir": str(data_dir),
                        "ranges": ranges or [[{"subnet": "10.90.0.0/24"}]]}}
    return IpamRequest(command=command, container_id=container_id, ifname=ifname, netns="/x", cni_args={},
                       cni_path=(), env={}, netconf=netconf)


def held(data_dir: Path) -> dict[str, str]:
    """Address -> owner for every non-empty address file (what the reference would count as reserved)."""
    net = data_dir / "net1"
    out = {}
    for p in net.iterdir() if net.exists() else ():
        try:
            ipaddress.ip_address(p.name)
        except ValueError:
            continue
        owner = p.read_bytes().decode()
        if owner:
            out[p.name] = owner
    return out
