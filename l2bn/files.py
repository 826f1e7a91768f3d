"""Output files: checked before the work, written atomically after it (never half-written)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from l2bn.errors import ConfigError


def check_writable(path: Path) -> None:
    """Fail before hours of work, not after, when an output file cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a folder; give a file name")
    if not parent.is_dir():
        raise ConfigError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot write {path}: folder {parent} is not writable")


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success."""
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 − umask),
        # so results written by one user stay readable by the rest of the group.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any) -> None:
    with atomic_open(path) as f:
        json.dump(payload, f, indent=2, allow_nan=False)
        f.write("\n")


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN or infinity: a diverged run's non-finite numbers are written as null."""
    return x if math.isfinite(x) else None
