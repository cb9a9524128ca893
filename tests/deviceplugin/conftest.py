"""Device plugin fixtures: a device-plugin directory with a kubelet stand-in on it (the sample board fixtures are
in the root conftest: the deploy tests use them too)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kubelet_stub import KubeletStub


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
