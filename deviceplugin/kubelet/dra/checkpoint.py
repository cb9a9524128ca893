"""The DRA driver's checkpoint: which claims it prepared and what it wrote for them, so Unprepare after a driver
restart removes exactly what Prepare made.

One JSON file under `<plugins-dir>/<driver>/`, written atomically (temp file, fsync, rename, fsync of the
directory) *before* Prepare answers:

    {"version": 1, "driver": "vnfio.io", "node": "node-a",
     "claims": {"<uid>": {"namespace": "ns", "name": "claim", "state": "PrepareStarted" | "PrepareCompleted",
                          "cdiSpec": "vnfio-vnfio.io-vfio-<uid>.json", "devices": [{...PreparedDevice...}]}}}

`PrepareStarted` is written before the CDI spec, so a crash in between still names the file to remove.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deviceplugin.atomicfile import write_atomically
from deviceplugin.kubelet.dra.claims import PreparedDevice

log = logging.getLogger(__name__)

VERSION = 1
FILE_NAME = "checkpoint.json"
PREPARE_STARTED = "PrepareStarted"
PREPARE_COMPLETED = "PrepareCompleted"


@dataclass(frozen=True)
class ClaimRecord:
    namespace: str
    name: str
    state: str
    cdi_spec: str
    devices: tuple[PreparedDevice, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "state": self.state,
            "cdiSpec": self.cdi_spec,
            "devices": [d.to_json() for d in self.devices],
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ClaimRecord:
        return ClaimRecord(
            str(data["namespace"]),
            str(data["name"]),
            str(data["state"]),
            str(data["cdiSpec"]),
            tuple(PreparedDevice.from_json(d) for d in data.get("devices") or ()),
        )


@dataclass(frozen=True)
class Checkpoint:
    driver: str
    node: str
    claims: Mapping[str, ClaimRecord] = field(default_factory=dict, hash=False)

    def with_claim(self, uid: str, record: ClaimRecord) -> Checkpoint:
        return Checkpoint(self.driver, self.node, {**self.claims, uid: record})

    def without(self, uid: str) -> Checkpoint:
        return Checkpoint(self.driver, self.node, {k: v for k, v in self.claims.items() if k != uid})


def load(path: Path, driver: str, node: str) -> Checkpoint:
    """The checkpoint at `path`; an empty one when there is none. An unreadable file is kept aside
    (`.corrupt`) and logged, so the driver still starts and an operator can look at what it held."""
    try:
        data = json.loads(path.read_text())
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
        claims = {str(uid): ClaimRecord.from_json(c) for uid, c in (data.get("claims") or {}).items()}
    except FileNotFoundError:
        return Checkpoint(driver, node)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        aside = path.with_name(path.name + ".corrupt")
        log.error("checkpoint %s is unusable (%s): kept as %s, starting without prepared claims", path, exc, aside)
        with suppress(OSError):
            os.replace(path, aside)
        return Checkpoint(driver, node)
    return Checkpoint(driver, node, claims)


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Write atomically: a crash leaves the old file or the new one."""
    document = {
        "version": VERSION,
        "driver": checkpoint.driver,
        "node": checkpoint.node,
        "claims": {uid: record.to_json() for uid, record in sorted(checkpoint.claims.items())},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # 0600: the checkpoint names the pods' claims; only the driver (root) reads it.
    write_atomically(path, json.dumps(document, indent=2), mode=0o600, sync_dir=True)
