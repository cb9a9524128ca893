"""DRA driver fixtures: the kubelet stand-in (plugin manager and DRA manager), the API server stand-in with this
node, a kubeconfig pointing at it, and short kubelet directories for the sockets."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from apiserver_stub import ApiServerStub
from dra_harness import KubeletDirs, write_kubeconfig
from dra_kubelet_stub import DraKubeletStub
from dra_scenarios import NODE


@pytest.fixture
def kubelet_dirs() -> Iterator[KubeletDirs]:
    """Short paths (a unix socket path must fit in 108 bytes): plugins_registry, plugins, and a CDI dir."""
    root = Path(tempfile.mkdtemp(prefix="vnfio-d-"))
    try:
        yield KubeletDirs(root / "reg", root / "plugins", root / "cdi")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def apiserver() -> Iterator[ApiServerStub]:
    stub = ApiServerStub(nodes=(NODE,)).start()
    try:
        yield stub
    finally:
        stub.stop()


@pytest.fixture
def kubeconfig(tmp_path: Path, apiserver: ApiServerStub) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", apiserver.url)


@pytest.fixture
def dra_kubelet(kubelet_dirs: KubeletDirs) -> Iterator[DraKubeletStub]:
    with DraKubeletStub(kubelet_dirs.registry) as stub:
        yield stub
