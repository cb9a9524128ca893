"""The config as an attacker or a careless operator writes it: trailing newlines that `$` lets through, a YAML
alias bomb, an oversized file, and error messages that would quote all of it (issue 17, findings 4 and 11)."""

from __future__ import annotations

from typing import Any

import pytest

from deviceplugin.policy.config import parse_config

pytestmark = pytest.mark.hardening

GOOD = {"resourceName": "good", "deviceType": "pci", "selectors": {"vendors": ["8086"]}}


@pytest.mark.parametrize(
    ("entry", "pool", "key"),
    [
        ({"resourceName": "x\n", "deviceType": "pci"}, "x\n", "resourceName"),
        ({"resourceName": "vf", "resourcePrefix": "example.com\n", "deviceType": "pci"}, "vf", "resourcePrefix"),
        ({"resourceName": "vf", "deviceType": "pci", "selectors": {"drivers": ["vfio-pci\n"]}}, "vf",
         "selectors.drivers"),
        ({"resourceName": "vf", "deviceType": "pci", "selectors": {"vendors": ["8086\n"]}}, "vf", "selectors.vendors"),
        ({"resourceName": "vf", "deviceType": "pci", "selectors": {"pciAddresses": ["0000:01:00.1\n"]}}, "vf",
         "selectors.pciAddresses"),
        ({"resourceName": "vf", "deviceType": "pci", "selectors": {"pfNames": ["eth0\n"]}}, "vf", "selectors.pfNames"),
        ({"resourceName": "dprc", "deviceType": "fslmc", "selectors": {"containers": ["dprc.2\n"]}}, "dprc",
         "selectors.containers"),
    ],
)  # fmt: skip
def test_a_trailing_newline_is_refused(entry: dict[str, Any], pool: str, key: str) -> None:
    """`$` matches before a final newline, so "x\\n" passed as a resource name, a prefix or a selector value."""
    result = parse_config({"resourceList": [GOOD, entry]})
    assert [p.name for p in result.pools] == ["good"]
    assert [(p.pool, p.key) for p in result.problems] == [(pool, key)]
    assert "\\n" in result.problems[0].reason  # the message shows the newline it refused
