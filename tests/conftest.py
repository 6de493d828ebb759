"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) and never need ../shared/data: tests
that read it take the `shared_data_dir` fixture and skip when it is absent."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from semrl.models.hardware import cpu_bf16_feature as CPU_BF16_FEATURE  # noqa: E402  (the real probe, before the pin)


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


@pytest.fixture(autouse=True, scope="session")
def float32_on_every_cpu() -> Iterator[None]:
    """`model.dtype: auto` picks bfloat16 on CPUs with AMX or AVX512-BF16 and float32 elsewhere; the
    tests pin float32 (session-wide, so module fixtures that train see it too) to check the same
    numbers on every CI machine. Tests of the choice itself are marked `cpu_dtype_auto`; bfloat16
    training is tested with an explicit `dtype: bfloat16`."""
    import semrl.models.hardware

    with pytest.MonkeyPatch.context() as mp:
        # choose_dtype looks the probe up in its own module, semrl.models.hardware
        mp.setattr(semrl.models.hardware, "cpu_bf16_feature", lambda: None)
        yield


@pytest.fixture(autouse=True)
def cpu_dtype_auto(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("cpu_dtype_auto") is not None:
        monkeypatch.setattr("semrl.models.hardware.cpu_bf16_feature", CPU_BF16_FEATURE)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A throwaway model cache for one test module: the tiny model is built into it once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEMRL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield
