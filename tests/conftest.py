"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) and never need ../shared/data: tests
that read it take the `shared_data_dir` fixture and skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared datasets directory ($SEMRL_DATA_DIR); the test is skipped when it is absent."""
    value = os.environ.get("SEMRL_DATA_DIR")
    if not value or not Path(value).is_dir():
        pytest.skip("SEMRL_DATA_DIR is not set or does not exist: shared-data test skipped")
    return Path(value)
