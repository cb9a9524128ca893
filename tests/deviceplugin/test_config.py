"""The pool config: JSON or YAML, every problem names pool + key + reason, and the valid pools survive."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from deviceplugin.kinds.fslmc import FslMcSelectors
from deviceplugin.kinds.pci import PciSelectors
from deviceplugin.policy.config import (
    SAMPLE_CONFIG,
    ConfigError,
    ConfigProblem,
    PoolConfig,
    env_suffix,
    load_config,
    parse_config,
)

GOOD = {"resourceName": "good", "deviceType": "pci", "selectors": {"vendors": ["8086"]}}


def test_sample_config_is_the_issue_example() -> None:
    result = parse_config(SAMPLE_CONFIG)
    assert result.problems == ()
    assert result.pools == (
        PoolConfig(
            "dpaa2_dprc",
            "nxp.com",
            "fslmc",
            FslMcSelectors(drivers=("vfio-fsl-mc",), min_objects={"dpbp": 1, "dpio": 1, "dpmcp": 1, "dpni": 1}),
        ),
        PoolConfig(
            "intel_vf",
            "intel.com",
            "pci",
            PciSelectors(vendors=("8086",), devices=("154c",), drivers=("vfio-pci",)),
            "whole",
        ),
    )
    assert [p.resource_name for p in result.pools] == ["nxp.com/dpaa2_dprc", "intel.com/intel_vf"]


def test_json_and_yaml_files_give_the_same_pools(tmp_path: Path) -> None:
    as_json = tmp_path / "c.json"
    as_json.write_text(json.dumps(SAMPLE_CONFIG))
    as_yaml = tmp_path / "c.conf"  # told apart by content, not by name
    as_yaml.write_text(yaml.safe_dump(SAMPLE_CONFIG))
    assert not as_yaml.read_text().lstrip().startswith("{")
    assert load_config(as_json) == load_config(as_yaml) == parse_config(SAMPLE_CONFIG)


def test_defaults_and_normalisation() -> None:
    result = parse_config(
        {
            "resourceList": [
                {
                    "resourceName": "vf",
                    "deviceType": "pci",
                    "selectors": {"vendors": ["0x8086"], "devices": ["154C"], "pciAddresses": ["0001:0A:00.1"]},
                },
                {"resourceName": "dprc", "deviceType": "fslmc"},
            ]
        }
    )
    assert result.problems == ()
    vf, dprc = result.pools
    assert (vf.prefix, vf.iommu_groups) == ("vnfio.io", "whole")
    assert vf.selectors == PciSelectors(vendors=("8086",), devices=("154c",), pci_addresses=("0001:0a:00.1",))
    assert dprc.selectors == FslMcSelectors()
    assert dprc.resource_name == "vnfio.io/dprc"


def test_problem_reads_pool_key_reason() -> None:
    problem = ConfigProblem("intel_vf", "selectors.vendors", "expected a list of 4-digit hex strings, got 8086")
    assert str(problem) == 'pool "intel_vf": key "selectors.vendors": expected a list of 4-digit hex strings, got 8086'
    data = copy.deepcopy(SAMPLE_CONFIG)
    data["resourceList"][1]["selectors"]["vendors"] = 8086
    result = parse_config(data)
    assert [str(p) for p in result.problems] == [str(problem)]
    assert [p.name for p in result.pools] == ["dpaa2_dprc"]


def _pci(**keys: Any) -> dict[str, Any]:
    return {"resourceName": "vf", "deviceType": "pci", **keys}


def _fslmc(**keys: Any) -> dict[str, Any]:
    return {"resourceName": "d", "deviceType": "fslmc", **keys}


BAD_POOLS: list[tuple[Any, str, str, str]] = [
    # (pool entry, pool label, key, fragment of the reason)
    ({"deviceType": "pci"}, "resourceList[0]", "resourceName", "required"),
    (_pci(resourceName="bad name"), "bad name", "resourceName", "kubelet's rule"),
    (_pci(resourceName="x" * 64), "x" * 64, "resourceName", "up to 63"),
    (_pci(resourceName="-vf"), "-vf", "resourceName", "starting and ending"),
    (_pci(resourceName=7), "resourceList[0]", "resourceName", "got 7"),
    (_pci(resourcePrefix="Intel.com"), "vf", "resourcePrefix", "DNS"),
    (_pci(resourcePrefix="kubernetes.io"), "vf", "resourcePrefix", "reserved"),
    (_pci(resourcePrefix="x.kubernetes.io"), "vf", "resourcePrefix", "reserved"),
    (_pci(resourcePrefix="requests.example.com"), "vf", "resourcePrefix", "requests."),
    (_pci(resourcePrefix="a/b"), "vf", "resourcePrefix", "DNS"),
    ({"resourceName": "vf"}, "vf", "deviceType", "required"),
    (_pci(deviceType="usb"), "vf", "deviceType", 'got "usb"'),
    (_pci(vendors=["8086"]), "vf", "vendors", "unknown key"),
    (_pci(selectors=["8086"]), "vf", "selectors", "mapping"),
    (_pci(selectors={"vendor": ["8086"]}), "vf", "selectors.vendor", "unknown selector"),
    (_pci(selectors={"vendors": "8086"}), "vf", "selectors.vendors", 'got "8086"'),
    (_pci(selectors={"vendors": ["80866"]}), "vf", "selectors.vendors", "4-digit hex"),
    (_pci(selectors={"devices": [0x154C]}), "vf", "selectors.devices", "4-digit hex"),
    (_pci(selectors={"drivers": []}), "vf", "selectors.drivers", "got []"),
    (_pci(selectors={"pciAddresses": ["01:00.1"]}), "vf", "selectors.pciAddresses", "PCI addresses"),
    (_pci(selectors={"rootDevices": ["0000:00:00.8"]}), "vf", "selectors.rootDevices", "PCI addresses"),
    (_pci(selectors={"pfNames": ["eth 1"]}), "vf", "selectors.pfNames", "interface names"),
    (_pci(selectors={"minObjects": {"dpni": 1}}), "vf", "selectors.minObjects", "unknown selector for deviceType pci"),
    (_pci(iommuGroups="split"), "vf", "iommuGroups", 'got "split"'),
    (_fslmc(iommuGroups="whole"), "d", "iommuGroups", "only for deviceType pci"),
    (_fslmc(selectors={"vendors": ["1957"]}), "d", "selectors.vendors", "unknown selector for deviceType fslmc"),
    (_fslmc(selectors={"containers": ["dprc2"]}), "d", "selectors.containers", "dprc.2"),
    (_fslmc(selectors={"minObjects": {"dpni": -1}}), "d", "selectors.minObjects", ">= 0"),
    (_fslmc(selectors={"minObjects": {"dpnx": 1}}), "d", "selectors.minObjects", "types: dprc"),
    (_fslmc(selectors={"minObjects": {"dpni": True}}), "d", "selectors.minObjects", "got {"),
    (_fslmc(selectors={"minObjects": {"dpni": "1"}}), "d", "selectors.minObjects", "got {"),
    (_fslmc(selectors={"minObjects": [1]}), "d", "selectors.minObjects", "got [1]"),
    ("intel_vf", "resourceList[0]", "", "expected a mapping"),
]


@pytest.mark.parametrize(("entry", "pool", "key", "fragment"), BAD_POOLS)
def test_a_bad_pool_is_reported_and_dropped_while_good_ones_run(entry: Any, pool: str, key: str, fragment: str) -> None:
    result = parse_config({"resourceList": [entry, GOOD]})
    assert [p.name for p in result.pools] == ["good"]
    assert len(result.problems) == 1, result.problems
    problem = result.problems[0]
    assert (problem.pool, problem.key) == (pool, key)
    assert fragment in problem.reason
    assert str(problem).startswith(f'pool "{pool}": key "{key}": ')


def test_every_problem_of_one_pool_is_reported() -> None:
    entry = {"resourceName": "vf", "deviceType": "pci", "bogus": 1, "selectors": {"vendors": 1, "devices": 2}}
    result = parse_config({"resourceList": [entry]})
    assert result.pools == ()
    assert sorted(p.key for p in result.problems) == ["bogus", "selectors.devices", "selectors.vendors"]


@pytest.mark.parametrize(
    ("second", "fragment"),
    [
        ({"resourceName": "good", "deviceType": "fslmc"}, "vnfio.io/good is already defined"),
        ({"resourceName": "good", "resourcePrefix": "example.com", "deviceType": "pci"}, "vnfio-<name>.sock"),
    ],
)
def test_duplicate_names_drop_the_later_pool(second: dict[str, Any], fragment: str) -> None:
    result = parse_config({"resourceList": [GOOD, second]})
    assert [p.name for p in result.pools] == ["good"]
    (problem,) = result.problems
    assert (problem.pool, problem.key) == (second["resourceName"], "resourceName")
    assert fragment in problem.reason


def test_kubelet_accepts_every_name_we_accept() -> None:
    # Dots, dashes and underscores inside the name part are legal for kubelet and make distinct env vars.
    result = parse_config(
        {"resourceList": [{"resourceName": n, "deviceType": "pci"} for n in ("a_b", "a.b9", "Z-1", "x" * 63)]}
    )
    assert result.problems == ()
    assert [p.name for p in result.pools] == ["a_b", "a.b9", "Z-1", "x" * 63]


def test_names_that_would_share_env_vars_clash() -> None:
    result = parse_config({"resourceList": [{"resourceName": n, "deviceType": "pci"} for n in ("a_b", "a.b", "a-b")]})
    assert [p.name for p in result.pools] == ["a_b"]
    assert [(p.pool, p.key) for p in result.problems] == [("a.b", "resourceName"), ("a-b", "resourceName")]
    assert "VNFIO_IO_A_B" in result.problems[0].reason


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read it"),
        ('{"resourceList": [', "not valid JSON"),
        ("resourceList: [\n  - a: b\n  c", "neither JSON nor YAML"),
        ("- 1\n- 2\n", "expected a mapping with a resourceList"),
        ("{}", 'key "resourceList": expected a list of pools, got null'),
        ('{"resourceList": {"resourceName": "x"}}', "expected a list of pools"),
    ],
)
def test_an_unusable_file_raises_config_error_naming_it(tmp_path: Path, content: str | None, fragment: str) -> None:
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_undecodable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)


def test_env_suffix_follows_sriov_dp() -> None:
    assert env_suffix("intel.com/intel_vf") == "INTEL_COM_INTEL_VF"
    assert env_suffix("nxp.com/dpaa2-dprc.x") == "NXP_COM_DPAA2_DPRC_X"
