"""The committed stubs match protos/, and the proto matches the kubelet's v1beta1 wire contract."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from repo import REPO


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(["bash", str(REPO / "hack/gen-protos.sh"), str(tmp_path)], check=True, env=env)
    for name in ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py"):
        fresh = (tmp_path / "deviceplugin/kubelet/dpapi/v1beta1" / name).read_text()
        committed = (REPO / "deviceplugin/kubelet/dpapi/v1beta1" / name).read_text()
        assert fresh == committed, f"deviceplugin/kubelet/dpapi/v1beta1/{name} is stale: run make protos"


def _fields(message: object) -> dict[str, tuple[int, int, bool]]:
    desc = message.DESCRIPTOR  # type: ignore[attr-defined]
    return {f.name: (f.number, f.type, f.is_repeated) for f in desc.fields}


def test_wire_contract() -> None:
    from google.protobuf.descriptor import FieldDescriptor as F

    from deviceplugin.kubelet.dpapi.v1beta1 import api_pb2 as api

    rep, opt = True, False
    assert api.DESCRIPTOR.package == "v1beta1"
    assert _fields(api.RegisterRequest) == {
        "version": (1, F.TYPE_STRING, opt),
        "endpoint": (2, F.TYPE_STRING, opt),
        "resource_name": (3, F.TYPE_STRING, opt),
        "options": (4, F.TYPE_MESSAGE, opt),
    }
    assert _fields(api.DevicePluginOptions) == {
        "pre_start_required": (1, F.TYPE_BOOL, opt),
        "get_preferred_allocation_available": (2, F.TYPE_BOOL, opt),
    }
    assert _fields(api.Device) == {
        "ID": (1, F.TYPE_STRING, opt),
        "health": (2, F.TYPE_STRING, opt),
        "topology": (3, F.TYPE_MESSAGE, opt),
    }
    assert _fields(api.NUMANode) == {"ID": (1, F.TYPE_INT64, opt)}
    assert _fields(api.ContainerPreferredAllocationRequest) == {
        "available_deviceIDs": (1, F.TYPE_STRING, rep),
        "must_include_deviceIDs": (2, F.TYPE_STRING, rep),
        "allocation_size": (3, F.TYPE_INT32, opt),
    }
    assert _fields(api.ContainerAllocateResponse) == {
        "envs": (1, F.TYPE_MESSAGE, rep),
        "mounts": (2, F.TYPE_MESSAGE, rep),
        "devices": (3, F.TYPE_MESSAGE, rep),
        "annotations": (4, F.TYPE_MESSAGE, rep),
        "cdi_devices": (5, F.TYPE_MESSAGE, rep),
    }
    assert _fields(api.DeviceSpec) == {
        "container_path": (1, F.TYPE_STRING, opt),
        "host_path": (2, F.TYPE_STRING, opt),
        "permissions": (3, F.TYPE_STRING, opt),
    }
    assert _fields(api.Mount) == {
        "container_path": (1, F.TYPE_STRING, opt),
        "host_path": (2, F.TYPE_STRING, opt),
        "read_only": (3, F.TYPE_BOOL, opt),
    }
    services = {s.name: [m.name for m in s.methods] for s in api.DESCRIPTOR.services_by_name.values()}
    assert services == {
        "Registration": ["Register"],
        "DevicePlugin": [
            "GetDevicePluginOptions", "ListAndWatch", "GetPreferredAllocation", "Allocate", "PreStartContainer"
        ],
    }
    law = api.DESCRIPTOR.services_by_name["DevicePlugin"].methods_by_name["ListAndWatch"]
    assert law.server_streaming and not law.client_streaming
