"""Builders for DRA scenarios: ResourceClaims as the scheduler leaves them, and what the CDI spec a claim got
gives a container (to compare with the device plugin's Allocate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdi_schema import load_spec

NODE = "worker-7"
DRIVER = "vnfio.io"


def allocated_claim(
    name: str, uid: str, results: list[tuple[str, str]], *, namespace: str = "default", driver: str = DRIVER,
    pool: str = NODE,
) -> dict[str, Any]:
    """A ResourceClaim allocated on `pool`: (request, device) per result."""
    requests = sorted({r for r, _ in results})
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": {"devices": {"requests": [
            {"name": r, "exactly": {"deviceClassName": "dpaa2-dprc", "count": sum(1 for q, _ in results if q == r)}}
            for r in requests
        ]}},
        "status": {"allocation": {"devices": {"results": [
            {"request": r, "driver": driver, "pool": pool, "device": d} for r, d in results
        ]}}},
    }


def container_view(spec_path: Path, cdi_ids: list[str]) -> tuple[dict[str, str], set[tuple[str, str, str]]]:
    """What a runtime gives a container for `cdi_ids` from one spec file (validated against the CDI schema):
    env and device nodes (container path, host path, permissions), spec-level edits included."""
    spec = load_spec(spec_path)
    names = {i.split("=", 1)[1] for i in cdi_ids}
    edits = [spec.get("containerEdits") or {}]
    edits += [d["containerEdits"] for d in spec["devices"] if d["name"] in names]
    env: dict[str, str] = {}
    nodes: set[tuple[str, str, str]] = set()
    for edit in edits:
        for entry in edit.get("env", []):
            key, _, value = entry.partition("=")
            env[key] = value
        for node in edit.get("deviceNodes", []):
            nodes.add((node["path"], node["hostPath"], node.get("permissions", "rwm")))
    return env, nodes
