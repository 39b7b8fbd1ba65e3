import errno
import os

import pytest

from vla_pipeline.errors import PipelineError
from vla_pipeline.io import atomic_directory, dumps_json, write_json_atomic


def test_json_is_deterministic_and_sorted():
    assert dumps_json({"b": 1, "a": [1.5, float("nan")]}) == '{\n  "a": [\n    1.5,\n    null\n  ],\n  "b": 1\n}\n'


def test_atomic_directory_replaces_only_on_success(tmp_path):
    out = tmp_path / "ckpt"
    with atomic_directory(out) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed mid-write")
    assert (out / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporaries left


def test_disk_full_gives_a_clear_error_and_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"v": 1})

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(PipelineError, match="disk is full"):
        write_json_atomic(target, {"v": 2})
    monkeypatch.undo()
    assert target.read_text() == dumps_json({"v": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_kill_between_the_two_renames_is_recovered(tmp_path):
    out = tmp_path / "ckpt"
    with atomic_directory(out) as tmp:
        (tmp / "weights").write_text("v1")
    # State after a kill right after `out` was moved aside, before the new one moved in:
    os.replace(out, tmp_path / ".ckpt.old-1234")
    (tmp_path / ".ckpt.tmp-abcd").mkdir()
    with pytest.raises(RuntimeError):
        with atomic_directory(out):
            raise RuntimeError("fails again")
    assert (out / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 KiB tmpfs (needs root, as on CI); skipped where mounting is not allowed."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_real_disk_full_keeps_earlier_outputs(tiny_disk):
    metrics = tiny_disk / "metrics.json"
    write_json_atomic(metrics, {"v": 1})
    with pytest.raises(PipelineError, match="disk is full"):
        write_json_atomic(metrics, {"blob": "x" * 400_000})
    assert metrics.read_text() == dumps_json({"v": 1})
    with pytest.raises(PipelineError, match="disk is full"):
        with atomic_directory(tiny_disk / "ckpt") as tmp:
            (tmp / "weights").write_bytes(b"\0" * 400_000)
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["metrics.json"]


def test_read_only_disk_gives_a_clear_error(tiny_disk):
    import subprocess

    metrics = tiny_disk / "metrics.json"
    write_json_atomic(metrics, {"v": 1})
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    with pytest.raises(PipelineError, match="read-only"):
        write_json_atomic(metrics, {"v": 2})
    with pytest.raises(PipelineError, match="read-only"):
        with atomic_directory(tiny_disk / "ckpt"):
            pass
    assert metrics.read_text() == dumps_json({"v": 1})
