"""Config problems of the issue-14 keys: each names the pool, the key and the reason; the other pools still run."""

from __future__ import annotations

from kinds_helpers import PLATFORM_POOL, VF_POOL

from deviceplugin.policy.config import SAMPLE_BOARD_CONFIG, parse_config


def test_unknown_device_type_lists_every_kind() -> None:
    result = parse_config({"resourceList": [{"resourceName": "x", "deviceType": "usb"}, VF_POOL]})
    assert [p.resource_name for p in result.pools] == ["intel.com/intel_vf"]
    assert [(p.pool, p.key, p.reason) for p in result.problems] == [
        ("x", "deviceType", 'expected fslmc or pci or platform or vhost-net, got "usb"')
    ]


def test_a_kind_key_on_the_wrong_kind_and_an_unknown_key() -> None:
    result = parse_config({"resourceList": [{**PLATFORM_POOL, "count": 2, "colour": "red"}]})
    assert sorted((p.pool, p.key, p.reason) for p in result.problems) == [
        ("soc", "colour", "unknown key (expected one of resourceName, resourcePrefix, deviceType, selectors, "
         "iommuGroups, needVhostNet, vfioInterface)"),
        ("soc", "count", "only for deviceType vhost-net, not platform"),
    ]  # fmt: skip


def test_the_sample_board_config_is_valid() -> None:
    result = parse_config(SAMPLE_BOARD_CONFIG)
    assert result.problems == ()
    assert [p.device_type for p in result.pools] == ["fslmc", "pci", "platform", "vhost-net"]
