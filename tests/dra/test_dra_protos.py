"""The committed DRA and plugin-registration stubs match protos/, and the protos match kubelet's wire contract
(package, service and method names, field numbers and types)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from repo import REPO

STUBS = ("v1", "v1beta1", "pluginregistration")


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(["bash", str(REPO / "hack/gen-protos.sh"), str(tmp_path)], check=True, env=env)
    for stub in STUBS:
        for name in ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py"):
            rel = f"deviceplugin/kubelet/dra/{stub}/{name}"
            assert (tmp_path / rel).read_text() == (REPO / rel).read_text(), f"{rel} is stale: run make protos"


def _fields(message: object) -> dict[str, tuple[int, int, bool]]:
    desc = message.DESCRIPTOR  # type: ignore[attr-defined]
    return {f.name: (f.number, f.type, f.is_repeated) for f in desc.fields}


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_dra_wire_contract(version: str) -> None:
    import importlib

    from google.protobuf.descriptor import FieldDescriptor as F

    api = importlib.import_module(f"deviceplugin.kubelet.dra.{version}.api_pb2")
    rep, opt = True, False
    assert api.DESCRIPTOR.package == f"k8s.io.kubelet.pkg.apis.dra.{version}"
    assert _fields(api.Claim) == {
        "namespace": (1, F.TYPE_STRING, opt),
        "uid": (2, F.TYPE_STRING, opt),
        "name": (3, F.TYPE_STRING, opt),
    }
    assert _fields(api.NodePrepareResourcesRequest) == {"claims": (1, F.TYPE_MESSAGE, rep)}
    assert _fields(api.NodeUnprepareResourcesRequest) == {"claims": (1, F.TYPE_MESSAGE, rep)}
    prepared = api.NodePrepareResourcesResponse.DESCRIPTOR.fields_by_name["claims"]
    assert prepared.number == 1 and prepared.message_type.GetOptions().map_entry
    assert prepared.message_type.fields_by_name["key"].type == F.TYPE_STRING
    assert prepared.message_type.fields_by_name["value"].message_type.name == "NodePrepareResourceResponse"
    unprepared = api.NodeUnprepareResourcesResponse.DESCRIPTOR.fields_by_name["claims"]
    assert unprepared.number == 1 and unprepared.message_type.GetOptions().map_entry
    assert unprepared.message_type.fields_by_name["value"].message_type.name == "NodeUnprepareResourceResponse"
    assert _fields(api.NodePrepareResourceResponse) == {
        "devices": (1, F.TYPE_MESSAGE, rep),
        "error": (2, F.TYPE_STRING, opt),
    }
    assert _fields(api.NodeUnprepareResourceResponse) == {"error": (1, F.TYPE_STRING, opt)}
    assert _fields(api.Device) == {
        "request_names": (1, F.TYPE_STRING, rep),
        "pool_name": (2, F.TYPE_STRING, opt),
        "device_name": (3, F.TYPE_STRING, opt),
        "cdi_device_ids": (4, F.TYPE_STRING, rep),
    }
    services = {s.full_name: [m.name for m in s.methods] for s in api.DESCRIPTOR.services_by_name.values()}
    assert services == {
        f"k8s.io.kubelet.pkg.apis.dra.{version}.DRAPlugin": ["NodePrepareResources", "NodeUnprepareResources"]
    }


def test_registration_wire_contract() -> None:
    from google.protobuf.descriptor import FieldDescriptor as F

    from deviceplugin.kubelet.dra.pluginregistration import api_pb2 as api

    assert api.DESCRIPTOR.package == "pluginregistration"
    assert _fields(api.PluginInfo) == {
        "type": (1, F.TYPE_STRING, False),
        "name": (2, F.TYPE_STRING, False),
        "endpoint": (3, F.TYPE_STRING, False),
        "supported_versions": (4, F.TYPE_STRING, True),
    }
    assert _fields(api.RegistrationStatus) == {
        "plugin_registered": (1, F.TYPE_BOOL, False),
        "error": (2, F.TYPE_STRING, False),
    }
    assert _fields(api.InfoRequest) == {}
    assert _fields(api.RegistrationStatusResponse) == {}
    services = {s.full_name: [m.name for m in s.methods] for s in api.DESCRIPTOR.services_by_name.values()}
    assert services == {"pluginregistration.Registration": ["GetInfo", "NotifyRegistrationStatus"]}
