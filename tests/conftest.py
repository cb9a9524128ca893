"""Fixtures more than one subject uses: a generated sample board and a short private directory for unix sockets.
Each subject folder (`deviceplugin/`, `cni/`) has a conftest of its own; support modules (stand-ins, scenario
builders) sit here, beside this file, so any subject can import them."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cni_helpers import build_cni_bin

from deviceplugin.sampleboard import SampleBoard, build_sample_board


@pytest.fixture(scope="session", autouse=True)
def cni_bin() -> Path:
    """build/cni-bin (the static `vnfio` and `vnfio-inproc`), brought up to date once per run: the CNI tests exec
    them the way a runtime does. `make test` has built them already; `python -m pytest` alone builds them here."""
    return build_cni_bin()


@pytest.fixture
def board(tmp_path: Path) -> SampleBoard:
    """The generated LX2160A-like board: DPAA2 containers and vfio-pci functions, removed with tmp_path."""
    return build_sample_board(tmp_path / "board")


@pytest.fixture
def noiommu_board(tmp_path: Path) -> SampleBoard:
    return build_sample_board(tmp_path / "board", noiommu=True)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short private directory (a unix socket path must fit in 108 bytes; pytest's tmp_path may not)."""
    path = Path(tempfile.mkdtemp(prefix="vnfio-s-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
