"""Killed stages never leave output that looks complete, and earlier outputs survive."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import ROOT, tiny_raw
from vla_pipeline.data.snapshot import load_snapshot, sha256_file


def start_collect(params: Path, out: Path, metrics: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "stages.collect_demos", "--params", str(params),
                             "--out", str(out), "--metrics", str(metrics)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for_partial_write(parent: Path, name: str, timeout: float = 120) -> bool:
    """Poll until the stage's temporary directory holds a file: it is writing its output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for tmp in parent.glob(f".{name}.tmp-*"):
            try:
                if any(tmp.iterdir()):
                    return True
            except FileNotFoundError:  # renamed into place between glob and listing: poll again
                continue
        time.sleep(0.005)
    return False


def test_sigkill_while_writing_keeps_previous_snapshot_and_next_run_completes(tmp_path, tiny_demos):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_raw(demos={"episodes_per_task": 1, "seed": 5})))
    out, metrics = tmp_path / "demos", tmp_path / "demos.json"
    # A complete earlier output, as a previous run left it.
    import shutil

    shutil.copytree(tiny_demos, out)
    before = {p.name: sha256_file(p) for p in out.iterdir()}

    proc = start_collect(params, out, metrics)
    try:
        assert wait_for_partial_write(tmp_path, "demos"), "the stage never started writing"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert {p.name: sha256_file(p) for p in out.iterdir()} == before  # untouched
    load_snapshot(out)  # and still valid
    assert not metrics.exists()

    # The next run cleans the killed run's temporary directory and completes.
    proc = start_collect(params, out, metrics)
    assert proc.wait(timeout=300) == 0
    table, manifest = load_snapshot(out)
    assert manifest["provenance"]["demos"]["seed"] == 5 and metrics.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos", "demos.json", "params.yaml"]
