"""`vnfio-device-plugin list`: the dry run shows what each pool would advertise, what it left out and why,
and every config and discovery problem; exit 1 only when the config is unusable."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from repo import REPO

from deviceplugin.listing import run_list
from deviceplugin.policy.config import SAMPLE_CONFIG
from deviceplugin.sampleboard import SampleBoard


def _write_config(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return json.loads(capsys.readouterr().out)


def test_table_shows_pools_devices_and_reasons(
    board: SampleBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path / "config.json", SAMPLE_CONFIG)
    assert run_list(config, board.sys, board.dev, "table") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "nxp.com/dpaa2_dprc  (fslmc, 2 devices, 2 healthy)" in lines
    assert "intel.com/intel_vf  (pci, 3 devices, 3 healthy)" in lines
    assert any(
        line.split() == ["dprc.2", "Healthy", "10", "-", "dpbp:1", "dpcon:1", "dpio:2", "dpmcp:1", "dpni:1"]
        for line in lines
    )
    assert any(line.split() == ["iommu-group-22", "Healthy", "22", "-", "0001:01:00.3,0001:01:00.4"] for line in lines)
    assert any(line.split()[:1] == ["dprc.1"] and "root container" in line for line in lines)
    assert any(line.split()[:1] == ["dprc.4"] and "needs driver vfio-fsl-mc" in line for line in lines)
    assert "0001:01:00.0" not in out and "problems" not in out


def test_json_has_the_same_inventory(board: SampleBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(tmp_path / "config.json", SAMPLE_CONFIG)
    assert run_list(config, board.sys, board.dev, "json") == 0
    report = _json(capsys)
    pools = {p["resourceName"]: p for p in report["pools"]}
    assert [d["id"] for d in pools["nxp.com/dpaa2_dprc"]["devices"]] == ["dprc.2", "dprc.3"]
    assert [d["id"] for d in pools["intel.com/intel_vf"]["devices"]] == [
        "0001:01:00.1",
        "0001:01:00.2",
        "iommu-group-22",
    ]
    group22 = pools["intel.com/intel_vf"]["devices"][2]
    assert group22 == {
        "id": "iommu-group-22",
        "health": "Healthy",
        "iommuGroups": [22],
        "numaNode": None,
        "pciAddresses": ["0001:01:00.3", "0001:01:00.4"],
        "container": None,
        "objects": None,
        "pfs": ["0001:01:00.0"],
        "nodes": [
            {"hostPath": str(board.dev / "vfio/vfio"), "containerPath": "/dev/vfio/vfio", "permissions": "rw"},
            {"hostPath": str(board.dev / "vfio/22"), "containerPath": "/dev/vfio/22", "permissions": "rw"},
        ],
        "whyUnhealthy": None,
    }
    assert pools["nxp.com/dpaa2_dprc"]["socket"] == "vnfio-dpaa2_dprc.sock"
    dprc3 = pools["nxp.com/dpaa2_dprc"]["devices"][1]
    assert (dprc3["container"], dprc3["objects"]["dpseci"], dprc3["objects"]["dpio"]) == ("dprc.3", 1, 2)
    assert {e["id"] for e in pools["nxp.com/dpaa2_dprc"]["excluded"]} == {"dprc.1", "dprc.4"}
    assert (report["configProblems"], report["discoveryProblems"], report["noiommu"]) == ([], [], False)


def test_problems_and_unhealthy_devices_are_shown(
    board: SampleBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy.deepcopy(SAMPLE_CONFIG)
    data["resourceList"].append({"resourceName": "broken", "deviceType": "pci", "selectors": {"vendors": 8086}})
    config = _write_config(tmp_path / "config.json", data)
    board.remove_group_node(21)
    (board.sys / "bus/pci/devices/0001:06:00.0").symlink_to("0001:06:00.0")
    assert run_list(config, board.sys, board.dev, "table") == 0
    out = capsys.readouterr().out
    assert 'pool "broken": key "selectors.vendors": expected a list of 4-digit hex strings, got 8086' in out
    assert "discovery problems:" in out and "0001:06:00.0" in out
    assert any(
        line.split()[:2] == ["0001:01:00.2", "Unhealthy"] and f"{board.dev / 'vfio/21'} is missing" in line
        for line in out.splitlines()
    )
    assert run_list(config, board.sys, board.dev, "json") == 0
    report = _json(capsys)
    assert [p["key"] for p in report["configProblems"]] == ["selectors.vendors"]
    assert any("0001:06:00.0" in p for p in report["discoveryProblems"])


def test_noiommu_board_shows_host_noiommu_nodes(
    noiommu_board: SampleBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path / "config.json", SAMPLE_CONFIG)
    assert run_list(config, noiommu_board.sys, noiommu_board.dev, "json") == 0
    report = _json(capsys)
    assert report["noiommu"] is True
    dprc2 = report["pools"][0]["devices"][0]
    assert dprc2["nodes"][1] == {
        "hostPath": str(noiommu_board.dev / "vfio/noiommu-10"),
        "containerPath": "/dev/vfio/10",
        "permissions": "rw",
    }
    assert run_list(config, noiommu_board.sys, noiommu_board.dev, "table") == 0
    assert "[vfio noiommu mode]" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read it"),
        ("{not json", "not valid JSON"),
        ('{"pools": []}', "resourceList"),
    ],
)
def test_unusable_config_exits_1_with_a_message(
    board: SampleBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, fragment: str
) -> None:
    config = tmp_path / "config.json"
    if content is not None:
        config.write_text(content)
    assert run_list(config, board.sys, board.dev, "table") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(config) in captured.err and fragment in captured.err


def test_no_valid_pool_exits_1_but_still_says_why(
    board: SampleBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path / "config.json", {"resourceList": [{"resourceName": "x", "deviceType": "usb"}]})
    assert run_list(config, board.sys, board.dev, "json") == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["configProblems"][0]["key"] == "deviceType"
    assert "no valid pool" in captured.err


def test_sample_board_uses_the_sample_config_and_cleans_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run_list(tmp_path / "absent.json", Path("/nonexistent"), Path("/nonexistent"), "json", sample_board=True) == 0
    )
    report = _json(capsys)
    assert report["sampleBoard"] is True and report["config"] == "built-in sample config"
    # The issue-14 sample config adds a platform pool (3 units) and a vhost-net pool (8 slots) after the two.
    assert [len(p["devices"]) for p in report["pools"]] == [2, 3, 3, 8]
    assert not Path(report["sysfsRoot"]).exists()


def test_sample_board_with_an_existing_config_uses_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    only_vfs = {"resourceList": [SAMPLE_CONFIG["resourceList"][1] | {"iommuGroups": "exclude"}]}
    config = _write_config(tmp_path / "config.json", only_vfs)
    assert run_list(config, Path("/nonexistent"), Path("/nonexistent"), "json", sample_board=True) == 0
    (pool,) = _json(capsys)["pools"]
    assert [d["id"] for d in pool["devices"]] == ["0001:01:00.1", "0001:01:00.2"]
    assert pool["excluded"][0]["id"] == "iommu-group-22"


def test_console_script_lists_the_sample_board(tmp_path: Path) -> None:
    script = REPO / ".venv/bin/vnfio-device-plugin"
    args = [str(script), "list", "--sample-board", "--output", "json", "--config", str(tmp_path / "absent.json")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    ids = {p["resourceName"]: [d["id"] for d in p["devices"]] for p in report["pools"]}
    # Issue 14: `list --sample-board` also shows the platform and vhost-net pools of the built-in config.
    assert ids == {
        "nxp.com/dpaa2_dprc": ["dprc.2", "dprc.3"],
        "intel.com/intel_vf": ["0001:01:00.1", "0001:01:00.2", "iommu-group-22"],
        "nxp.com/soc_platform": ["iommu-group-31", "21c0000.serial", "3200000.sata"],
        "vnfio.io/vhost_net": [f"vhost-net-{i}" for i in range(8)],
    }
    proc = subprocess.run([*args[:4], "table", *args[5:]], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "nxp.com/dpaa2_dprc" in proc.stdout
