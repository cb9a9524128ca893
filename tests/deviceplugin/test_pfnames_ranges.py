"""pfNames with sriov-network-device-plugin's VF ranges (`eth1#0-3,5`): the config accepts the good forms and
names pool, key and reason for bad ones; discovery numbers each VF as its PF's `virtfnN` link does; a ranged
entry takes exactly the VFs it names, a plain PF name still takes them all."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from deviceplugin.discovery.inventory import discover
from deviceplugin.kinds.pci import VF_INDEX_MAX, PciSelectors, PfNameEntry, parse_pf_name
from deviceplugin.listing import run_list
from deviceplugin.policy.config import PoolConfig, parse_config
from deviceplugin.policy.pools import build_pools
from deviceplugin.records import PciDevice, ResourcePool
from deviceplugin.sampleboard import SampleBoard

PF = "0001:01:00.0"
POOL = "example.com/vf"
GOOD = {"resourceName": "good", "deviceType": "pci", "selectors": {"vendors": ["8086"]}}


def _pool_entry(pf_names: Any, name: str = "vf") -> dict[str, Any]:
    selectors = {"pfNames": pf_names}
    return {"resourceName": name, "resourcePrefix": "example.com", "deviceType": "pci", "selectors": selectors}


def _configs(*entries: dict[str, Any]) -> tuple[PoolConfig, ...]:
    result = parse_config({"resourceList": list(entries)})
    assert result.problems == ()
    return result.pools


def _virtfn_links(board: SampleBoard, pf: str) -> dict[str, int]:
    """VF address → N, read straight from the PF's `virtfnN` links on disk (not through discovery)."""
    pf_dir = board.pci_dir(pf)
    links = {}
    for link in pf_dir.iterdir():
        if link.name.startswith("virtfn"):
            links[os.path.basename(os.readlink(link))] = int(link.name.removeprefix("virtfn"))
    return links


def _ids(pool: ResourcePool) -> list[str]:
    return [d.id for d in pool.devices]


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("entries", "kept"),
    [
        (["eth1"], ("eth1",)),
        (["eth1#0-3"], ("eth1#0-3",)),
        (["eth1#1,3,5-7"], ("eth1#1,3,5-7",)),
        (["eth1#2"], ("eth1#2",)),
        (["eth1#0-3", "eth2", "eth1#0-3"], ("eth1#0-3", "eth2")),  # duplicates fold, order kept
        ([f"eth1#{VF_INDEX_MAX}", f"eth1#0-{VF_INDEX_MAX}"], (f"eth1#{VF_INDEX_MAX}", f"eth1#0-{VF_INDEX_MAX}")),
    ],
)
def test_good_pfnames_forms_are_accepted(entries: list[str], kept: tuple[str, ...]) -> None:
    [pool] = _configs(_pool_entry(entries))
    assert isinstance(pool.selectors, PciSelectors)
    assert pool.selectors.pf_names == tuple(parse_pf_name(e) for e in kept)


@pytest.mark.parametrize(
    ("entry", "ranges"),
    [
        ("eth1", None),
        ("eth1#0-3", ((0, 3),)),
        ("eth1#1,3,5-7", ((1, 1), (3, 3), (5, 7))),
        ("eth1#4-4", ((4, 4),)),
        ("eth1#07", ((7, 7),)),
    ],
)
def test_parse_pf_name_gives_inclusive_ranges(entry: str, ranges: tuple[tuple[int, int], ...] | None) -> None:
    assert parse_pf_name(entry) == PfNameEntry("eth1", ranges)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("eth1#", "nothing after '#'"),
        ("eth1#3-1", "range 3-1 runs backwards"),
        ("eth1#a", "'a' is not a VF index"),
        ("eth1#0-3,", "'' is not a VF index"),
        ("eth1#1,,2", "'' is not a VF index"),
        ("eth1#-1", "'-1' is not a VF index"),
        ("eth1#1-2-3", "'1-2-3' is not a VF index"),
        ("eth1# 1", "' 1' is not a VF index"),
        (f"eth1#0-{VF_INDEX_MAX + 1}", f"VF index {VF_INDEX_MAX + 1} is above {VF_INDEX_MAX}"),
        ("#0-3", "no interface name before '#'"),
        ("eth1#0-3#4", "more than one '#'"),
        ("eth 1#0", '"eth 1" is not an interface name'),
        ("averyveryverylongname#0", "is not an interface name"),
        ("eth/1", '"eth/1" is not an interface name'),
    ],
)
def test_a_bad_pfnames_entry_names_pool_key_and_reason_and_other_pools_serve(entry: str, reason: str) -> None:
    result = parse_config({"resourceList": [_pool_entry(["eth2", entry]), GOOD]})
    assert [p.name for p in result.pools] == ["good"]
    assert len(result.problems) == 1, result.problems
    problem = result.problems[0]
    assert (problem.pool, problem.key) == ("vf", "selectors.pfNames")
    assert problem.reason.startswith(json.dumps(entry) + ": ")
    assert reason in problem.reason
    assert "interface names" in problem.reason  # what a good value looks like, as for every other key
    assert str(problem).startswith('pool "vf": key "selectors.pfNames": ')


@pytest.mark.parametrize("value", ["eth1#0-3", [], [1], [None], {"eth1": "0-3"}])
def test_pfnames_that_is_not_a_list_of_strings_is_refused(value: Any) -> None:
    result = parse_config({"resourceList": [_pool_entry(value), GOOD]})
    assert [p.name for p in result.pools] == ["good"]
    [problem] = result.problems
    assert (problem.pool, problem.key) == ("vf", "selectors.pfNames")
    assert f"got {json.dumps(value)}" in problem.reason


# --------------------------------------------------------------------------------------------- discovery
def test_discovery_gives_each_vf_the_index_of_its_virtfn_link(board: SampleBoard) -> None:
    on_disk = _virtfn_links(board, PF)
    assert len(on_disk) == 4 and sorted(on_disk.values()) == [0, 1, 2, 3]
    inv = discover(board.sys, board.dev)
    vfs = {f.address: f.vf_index for f in inv.pci if f.pf_address == PF}
    assert vfs == on_disk
    # Functions that are no VF have no index.
    assert all(f.vf_index is None for f in inv.pci if f.pf_address is None)


def test_a_vf_missing_from_its_pf_links_has_no_index_and_others_keep_theirs(board: SampleBoard) -> None:
    on_disk = _virtfn_links(board, PF)
    lost = next(vf for vf, n in on_disk.items() if n == 1)
    pf_dir = board.pci_dir(PF)
    (pf_dir / "virtfn1").unlink()
    os.symlink("../no-such-device", pf_dir / "virtfn1")  # dangles: names nothing
    os.symlink("virtfn7", pf_dir / "virtfn7")  # a loop: names nothing either
    inv = discover(board.sys, board.dev)
    vfs = {f.address: f.vf_index for f in inv.pci if f.pf_address == PF}
    assert vfs == {vf: (None if vf == lost else n) for vf, n in on_disk.items()}
    assert inv.problems == ()


def test_a_virtfn_link_leading_out_of_the_sysfs_root_is_not_followed(board: SampleBoard, tmp_path: Path) -> None:
    """A virtfn link whose target lies outside the tree gives no index, even when the target is the same
    device directory reached another way (a bind mount of the VF's directory outside the tree)."""
    on_disk = _virtfn_links(board, PF)
    vf = next(v for v, n in on_disk.items() if n == 0)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(board.pci_dir(vf), outside / "vf")  # outside/vf → inside: resolves inside, so it still counts
    pf_dir = board.pci_dir(PF)
    (pf_dir / "virtfn0").unlink()
    escape = tmp_path / "escape"
    escape.mkdir()
    os.symlink(escape, pf_dir / "virtfn0")  # a real directory, but outside the tree
    inv = discover(board.sys, board.dev)
    assert next(f for f in inv.pci if f.address == vf).vf_index is None
    (pf_dir / "virtfn0").unlink()
    os.symlink(outside / "vf", pf_dir / "virtfn0")
    inv = discover(board.sys, board.dev)
    assert next(f for f in inv.pci if f.address == vf).vf_index == 0


# ------------------------------------------------------------------------------------------------- pools
def test_a_ranged_entry_selects_exactly_those_vf_indexes(board: SampleBoard) -> None:
    on_disk = _virtfn_links(board, PF)
    wanted = sorted(vf for vf, n in on_disk.items() if n in (0, 1))
    assert wanted == ["0001:01:00.1", "0001:01:00.2"]  # each alone in its IOMMU group on the sample board
    pool = build_pools(_configs(_pool_entry(["eth1#0-1"])), discover(board.sys, board.dev)).pools[POOL]
    assert _ids(pool) == wanted
    assert [d.pci_addresses for d in pool.devices] == [(vf,) for vf in wanted]
    assert pool.excluded == ()  # the other VFs are simply not selected, as with a plain PF name


@pytest.mark.parametrize(
    ("pf_names", "ids"),
    [
        (["eth1"], ["0001:01:00.1", "0001:01:00.2", "iommu-group-22"]),  # plain: every VF of the PF
        (["eth1#0-3"], ["0001:01:00.1", "0001:01:00.2", "iommu-group-22"]),
        (["eth1#1"], ["0001:01:00.2"]),
        (["eth1#0", "eth1#1"], ["0001:01:00.1", "0001:01:00.2"]),  # any entry matching is enough
        (["eth1#0,2-3"], ["0001:01:00.1", "iommu-group-22"]),
        (["eth1#4-9"], []),
        (["eth9#0-3"], []),
        (["eth9", "eth1#1"], ["0001:01:00.2"]),
    ],
)
def test_ranges_and_plain_names_on_the_sample_board(board: SampleBoard, pf_names: list[str], ids: list[str]) -> None:
    pool = build_pools(_configs(_pool_entry(pf_names)), discover(board.sys, board.dev)).pools[POOL]
    assert _ids(pool) == ids


def test_a_range_taking_half_an_iommu_group_leaves_the_group_out(board: SampleBoard) -> None:
    # VFs 2 and 3 (0001:01:00.3 and .4) share group 22; a group is never split.
    pool = build_pools(_configs(_pool_entry(["eth1#2"])), discover(board.sys, board.dev)).pools[POOL]
    assert _ids(pool) == []
    assert "do not take 0001:01:00.4 and a group is never split" in dict(pool.excluded)["iommu-group-22"]


def test_a_vf_whose_index_is_lost_turns_unhealthy_in_a_ranged_pool(board: SampleBoard) -> None:
    configs = _configs(_pool_entry(["eth1#0-1"]))
    first = build_pools(configs, discover(board.sys, board.dev)).pools
    pf_dir = board.pci_dir(PF)
    (pf_dir / "virtfn0").unlink()
    pool = build_pools(configs, discover(board.sys, board.dev), previous=first).pools[POOL]
    health = {d.id: d.healthy for d in pool.devices}
    assert health == {"0001:01:00.1": False, "0001:01:00.2": True}
    why = pool.device("0001:01:00.1").why_unhealthy
    assert "needs PF eth1 (VFs 0-1) but its PF is eth1 (VF index unknown)" in why
    # A plain PF name does not care about the index.
    plain = build_pools(_configs(_pool_entry(["eth1"])), discover(board.sys, board.dev)).pools[POOL]
    assert "0001:01:00.1" in _ids(plain)


def test_mismatch_messages_mention_the_range() -> None:
    vf = PciDevice("0001:01:00.4", "8086", "154c", "020000", "vfio-pci", 22, None, PF, "eth1", None, None, 3)
    assert PciSelectors(pf_names=(parse_pf_name("eth1#0-1,5"), parse_pf_name("eth2"))).pf_mismatch(vf) == (
        "0001:01:00.4 needs PF eth1 (VFs 0-1,5) or eth2 but its PF is eth1 (VF 3)"
    )
    # Without any range the message is the one pfNames always gave.
    only_eth2 = PciSelectors(pf_names=(parse_pf_name("eth2"),))
    assert only_eth2.pf_mismatch(vf) == "0001:01:00.4 needs PF eth2 but its PF is eth1"
    assert PciSelectors(pf_names=(parse_pf_name("eth1#3"),)).pf_mismatch(vf) is None


def test_list_dry_run_shows_ranged_pools_and_the_bad_one(
    board: SampleBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "resourceList": [
                    _pool_entry(["eth1#0-1"], "low"),
                    _pool_entry(["eth1#2-3"], "high"),
                    _pool_entry(["eth1#3-1"], "bad"),
                ]
            }
        )
    )
    assert run_list(config, board.sys, board.dev, "json") == 0
    report = json.loads(capsys.readouterr().out)
    pools = {p["resourceName"]: [d["id"] for d in p["devices"]] for p in report["pools"]}
    assert pools == {"example.com/low": ["0001:01:00.1", "0001:01:00.2"], "example.com/high": ["iommu-group-22"]}
    [problem] = report["configProblems"]
    assert (problem["pool"], problem["key"]) == ("bad", "selectors.pfNames")
    assert "range 3-1 runs backwards" in problem["reason"]
    assert run_list(config, board.sys, board.dev, "table") == 0
    table = capsys.readouterr().out
    assert 'pool "bad": key "selectors.pfNames": "eth1#3-1": range 3-1 runs backwards' in table
