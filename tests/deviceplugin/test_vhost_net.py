"""deviceType vhost-net (shareable slots) and needVhostNet on any pool: what kubelet sees and what a container gets,
with /dev/vhost-net going and coming back under the running daemon."""

from __future__ import annotations

from pathlib import Path

import pytest
from kinds_helpers import VF_POOL, VHOST_POOL, pools_of, running, write_pools
from kubelet_stub import KubeletStub

from deviceplugin.policy.config import parse_config
from deviceplugin.sampleboard import SampleBoard

VHOST = "vnfio.io/vhost"
VF = "intel.com/intel_vf"


def nodes(response: object) -> list[tuple[str, str, str]]:
    return [(d.host_path, d.container_path, d.permissions) for d in response.devices]  # type: ignore[attr-defined]


def test_slots_give_both_nodes_and_all_turn_unhealthy_when_one_goes(
    board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path
) -> None:
    config = write_pools(tmp_path / "config.json", VHOST_POOL)
    with running(board, plugin_dir, config):
        devices = kubelet.wait_for(VHOST, lambda d: len(d) == 4 and all(x.healthy for x in d.values()))
        assert sorted(devices) == ["vhost-net-0", "vhost-net-1", "vhost-net-2", "vhost-net-3"]
        response = kubelet.allocate(VHOST, ["vhost-net-2", "vhost-net-0"])
        assert nodes(response) == [
            (str(board.dev / "net/tun"), "/dev/net/tun", "rw"),
            (str(board.dev / "vhost-net"), "/dev/vhost-net", "rw"),
        ]
        board.remove_vhost_net()
        kubelet.wait_for(VHOST, lambda d: len(d) == 4 and not any(x.healthy for x in d.values()))
        board.add_vhost_net()
        kubelet.wait_for(VHOST, lambda d: len(d) == 4 and all(x.healthy for x in d.values()))


def test_need_vhost_net_adds_the_nodes_to_another_kind(
    board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path
) -> None:
    config = write_pools(tmp_path / "config.json", {**VF_POOL, "needVhostNet": True})
    with running(board, plugin_dir, config):
        kubelet.wait_for(VF, lambda d: len(d) == 3 and all(x.healthy for x in d.values()))
        response = kubelet.allocate(VF, ["0001:01:00.1"])
        assert [c for _, c, _ in nodes(response)] == [
            "/dev/vfio/vfio",
            "/dev/vfio/20",
            "/dev/net/tun",
            "/dev/vhost-net",
        ]
        assert response.envs["PCIDEVICE_INTEL_COM_INTEL_VF"] == "0001:01:00.1"


def test_need_vhost_net_on_a_dev_root_without_the_nodes_runs_the_pool_unhealthy_with_the_reason(
    board: SampleBoard,
) -> None:
    board.remove_vhost_net()
    (board.dev / "net/tun").unlink()
    pool = pools_of(board, {**VF_POOL, "needVhostNet": True})[VF]
    assert len(pool.devices) == 3 and not any(d.healthy for d in pool.devices)
    why = pool.devices[0].why_unhealthy or ""
    assert f"needVhostNet: {board.dev / 'vhost-net'} is missing; {board.dev / 'net/tun'} is missing" in why


@pytest.mark.parametrize(
    "entry,key,reason",
    [
        ({**VHOST_POOL, "count": 0}, "count", "expected a number of slots from 1 to 1024, got 0"),
        ({**VHOST_POOL, "count": 1025}, "count", "expected a number of slots from 1 to 1024, got 1025"),
        ({**VHOST_POOL, "count": True}, "count", "expected a number of slots from 1 to 1024, got true"),
        ({**VHOST_POOL, "selectors": {"drivers": ["x"]}}, "selectors.drivers", "takes no selectors"),
        ({**VHOST_POOL, "iommuGroups": "whole"}, "iommuGroups", "vhost-net slots have no IOMMU group"),
        ({**VF_POOL, "needVhostNet": "yes"}, "needVhostNet", 'expected true or false, got "yes"'),
        ({**VF_POOL, "count": 3}, "count", "only for deviceType vhost-net, not pci"),
    ],
)
def test_bad_keys_name_pool_key_and_reason(entry: dict[str, object], key: str, reason: str) -> None:
    result = parse_config({"resourceList": [entry]})
    assert result.pools == ()
    assert any(p.key == key and reason in p.reason and p.pool == entry["resourceName"] for p in result.problems), (
        result.problems
    )


def test_default_count_is_64(board: SampleBoard) -> None:
    pool = pools_of(board, {k: v for k, v in VHOST_POOL.items() if k != "count"})[VHOST]
    assert [d.id for d in pool.devices] == [f"vhost-net-{i}" for i in range(64)]


def test_need_vhost_net_pool_runs_unhealthy_until_the_nodes_appear(
    board: SampleBoard, plugin_dir: Path, kubelet: KubeletStub, tmp_path: Path
) -> None:
    board.remove_vhost_net()
    config = write_pools(tmp_path / "config.json", {**VF_POOL, "needVhostNet": True})
    with running(board, plugin_dir, config):
        kubelet.wait_for(VF, lambda d: len(d) == 3 and not any(x.healthy for x in d.values()))
        board.add_vhost_net()  # modprobe vhost_net: the node appears, the pool turns Healthy
        kubelet.wait_for(VF, lambda d: len(d) == 3 and all(x.healthy for x in d.values()))
