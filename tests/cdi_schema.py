"""Validation of CDI spec files as a runtime's CDI library loads them: the CDI JSON schema (a verbatim copy in
`deviceplugin/cdi_schema/`), plus the rules the schema misses (env entries are `KEY=VALUE`, no unknown fields at
the top and in a device, a known cdiVersion). Shared by the device plugin's and the DRA driver's tests."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parent / "deviceplugin" / "cdi_schema"
KNOWN_VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")
_ENV = re.compile(r"[^=\0]+=[^\0]*\Z")


def cdi_problems(document: Any) -> list[str]:
    """Every reason a CDI library would refuse `document`; [] when it loads."""
    from jsonschema import Draft7Validator
    from referencing import Registry
    from referencing.jsonschema import DRAFT7

    schema = json.loads((SCHEMA_DIR / "schema.json").read_text())
    defs = json.loads((SCHEMA_DIR / "defs.json").read_text())
    registry = Registry().with_resource("defs.json", DRAFT7.create_resource(defs))
    validator = Draft7Validator(schema, registry=registry)
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
    if not isinstance(document, dict):
        return problems or ["not an object"]
    if document.get("cdiVersion") not in KNOWN_VERSIONS:
        problems.append(f"unknown cdiVersion {document.get('cdiVersion')!r}")
    problems += [f"unknown field {key!r}" for key in document if key not in schema["properties"]]
    edits = [document.get("containerEdits") or {}]
    for device in document.get("devices") or []:
        problems += [f"device: unknown field {key!r}" for key in device if key not in ("name", "annotations",
                                                                                      "containerEdits")]
        edits.append(device.get("containerEdits") or {})
        if not device.get("containerEdits"):
            problems.append(f"device {device.get('name')!r} has no container edits")
    for edit in edits:
        problems += [f"env entry {entry!r} is not KEY=VALUE" for entry in edit.get("env", []) if not _ENV.match(entry)]
    return problems


def load_spec(path: Path) -> dict[str, Any]:
    """A written spec file, checked: AssertionError naming every problem."""
    document = json.loads(path.read_text())
    problems = cdi_problems(document)
    assert not problems, f"{path}: {problems}"
    return document
