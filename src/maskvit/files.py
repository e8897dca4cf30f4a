"""Atomic writes: a crash or a full disk mid-write leaves the previous file intact."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from .errors import MaskvitError


def ensure_folder(path, option: str = "--output") -> Path:
    """Create an output folder, or say in one line why it cannot be one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MaskvitError(f"{path}: is a file, not a folder; choose another {option}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MaskvitError(f"{path}: cannot create the output folder ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise MaskvitError(f"{path}: output folder is not writable")
    return path


def output_file(path, option: str) -> Path:
    """Check a results file's path before the work that fills it, so a typo does not cost the
    work: its folder is created if missing, and it must not be a folder itself."""
    path = Path(path)
    if path.is_dir():
        raise MaskvitError(f"{path}: is a folder; give {option} a file name")
    ensure_folder(path.parent, option)
    return path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` (same suffix); rename it over `path` on success."""
    path, tmp = Path(path), None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should read like any other file
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise MaskvitError(f"{path}: could not write ({e.strerror or e}); the previous file, if any, is untouched") from None
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
