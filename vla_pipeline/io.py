"""Atomic writes and deterministic JSON.

Every stage output is first written beside its final place and renamed at the end, so a
failed or killed stage never leaves something that looks complete (dvc-scaling.md 2.8).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import re
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


def _tmp_prefix(path: Path) -> str:
    """Hidden sibling name of a temporary: `.<name>.tmp-<pid>-<random>` (see remove_stale_temporaries)."""
    return f".{path.name}.tmp-{os.getpid()}-"


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    remove_stale_temporaries(path.parent, path.name)  # left by a killed run
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
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
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
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


# `.<name>.tmp-<pid>-<random>` / `.<name>.old-<pid>` (this module), or `.<name>.<8 chars>.tmp`
# and `.<name>.tmp-<8 chars>` (written by earlier versions, without the writer's pid).
_TEMPORARY = re.compile(r"^\.(?P<name>.+?)\.(?:(?:tmp|old)-(?:(?P<pid>\d+)(?:-|$))?.*|[a-z0-9_]{8}\.tmp)$")


def _writer_alive(entry_name: str) -> bool:
    match = _TEMPORARY.match(entry_name)
    if not match or not match["pid"]:
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return True  # never pull a temporary from under this process's own writer
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temporaries(parent: str | Path, name: str) -> list[Path]:
    """Delete `.name.tmp-*` / `.name.old-*` left behind by a killed run; returns what went.

    Files (write_bytes_atomic) and directories (atomic_directory) use the same names; a
    temporary whose writing process is still alive is left alone.
    """
    parent = Path(parent)
    if not parent.is_dir():
        return []
    path = parent / name
    mine = [p for p in parent.glob(f".{glob.escape(name)}.*")
            if (m := _TEMPORARY.match(p.name)) and m["name"] == name and not _writer_alive(p.name)]
    olds = sorted(p for p in mine if p.name.startswith(f".{name}.old-"))
    if olds and not path.exists():
        # A kill between the two renames of atomic_directory left only the old copy: restore it.
        os.replace(olds[-1], path)
        mine.remove(olds[-1])
    for child in mine:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    return sorted(mine)


def sweep_stale_temporaries(root: str | Path) -> list[Path]:
    """Remove every stale temporary under `root` (a killed run's, of any output); returns them.

    A DVC run-cache restore after a kill runs no stage code, so the killed stage's leftovers
    stay until a stage command (each sweeps `data/` first) or `python -m stages sweep` runs.
    """
    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for dirpath, dirnames, filenames in os.walk(root):
        names = {m["name"] for n in dirnames + filenames if (m := _TEMPORARY.match(n))}
        for name in sorted(names):
            removed += remove_stale_temporaries(dirpath, name)
        dirnames[:] = sorted(d for d in dirnames if not _TEMPORARY.match(d))
    return sorted(removed)
