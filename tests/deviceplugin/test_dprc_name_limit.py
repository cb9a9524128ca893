"""DPDK's fslmc bus refuses DPRC names of 8 characters or more (FSLMC_CONTAINER_MAX_LEN): such a container is left
out with the reason in `list`, said once in the daemon's log, and never reaches kubelet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kinds_helpers import running, wait_until, write_pools
from kubelet_stub import KubeletStub, device_health

from deviceplugin.listing import run_list
from deviceplugin.policy.config import SAMPLE_CONFIG
from deviceplugin.sampleboard import McObject, SampleBoard

DPRC = "nxp.com/dpaa2_dprc"
DPRC_POOL = SAMPLE_CONFIG["resourceList"][0]


def add_container(board: SampleBoard, name: str, group: int) -> None:
    board.add_mc_object(McObject(name, "dprc.1", "vfio-fsl-mc", "vfio-fsl-mc", group))
    for obj in ("dpni.90", "dpio.90", "dpbp.90", "dpmcp.90"):
        suffix = name.split(".")[1]
        board.add_mc_object(McObject(obj.replace("90", suffix), name, "vfio-fsl-mc", "vfio-fsl-mc", group))
    board.add_group_node(group)


def test_list_says_why_dprc_100_is_left_out(
    board: SampleBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_container(board, "dprc.99", 60)
    add_container(board, "dprc.100", 61)
    config = write_pools(tmp_path / "config.json", DPRC_POOL)
    assert run_list(config, board.sys, board.dev, "json") == 0
    report = json.loads(capsys.readouterr().out)
    pool = report["pools"][0]
    assert [d["id"] for d in pool["devices"]] == ["dprc.2", "dprc.3", "dprc.99"]
    reason = {e["id"]: e["reason"] for e in pool["excluded"]}["dprc.100"]
    assert "DPDK's fslmc bus refuses container names of 8 characters or more" in reason
    assert any(p.startswith("fsl-mc dprc.100: DPDK's fslmc bus") for p in report["discoveryProblems"])


def test_the_daemon_logs_it_and_kubelet_never_sees_it(
    board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    add_container(board, "dprc.100", 61)
    config = write_pools(tmp_path / "config.json", DPRC_POOL)
    with caplog.at_level("WARNING"), running(board, plugin_dir, config):
        devices = kubelet.wait_for(DPRC, lambda d: len(d) == 2)
        assert device_health(devices) == {"dprc.2": "Healthy", "dprc.3": "Healthy"}
        wait_until(lambda: any("dprc.100: DPDK's fslmc bus" in r.getMessage() for r in caplog.records), "the log")
