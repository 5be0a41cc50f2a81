"""File helpers shared by the formats: check the directory first, write whole files or nothing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["writable_path", "readable_path", "write_atomically"]


def writable_path(owner: str, path: str | os.PathLike[str]) -> Path:
    """`path` as a Path whose directory exists; FileNotFoundError naming both otherwise."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"{owner}: cannot write {str(target)!r}: directory {str(folder)!r} does not exist")
    if target.is_dir():
        raise IsADirectoryError(f"{owner}: cannot write {str(target)!r}: it is a directory")
    return target


def readable_path(owner: str, path: str | os.PathLike[str]) -> Path:
    """`path` as a Path to an existing file; FileNotFoundError naming it otherwise."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"{owner}: no file {str(source)!r}")
    return source


def write_atomically(target: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `target`, then rename it: readers never see half a file."""
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
