"""The installed console scripts answer as documented."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def _script(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else shutil.which(name) or name


def test_device_plugin_help() -> None:
    out = subprocess.run([_script("vnfio-device-plugin"), "--help"], capture_output=True, text=True, check=True)
    assert "usage: vnfio-device-plugin" in out.stdout


def test_cni_version() -> None:
    env = dict(os.environ, CNI_COMMAND="VERSION")
    out = subprocess.run(
        [_script("vnfio")], capture_output=True, text=True, check=True, env=env, stdin=subprocess.DEVNULL
    )
    info = json.loads(out.stdout)
    assert info["cniVersion"] == "1.1.0"
    assert {"0.4.0", "1.0.0", "1.1.0"} <= set(info["supportedVersions"])


def test_cni_help() -> None:
    out = subprocess.run([_script("vnfio"), "--help"], capture_output=True, text=True, check=True)
    assert "CNI_COMMAND=VERSION" in out.stdout
