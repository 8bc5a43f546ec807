"""Files written whole or not at all (a temporary beside the target, renamed into place), the one cache root, and
the check that an input file exists."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import AAError


def require_file(path: str | os.PathLike, what: str, fix: str) -> Path:
    """Return `path` as a Path, or raise AAError if it is not an existing file."""
    p = Path(path)
    if not p.is_file():
        raise AAError(what, f"{p} does not exist" if not p.exists() else f"{p} is not a file", fix)
    return p


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (removed first if present)."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); rename it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp makes 0600 files, and some writers (safetensors) recreate the file: set the usual
        # permissions on what was written, just before it takes the final name
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def cache_root(sub: str = "") -> Path:
    """The project's one cache root: $AA_CACHE_DIR, else $XDG_CACHE_HOME/animate-anywhere, else
    ~/.cache/animate-anywhere; `sub` names a folder under it (e.g. 'identity', 'onnx')."""
    root = os.environ.get("AA_CACHE_DIR")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "animate-anywhere"
    return base / sub if sub else base
