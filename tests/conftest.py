"""Shared fixtures: a generated sample board per test (normal and noiommu)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deviceplugin.sampleboard import SampleBoard, build_sample_board

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def board(tmp_path: Path) -> SampleBoard:
    return build_sample_board(tmp_path / "board")


@pytest.fixture
def noiommu_board(tmp_path: Path) -> SampleBoard:
    return build_sample_board(tmp_path / "board", noiommu=True)
