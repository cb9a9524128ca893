"""The CNI spec versions vnfio speaks. Standard library only: the start-up path imports it."""

from __future__ import annotations

CURRENT = "1.1.0"
SUPPORTED: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def version_info() -> dict[str, object]:
    """What VERSION prints: the reference skel answers with its newest version and the full list."""
    return {"cniVersion": CURRENT, "supportedVersions": list(SUPPORTED)}
