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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ANY_NAME = re.compile(r"^\S+\Z")


def one_of(values: tuple[str, ...]) -> str:
    return " or ".join(values)


def binding(driver: str | None) -> str:
    """`bound to i40e` / `unbound`, for reasons shown to operators."""
    return f"bound to {driver}" if driver else "unbound"


MAX_QUOTE = 300  # characters of a value a message quotes: enough to recognise it, never a flood in the log
_COUNT_UP_TO = 1 << 20  # past the cut, count this many more characters at most (a bomb would never end)


def cut(text: str, limit: int = MAX_QUOTE) -> str:
    """`text` itself when short, else its start and how much was left out: a message stays one readable line."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def show(value: object) -> str:
    """A config value as a problem message quotes it: JSON where it can be, repr otherwise; cut to MAX_QUOTE
    characters. The JSON is encoded piece by piece and dropped past the cut, so a huge value (an alias bomb
    handed to parse_config directly) never becomes a huge string."""
    kept: list[str] = []
    length = 0
    try:
        for piece in json.JSONEncoder(sort_keys=True, default=str).iterencode(value):
            if length <= MAX_QUOTE:
                kept.append(piece)
            length += len(piece)
            if length > MAX_QUOTE + _COUNT_UP_TO:
                return f"{''.join(kept)[:MAX_QUOTE]}… (over {_COUNT_UP_TO} more characters)"
    except (TypeError, ValueError, RecursionError):
        return _shown_by_repr(value)
    text = "".join(kept)
    return text if length <= MAX_QUOTE else f"{text[:MAX_QUOTE]}… ({length - MAX_QUOTE} more characters)"


def _shown_by_repr(value: object) -> str:
    try:
        return cut(repr(value))
    except RecursionError:
        return f"<a {type(value).__name__} nested too deeply to show>"


@dataclass(frozen=True)
class ListKey:
    """A selector key whose value is a non-empty list of strings of one shape."""

    expected: str  # how the problem message describes a good value
    pattern: re.Pattern[str]
    normalize: Callable[[str], str] = str

    def parse(self, value: object) -> tuple[str, ...] | None:
        if not isinstance(value, list) or not value:
            return None
        if not all(isinstance(v, str) and self.pattern.match(v) for v in value):
            return None
        return tuple(dict.fromkeys(self.normalize(v) for v in value))

    def checked(self, value: object) -> tuple[tuple[str, ...] | None, str | None]:
        """The parsed value, or None and the problem message."""
        parsed = self.parse(value)
        return (parsed, None) if parsed is not None else (None, f"expected {self.expected}, got {show(value)}")


# A selector key's parser: the parsed value, or None and why it was refused.
KeyParser = Callable[[object], tuple[Any, str | None]]


def parse_keys(
    raw: Mapping[Any, Any], kind: str, keys: Mapping[str, tuple[str, KeyParser]], bad: Callable[[str, str], None]
) -> dict[str, Any] | None:
    """A kind's `selectors` mapping parsed key by key (`keys`: config key → (dataclass field, parser)); every
    problem is reported through `bad` as `selectors.<key>`, and None comes back when there was any."""
    values: dict[str, Any] = {}
    ok = True
    for key, value in raw.items():
        where = f"selectors.{key}"
        if key not in keys:
            bad(where, f"unknown selector for deviceType {kind} (expected one of {', '.join(keys)})")
            ok = False
            continue
        field_name, parser = keys[key]
        parsed, reason = parser(value)
        if parsed is None:
            bad(where, reason or f"invalid value {show(value)}")
            ok = False
        else:
            values[field_name] = parsed
    return values if ok else None
