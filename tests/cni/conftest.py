"""CNI fixtures: a test world of unique namespaces, links and an IPAM dataDir, removed afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cni_helpers import Scenario


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Scenario]:
    """Unique namespaces, links and an IPAM dataDir for one CNI test, all removed afterwards."""
    scenario = Scenario(tmp_path)
    try:
        yield scenario
    finally:
        scenario.close()
