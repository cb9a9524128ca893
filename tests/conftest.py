"""Shared fixtures: a generated sample board per test (normal and noiommu), a device-plugin directory with a
kubelet stand-in on it, a CNI test world of unique namespaces and links, and a short directory for unix sockets."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cni_helpers import Scenario, build_cni_bin

from deviceplugin.sampleboard import SampleBoard, build_sample_board

if TYPE_CHECKING:
    from kubelet_stub import KubeletStub

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def cni_bin() -> Path:
    """build/cni-bin (the static `vnfio` and `vnfio-inproc`), brought up to date once per run: the CNI tests exec
    them the way a runtime does. `make test` has built them already; `python -m pytest` alone builds them here."""
    return build_cni_bin()


@pytest.fixture
def board(tmp_path: Path) -> SampleBoard:
    return build_sample_board(tmp_path / "board")


@pytest.fixture
def noiommu_board(tmp_path: Path) -> SampleBoard:
    return build_sample_board(tmp_path / "board", noiommu=True)


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    """A fresh, short device-plugin directory (kubelet's /var/lib/kubelet/device-plugins)."""
    from kubelet_stub import temporary_plugin_dir  # grpc and the protos: only for the tests that ask

    with temporary_plugin_dir() as path:
        yield path


@pytest.fixture
def kubelet(plugin_dir: Path) -> Iterator[KubeletStub]:
    """The kubelet stand-in, serving Registration on `plugin_dir`/kubelet.sock."""
    from kubelet_stub import KubeletStub

    with KubeletStub(plugin_dir) as stub:
        yield stub


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Scenario]:
    """Unique namespaces, links and an IPAM dataDir for one CNI test, all removed afterwards."""
    scenario = Scenario(tmp_path)
    try:
        yield scenario
    finally:
        scenario.close()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short private directory (a unix socket path must fit in 108 bytes; pytest's tmp_path may not)."""
    path = Path(tempfile.mkdtemp(prefix="vnfio-s-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
