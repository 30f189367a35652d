"""Shared test fixtures. Tests run offline: nothing may reach a model hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def shared_path(relative: str) -> Path:
    """A file under ../shared/data; fail (not skip) with the path when it is missing."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.fail(f"shared data file missing: {path} (expected beside the project root)")
    return path


@pytest.fixture
def shared_data():
    return shared_path
