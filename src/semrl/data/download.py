"""Downloads from public origins at pinned commits, checked by sha256, into semrl's cache."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from semrl.core.errors import DataError
from semrl.core.io import atomic_path

if TYPE_CHECKING:
    pass


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    return sha256_bytes(path.read_bytes())


def git_blob_sha1(data: bytes) -> str:
    """Git's object id of a file's content (what `git ls-tree` and GitHub's tree API list), so a
    download is checked against the listing of a pinned commit."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def data_cache_dir() -> Path:
    """Where downloaded corpora live: $SEMRL_CACHE_DIR/data, else ~/.cache/semrl/data."""
    root = os.environ.get("SEMRL_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "semrl") / "data"


def raw_url(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def fetch(url: str) -> bytes:
    """GET a URL; network and HTTP failures raise DataError."""
    import requests

    try:
        response = requests.get(url, timeout=60)
        response.raise_for_status()
    except requests.RequestException as err:
        raise DataError(f"download of {url} failed ({err})") from None
    return response.content


def download_verified(
    url: str, dest: Path, sha256: str, digest_of: Callable[[bytes], str] = sha256_bytes, digest_name: str = "sha256"
) -> Path:
    """Download `url` to `dest` (atomically) unless a copy with the right digest is there.

    The digest is sha256 unless `digest_of` says otherwise (e.g. `git_blob_sha1`, named by
    `digest_name` in the error)."""
    if dest.is_file() and digest_of(dest.read_bytes()) == sha256:
        return dest
    data = fetch(url)
    digest = digest_of(data)
    if digest != sha256:
        raise DataError(
            f"download of {url} has {digest_name} {digest}, expected {sha256} (corrupt or changed upstream)"
        )
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return dest


def no_download_hint(dirname: str, local: Path | None) -> str:
    where = f" ({local} is missing or incomplete)" if local else ""
    return (
        f"Download from GitHub failed{where}. Put a copy of the files in <data dir>/{dirname}/ and pass "
        f"--data-dir <data dir> or set SEMRL_DATA_DIR (or data_dir in the config)."
    )
