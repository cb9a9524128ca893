"""The CNI modes, one module each, and their registry.

A mode module (`veth`, `macvlan`, `bridge`) declares its options and its `cmd_add`, `cmd_del` and `cmd_check`, and
hands them to the skeleton as its `MODE`; it never sees env vars or stdin. Adding a mode is its module and its
name in MODES. What the modes share lives beside them: `call` (the per-call context and the result), `ipam_calls`,
`masquerade`, `pod_sysctls`, `announce`, `retire` (DEL's removal of the pod link), `check` (CHECK of the pod side).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from cni.modes.call import Call
    from cni.result import Result

MODES = ("veth", "macvlan", "bridge")


@dataclass(frozen=True)
class Mode:
    """What a mode module gives the skeleton. `parse_options` validates the mode's own keys of the raw config
    (the common ones are `cni.netconf`'s) and returns the frozen options record `NetConf.options` carries;
    `status`, if any, says whether the mode can serve ADD (STATUS), before IPAM is asked the same."""

    parse_options: Callable[[Mapping[str, Any]], object]
    add: Callable[[Call], Result]
    delete: Callable[[Call], None]
    check: Callable[[Call], None]
    status: Callable[[Call], None] | None = None


def load_mode(name: str) -> Mode:
    """The mode named `name` (one of MODES), importing its module on first use."""
    module = importlib.import_module(f"cni.modes.{name}")
    mode: Mode = module.MODE
    return mode
