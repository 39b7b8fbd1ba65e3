"""Atomic writes and deterministic JSON.

Every stage output is first written beside its final place and renamed at the end, so a
failed or killed stage never leaves something that looks complete (dvc-scaling.md 2.8).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from vla_pipeline.errors import PipelineError


def to_jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and non-finite floats into plain JSON values."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def dumps_json(obj: Any) -> str:
    """Sorted keys, fixed indentation, trailing newline: same content -> same bytes."""
    return json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def _explain_os_error(exc: OSError, path: Path) -> PipelineError:
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "the file system is read-only",
    }.get(exc.errno, exc.strerror or str(exc))
    return PipelineError(f"could not write {path}: {reason}; earlier outputs were left intact")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes 0600 files; outputs are ordinary files
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise _explain_os_error(exc, path) from exc
    _fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, dumps_json(obj))


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PipelineError(f"{what} not found: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{what} {path} is not valid JSON ({exc}); is it truncated?") from exc


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `path` in one rename.

    On any exception (or a kill) the temporary directory is removed or left as a hidden
    `.<name>.tmp-*` sibling, and whatever was at `path` before stays untouched.
    """
    path = Path(path)
    remove_stale_temporaries(path.parent, path.name)  # left by a killed run
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        tmp.chmod(0o755)
    except OSError as exc:
        raise _explain_os_error(exc, path) from exc
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(path.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _explain_os_error(exc, path) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(parent: str | Path, name: str) -> None:
    """Delete `.name.tmp-*` / `.name.old-*` left behind by a killed run."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    path = parent / name
    olds = sorted(parent.glob(f".{name}.old-*"))
    if olds and not path.exists():
        # A kill between the two renames of atomic_directory left only the old copy: restore it.
        os.replace(olds[-1], path)
    for child in parent.glob(f".{name}.*"):
        if child.name.startswith((f".{name}.tmp-", f".{name}.old-")):
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
