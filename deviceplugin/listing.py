"""`vnfio-device-plugin list`: the dry run. Discover, build the pools exactly as the daemon would, and print
what each pool would advertise, what it left out and why, and every config and discovery problem — without
touching kubelet.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from deviceplugin.discovery.inventory import discover
from deviceplugin.policy.config import SAMPLE_BOARD_CONFIG, ConfigError, ConfigResult, load_config, parse_config
from deviceplugin.policy.pools import PoolBuild, build_pools
from deviceplugin.records import Inventory, PoolDevice, ResourcePool


def run_list(config: Path, sysfs_root: Path, dev_root: Path, output: str, sample_board: bool = False) -> int:
    """Print the inventory report; 0 when at least one pool is valid, 1 when the config is unusable."""
    if not sample_board:
        return _run(Path(config), Path(sysfs_root), Path(dev_root), output, sample=False)
    from deviceplugin.sampleboard import full_sample_board

    with tempfile.TemporaryDirectory(prefix="vnfio-sample-board-") as tmp:
        board = full_sample_board(Path(tmp))
        return _run(Path(config), board.sys, board.dev, output, sample=True)


def _run(config: Path, sysfs_root: Path, dev_root: Path, output: str, *, sample: bool) -> int:
    try:
        if sample and not config.exists():
            result = parse_config(SAMPLE_BOARD_CONFIG)
            source = "built-in sample config"
        else:
            result = load_config(config)
            source = str(config)
    except ConfigError as exc:
        print(f"vnfio-device-plugin list: {exc}", file=sys.stderr)
        return 1
    inventory = discover(sysfs_root, dev_root)
    built = build_pools(result.pools, inventory)
    report = _report(source, sysfs_root, dev_root, sample, result, inventory, built)
    try:
        if output == "json":
            json.dump(report, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            _print_table(report, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # `list | head`: the reader left. Point stdout at /dev/null so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if not result.pools:
        print(f"vnfio-device-plugin list: {source}: no valid pool (see the problems above)", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------------ report
def _report(
    source: str,
    sysfs_root: Path,
    dev_root: Path,
    sample: bool,
    result: ConfigResult,
    inventory: Inventory,
    built: PoolBuild,
) -> dict[str, Any]:
    problems = [*result.problems, *built.problems]
    return {
        "config": source,
        "sysfsRoot": str(sysfs_root),
        "devRoot": str(dev_root),
        "sampleBoard": sample,
        "noiommu": inventory.noiommu,
        "pools": [_pool(pool, inventory) for pool in built.pools.values()],
        "configProblems": [{"pool": p.pool, "key": p.key, "reason": p.reason, "message": str(p)} for p in problems],
        "discoveryProblems": list(inventory.problems),
    }


def _pool(pool: ResourcePool, inventory: Inventory) -> dict[str, Any]:
    objects = {c.name: dict(c.object_counts) for c in inventory.containers}
    return {
        "resourceName": pool.resource_name,
        "deviceType": pool.device_type,
        "socket": pool.socket_name,
        "devices": [_device(d, objects.get(d.container or "")) for d in pool.devices],
        "excluded": [{"id": device, "reason": reason} for device, reason in pool.excluded],
    }


def _device(dev: PoolDevice, objects: dict[str, int] | None) -> dict[str, Any]:
    entry = _base_device(dev, objects)
    # Keys only where they say something the others do not: platform members, VFIO cdevs (vfioInterface).
    if dev.members and not dev.pci_addresses and dev.container is None:
        entry["members"] = list(dev.members)
    if dev.cdevs:
        entry["cdevs"] = dict(dev.cdevs)
    return entry


def _base_device(dev: PoolDevice, objects: dict[str, int] | None) -> dict[str, Any]:
    return {
        "id": dev.id,
        "health": dev.health,
        "iommuGroups": list(dev.iommu_groups),
        "numaNode": dev.numa_node,
        "pciAddresses": list(dev.pci_addresses),
        "container": dev.container,
        "objects": objects,  # DPAA2: the container's objects by type, as DPDK will find them
        "pfs": list(dev.pfs),
        "nodes": [
            {"hostPath": n.host_path, "containerPath": n.container_path, "permissions": n.permissions}
            for n in dev.nodes
        ],
        "whyUnhealthy": dev.why_unhealthy,
    }


# ------------------------------------------------------------------------------------------------- table
def _print_table(report: dict[str, Any], out: TextIO) -> None:
    board = " (generated sample board, removed afterwards)" if report["sampleBoard"] else ""
    out.write(f"config:     {report['config']}\n")
    out.write(f"sysfs root: {report['sysfsRoot']}{board}\n")
    out.write(f"dev root:   {report['devRoot']}{'  [vfio noiommu mode]' if report['noiommu'] else ''}\n")
    for pool in report["pools"]:
        devices = pool["devices"]
        healthy = sum(d["health"] == "Healthy" for d in devices)
        out.write(f"\n{pool['resourceName']}  ({pool['deviceType']}, {len(devices)} devices, {healthy} healthy)\n")
        rows = [
            [
                d["id"],
                d["health"],
                ",".join(map(str, d["iommuGroups"])) or "-",
                "-" if d["numaNode"] is None else str(d["numaNode"]),
                ",".join(d["pciAddresses"] or d.get("members", [])) or _objects(d["objects"]),
                d["whyUnhealthy"] or "",
            ]
            for d in devices
        ]
        if rows:
            _write_rows(["ID", "HEALTH", "GROUP", "NUMA", "CONTENTS", "WHY UNHEALTHY"], rows, out)
        else:
            out.write("  (no devices)\n")
        if pool["excluded"]:
            out.write("  left out:\n")
            width = max(len(e["id"]) for e in pool["excluded"])
            for e in pool["excluded"]:
                out.write(f"    {e['id']:<{width}}  {e['reason']}\n")
    for title, lines in (
        ("config problems", [p["message"] for p in report["configProblems"]]),
        ("discovery problems", report["discoveryProblems"]),
    ):
        if lines:
            out.write(f"\n{title}:\n")
            out.writelines(f"  {line}\n" for line in lines)


def _objects(counts: dict[str, int] | None) -> str:
    return " ".join(f"{kind}:{n}" for kind, n in sorted(counts.items())) if counts else "-"


def _write_rows(header: list[str], rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        out.write(("  " + "  ".join(cells)).rstrip() + "\n")
