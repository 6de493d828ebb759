"""Where models come from: the names `tiny` and `gemma-3-270m`, and the on-disk cache they build into.

Caches live under ``$SEMRL_CACHE_DIR/models`` (else ``~/.cache/semrl/models``) and are written into
a temporary folder that is renamed into place when complete, so a killed conversion never leaves a
half-written model behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from semrl.models.gguf import convert_gemma_270m
from semrl.models.tiny import build_tiny_model

TINY_MODEL = "tiny"
GEMMA_270M = "gemma-3-270m"
# Bump when the tiny recipe changes: the cache key includes it, so stale builds are not reused.
TINY_MODEL_VERSION = 1
GEMMA_CACHE_NAME = "gemma-3-270m"
# Present only in a finished cache entry (written last by save_pretrained).
_COMPLETE_MARKER = "config.json"


def model_cache_dir() -> Path:
    """Where built and converted models live: $SEMRL_CACHE_DIR/models, else ~/.cache/semrl/models."""
    root = os.environ.get("SEMRL_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "semrl") / "models"


def _cached_build(target: Path, build: Callable[[Path], None]) -> Path:
    """Return `target`, building it first with `build(tmp_dir)` if it is not complete.

    The build writes into a temporary sibling folder that is renamed onto `target` only when
    complete. If another process finished the same build first, its result is kept and ours is
    discarded, so concurrent first uses (tests, accelerate workers) are safe.
    """
    if (target / _COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        build(tmp)
        # mkdtemp makes the folder private (0700); a cache entry gets the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if target.exists() and not (target / _COMPLETE_MARKER).is_file():
            shutil.rmtree(target, ignore_errors=True)  # leftover of an interrupted older layout
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str) -> str | Path:
    """The loadable location of the model a config names.

    'tiny' builds (once) and returns a cached local directory; 'gemma-3-270m' converts the packaged
    GGUF (once) into a cached transformers checkpoint; anything else (a hub id or a local path) is
    returned unchanged.
    """
    if name == TINY_MODEL:
        target = model_cache_dir() / f"tiny-v{TINY_MODEL_VERSION}"
        return _cached_build(target, lambda tmp: build_tiny_model(tmp, seed=0))
    if name == GEMMA_270M:
        return _cached_build(model_cache_dir() / GEMMA_CACHE_NAME, convert_gemma_270m)
    return name
