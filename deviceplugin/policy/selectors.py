"""Selectors: which discovered devices a pool wants. The vocabulary every kind's selectors share; the selectors
themselves live with their kind (`deviceplugin.kinds.*`).

All given keys must match (AND); the values of one key are alternatives (OR); a key that is not given matches
everything. Selectors are split by what they look at. *Identity* selectors (vendors, devices, pciAddresses,
rootDevices, containers) name a device; *state* selectors (drivers, pfNames, minObjects) look at what the device
is bound to or holds right now. A device already advertised that stops matching a state selector stays in its
pool as unhealthy, so kubelet sees it go Unhealthy instead of vanishing (see health.py). A new device failing
`drivers` or `minObjects` is listed as left out with the reason; one failing `pfNames` is simply not selected
(pools split by PF would otherwise list each other's devices).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

ANY_NAME = re.compile(r"^\S+\Z")


def one_of(values: tuple[str, ...]) -> str:
    return " or ".join(values)


def binding(driver: str | None) -> str:
    """`bound to i40e` / `unbound`, for reasons shown to operators."""
    return f"bound to {driver}" if driver else "unbound"


def show(value: object) -> str:
    """A config value as a problem message quotes it: JSON where it can be, repr otherwise."""
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(value)


@dataclass(frozen=True)
class ListKey:
    """A selector key whose value is a non-empty list of strings of one shape."""

    field: str  # the selectors dataclass attribute it fills
    expected: str  # how the problem message describes a good value
    pattern: re.Pattern[str]
    normalize: Callable[[str], str] = str

    def parse(self, value: object) -> tuple[str, ...] | None:
        if not isinstance(value, list) or not value:
            return None
        if not all(isinstance(v, str) and self.pattern.match(v) for v in value):
            return None
        return tuple(dict.fromkeys(self.normalize(v) for v in value))
