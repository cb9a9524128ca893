"""The device kinds, one module each, and the registry that lists them.

Adding a kind: a discovery reader in `deviceplugin/discovery/`, a kind module here implementing
`deviceplugin.kinds.base.DeviceKind`, and one line in `KINDS` below (plus the sample board and tests).
"""

from __future__ import annotations

from collections.abc import Mapping

from deviceplugin.kinds import fslmc, pci, platform, vhostnet
from deviceplugin.kinds.base import DeviceKind

# deviceType → kind, in the order discovery reads and documentation lists them.
KINDS: Mapping[str, DeviceKind] = {
    fslmc.NAME: fslmc.KIND,
    pci.NAME: pci.KIND,
    platform.NAME: platform.KIND,
    vhostnet.NAME: vhostnet.KIND,
}


def kind_of(name: str) -> DeviceKind:
    """The kind registered under `name` (a pool's deviceType); KeyError names the known ones."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown device kind {name!r} (known: {', '.join(KINDS)})") from None
