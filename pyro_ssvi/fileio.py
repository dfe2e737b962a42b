"""Atomic file writes: a reader (or a crash) never sees a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

from .errors import SSVIError, SSVIWriteError

__all__ = ["atomic_write"]

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[Any], None]) -> None:
    """Call ``write(file)`` on a temporary binary file next to ``path``, fsync, then ``os.replace``.

    Whatever happens inside ``write`` (an exception, a kill), ``path`` holds either its old
    content or the complete new content, never a mix; the temporary file is removed on error.
    Missing parent directories are created.

    :raises SSVIWriteError: the file system refused (a full disk, no permission); the message
        names the file and says that its previous version is intact.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, SSVIError):
            kept = f"; the previous {path.name} is intact" if path.exists() else ""
            raise SSVIWriteError(f"could not write {path}: {exc.strerror or exc}{kept}") from exc
        raise
