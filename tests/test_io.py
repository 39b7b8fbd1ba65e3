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
    # State after a kill right after `out` was moved aside, before the new one moved in
    # (4194304 is above Linux's largest pid: that writer is surely gone):
    os.replace(out, tmp_path / ".ckpt.old-4194304")
    (tmp_path / ".ckpt.tmp-4194304-abcd").mkdir()
    with pytest.raises(RuntimeError):
        with atomic_directory(out):
            raise RuntimeError("fails again")
    assert (out / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 KiB tmpfs (needs root, as on CI); skipped, saying why, where mounting is refused."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        who = "not root" if os.geteuid() != 0 else "root without CAP_SYS_ADMIN (a container?)"
        pytest.skip(f"the real disk-full path is not exercised: `mount -t tmpfs` was refused ({who}: "
                    f"{proc.stderr.strip() or f'exit {proc.returncode}'}); the monkeypatched ENOSPC test still runs")
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


KILLED_WRITER = """
import os, sys, time
import vla_pipeline.io as io
def stall(*args):  # the temporary is written and synced; stop before the rename
    print("written", flush=True)
    time.sleep(600)
io.os.replace = stall
io.write_bytes_atomic(sys.argv[1], b"new bytes")
"""


def test_a_killed_write_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    """The leftover of a SIGKILLed write_bytes_atomic matches what remove_stale_temporaries removes."""
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT
    from vla_pipeline.io import remove_stale_temporaries

    target = tmp_path / "train-sft.json"
    write_json_atomic(target, {"v": 1})
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout.readline().strip() == "written"
        leftover = [p.name for p in tmp_path.iterdir() if p.name != "train-sft.json"]
        assert leftover == [p.name for p in tmp_path.glob(f".train-sft.json.tmp-{proc.pid}-*")], leftover
        assert remove_stale_temporaries(tmp_path, "train-sft.json") == []  # its writer is alive: kept
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert len(list(tmp_path.iterdir())) == 2  # the kill landed mid-write: the temporary is still there
    write_json_atomic(target, {"v": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-sft.json"]
    assert target.read_text() == dumps_json({"v": 2})


def test_sweep_removes_every_stale_temporary_under_a_tree(tmp_path):
    from vla_pipeline.io import sweep_stale_temporaries

    dead = 4194304  # above Linux's largest pid
    (tmp_path / "checkpoints" / f".sft.tmp-{dead}-x1" / "sub").mkdir(parents=True)
    (tmp_path / "checkpoints" / "sft").mkdir()
    (tmp_path / "buffers" / ".demos.tmp-q7w2e9r1").mkdir(parents=True)  # an older version's name (no pid)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / f".eval-sft.json.tmp-{dead}-abc").write_text("half")
    (tmp_path / "metrics" / ".eval-sft.json.k2j3h4l5.tmp").write_text("half")  # older mkstemp name
    (tmp_path / "metrics" / f".eval-r01.json.tmp-{os.getpid()}-live").write_text("being written")
    (tmp_path / "metrics" / "eval-sft.json").write_text("{}")
    (tmp_path / "checkpoints" / f".r01.old-{dead}").mkdir()  # killed between the renames: comes back
    removed = sweep_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".sft.tmp-{dead}-x1", ".demos.tmp-q7w2e9r1",
                                                      f".eval-sft.json.tmp-{dead}-abc", ".eval-sft.json.k2j3h4l5.tmp"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["r01", "sft"]
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == [
        f".eval-r01.json.tmp-{os.getpid()}-live", "eval-sft.json"]
    assert list((tmp_path / "buffers").iterdir()) == []
