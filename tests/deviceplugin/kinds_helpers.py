"""Shared scenario pieces for the issue-14 tests (platform, vhost-net, VFIO cdev, CDI, device info): the full
sample board, a config writer, and the in-process daemon harness of test_daemon_lifecycle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_daemon_lifecycle import RunningDaemon, settings_for, wait_until

from deviceplugin.discovery.inventory import discover
from deviceplugin.policy.config import parse_config
from deviceplugin.policy.pools import build_pools
from deviceplugin.records import ResourcePool
from deviceplugin.sampleboard import SampleBoard

__all__ = ["RunningDaemon", "pools_of", "running", "settings_for", "wait_until", "write_pools"]

PLATFORM_POOL: dict[str, Any] = {
    "resourceName": "soc",
    "resourcePrefix": "nxp.com",
    "deviceType": "platform",
    "selectors": {"drivers": ["vfio-platform", "vfio-amba"]},
}
VHOST_POOL: dict[str, Any] = {
    "resourceName": "vhost",
    "resourcePrefix": "vnfio.io",
    "deviceType": "vhost-net",
    "count": 4,
}
VF_POOL: dict[str, Any] = {
    "resourceName": "intel_vf",
    "resourcePrefix": "intel.com",
    "deviceType": "pci",
    "selectors": {"vendors": ["8086"], "devices": ["154c"], "drivers": ["vfio-pci"]},
}


def write_pools(path: Path, *pools: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"resourceList": list(pools)}))
    return path


def pools_of(board: SampleBoard, *pools: dict[str, Any]) -> dict[str, ResourcePool]:
    """The pools the daemon would build for this config on this board (the policy, without gRPC)."""
    result = parse_config({"resourceList": list(pools)})
    assert result.problems == (), result.problems
    return build_pools(result.pools, discover(board.sys, board.dev)).pools


def running(board: SampleBoard, plugin_dir: Path, config: Path, **changes: Any) -> RunningDaemon:
    """The daemon in this process, rescanning every 0.1 s (no uevents: the board is a plain tree)."""
    return RunningDaemon(settings_for(board, plugin_dir, config, rescan_interval=0.1, **changes))
