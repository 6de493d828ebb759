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


@pytest.fixture(scope="session")
def fixture_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory the tests write themselves: an NTREX-shaped corpus and CMRC/MMLU/GSM8K
    files (see tests/fixture_data.py). Read-only for tests: it is shared by the session."""
    from fixture_data import write_fixture_data_dir

    return write_fixture_data_dir(tmp_path_factory.mktemp("fixture-data") / "data")
