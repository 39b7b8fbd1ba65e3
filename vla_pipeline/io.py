"""Atomic writes and deterministic JSON.

Every stage output is first written beside its final place and renamed at the end, so a
failed or killed stage never leaves something that looks complete (dvc-scaling.md 2.8).
"""

from __future__ import annotations

import contextlib
import contextvars
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
        errno.EEXIST: "a file is in the way of its folder",
        errno.ENOTDIR: "a file is in the way of its folder",
    }.get(exc.errno, exc.strerror or str(exc))
    # What became of the other outputs is said by the stage's error handler (stages/common.py),
    # from `replaced_outputs()` and whether DVC removed them: only it knows.
    return PipelineError(f"could not write {path}: {reason}")


# ------------------------------------------------------------ all-or-nothing stage outputs

_REPLACED: list[Path] = []  # outputs this process has put in place (for truthful messages)
_TRANSACTION: contextvars.ContextVar = contextvars.ContextVar("stage_outputs", default=None)


def replaced_outputs() -> list[Path]:
    """The outputs this process has already renamed into place, in order."""
    return list(_REPLACED)


def forget_replaced() -> None:
    """A stage command starts counting afresh (several run in one process under tests)."""
    _REPLACED.clear()


def check_writable(*paths: str | Path) -> None:
    """Before any work: each output's folder exists (or can be made) and takes a new entry
    (where its temporary will be written and renamed). Raises the write's PipelineError."""
    for path in map(Path, paths):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise _explain_os_error(exc, path) from exc


class StageOutputs:
    """Every output of a stage replaced together, or none.

    Construct it with the stage's destinations before the work (`check_writable`), and write
    them inside `with outputs:` through the usual `atomic_directory` / `write_*_atomic` (and
    what calls them: `write_checkpoint`, `write_round`, ...): inside the block each one is
    written to its hidden temporary beside its destination and only staged; when the block
    ends without an error they are renamed into place one after another. If any write fails
    (or an exception, Ctrl-C or SIGTERM ends the block) nothing is renamed and every temporary
    is removed; if a rename itself fails, the ones already renamed are put back.
    """

    def __init__(self, *destinations: str | Path):
        check_writable(*destinations)
        self._open: set[str] = set()  # temporaries being written (their contents are written directly)
        self._staged: dict[Path, Path] = {}  # destination -> its finished temporary, in write order
        self._token = None

    def __enter__(self) -> "StageOutputs":
        if _TRANSACTION.get() is not None:
            raise RuntimeError("StageOutputs blocks do not nest")
        self._token = _TRANSACTION.set(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        _TRANSACTION.reset(self._token)
        if exc_type is not None:
            self.discard()
            return
        self.commit()

    def owns(self, path: Path) -> bool:
        """`path` lies inside a temporary of this transaction (written directly, moves with it)."""
        parents = {os.path.abspath(p) for p in [path, *path.parents]}
        return bool(parents & (self._open | {os.path.abspath(t) for t in self._staged.values()}))

    def opened(self, tmp: Path) -> None:
        self._open.add(os.path.abspath(tmp))

    def stage(self, tmp: Path, dest: Path) -> None:
        self._open.discard(os.path.abspath(tmp))
        previous = self._staged.pop(dest, None)
        if previous is not None:
            _remove(previous)
        self._staged[dest] = tmp

    def discard(self) -> None:
        for tmp in [*self._staged.values(), *map(Path, self._open)]:
            _remove(tmp)
        self._staged.clear()
        self._open.clear()

    def commit(self) -> None:
        done: list[tuple[Path, Path | None]] = []
        dest = None
        try:
            for dest, tmp in self._staged.items():
                old = None
                if dest.exists() or dest.is_symlink():
                    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
                    _remove(old)
                    os.replace(dest, old)
                try:
                    os.replace(tmp, dest)
                except OSError:
                    if old is not None:
                        os.replace(old, dest)
                    raise
                done.append((dest, old))
        except OSError as exc:
            for put, old in reversed(done):  # put back what was already renamed
                with contextlib.suppress(OSError):
                    _remove(put)
                    if old is not None:
                        os.replace(old, put)
            self.discard()
            raise _explain_os_error(exc, dest) from exc
        for put, old in done:
            if old is not None:
                _remove(old)
            _fsync_dir(put.parent)
            _REPLACED.append(put)
        self._staged.clear()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _transaction_for(path: Path) -> StageOutputs | None:
    """The open StageOutputs that defers this write, if any (not a file inside its temporaries)."""
    tx = _TRANSACTION.get()
    return tx if tx is not None and not tx.owns(path) else None


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
    tx = _transaction_for(path)
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
            if tx is not None:
                tx.stage(Path(tmp), path)  # renamed with the stage's other outputs
                return
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise _explain_os_error(exc, path) from exc
    _fsync_dir(path.parent)
    if tx is None and not _inside_temporary(path):
        _REPLACED.append(path)


def _inside_temporary(path: Path) -> bool:
    return any(_TEMPORARY.match(p.name) for p in [path.parent, *path.parent.parents])


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
    tx = _transaction_for(path)
    remove_stale_temporaries(path.parent, path.name)  # left by a killed run
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
        tmp.chmod(0o755)
    except OSError as exc:
        raise _explain_os_error(exc, path) from exc
    if tx is not None:
        tx.opened(tmp)
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as fh:
                    os.fsync(fh.fileno())
        if tx is not None:
            tx.stage(tmp, path)  # renamed with the stage's other outputs
            return
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(path.parent)
        if not _inside_temporary(path):
            _REPLACED.append(path)
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
