"""End-to-end: the real dvc.yaml on tiny params, in a throw-away copy of the repository."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TINY_PARAMS_FILE
from vla_pipeline.checkpoint import load_policy
from vla_pipeline.config import load_params

pytestmark = pytest.mark.slow


def run(cmd, cwd, env, check=True):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    dest = tmp_path_factory.mktemp("smoke") / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    # DVC needs every section a stage declares: write the tiny profile with defaults filled in.
    (dest / "params.yaml").write_text(yaml.safe_dump(load_params(TINY_PARAMS_FILE).model_dump(), sort_keys=False))
    for stale in ("dvc.lock",) + tuple(str(p.relative_to(ROOT)) for p in (ROOT / "data" / "metrics").glob("*.json")):
        (dest / stale).unlink(missing_ok=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1", PYTHONPATH=str(dest), GIT_AUTHOR_NAME="ci", GIT_AUTHOR_EMAIL="ci@localhost",
               GIT_COMMITTER_NAME="ci", GIT_COMMITTER_EMAIL="ci@localhost")
    run(["git", "init", "-q"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-qm", "smoke"], dest, env)
    return dest, env


def test_repro_runs_everything_then_nothing_then_one_stage(repo):
    dest, env = repo
    first = run([sys.executable, "-m", "dvc", "repro"], dest, env)
    for stage in ("collect_demos", "sft", "evaluate_expert", "evaluate@sft", "ppo@r01", "snapshot@r01",
                  "evaluate_round@r01", "compare_round@r01"):
        assert f"Running stage '{stage}'" in first.stdout
    assert (dest / "data/checkpoints/sft/model.safetensors").is_file()
    assert (dest / "data/metrics/eval-sft.json").is_file() and list((dest / "data/videos/sft").glob("*.mp4"))

    second = run([sys.executable, "-m", "dvc", "repro"], dest, env)
    assert "Running stage" not in second.stdout

    single = run([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", "evaluate@sft"], dest, env)
    assert "Running stage 'evaluate@sft'" in single.stdout
    assert "Running stage 'sft'" not in single.stdout and "collect_demos" not in single.stdout.replace("'evaluate", "")

    shown = run([sys.executable, "-m", "dvc", "metrics", "show"], dest, env)
    assert "eval-sft.json" in shown.stdout and "tasks.reach-v3.all.success" in shown.stdout

    # Only small metrics may reach git (root .gitignore: /data/* and !/data/metrics/).
    run(["git", "add", "-A"], dest, env)
    staged = run(["git", "ls-files", "data"], dest, env).stdout.split()
    assert staged and all(name.startswith("data/metrics/") and name.endswith(".json") for name in staged)


def test_same_params_give_identical_buffers_and_metrics(repo):
    """Reproducibility: a forced rerun rewrites byte-identical demos and identical metrics."""
    dest, env = repo
    buffers = [dest / "data/buffers/demos", dest / "data/buffers/r01"]
    metrics = [dest / f"data/metrics/{name}.json" for name in ("eval-sft", "eval-r01", "train-r01", "demos",
                                                                   "episodes-r01", "paired-r01")]
    snapshot = lambda: ({(d.name, p.name): p.read_bytes() for d in buffers for p in d.iterdir()},  # noqa: E731
                        [m.read_text() for m in metrics])
    before = snapshot()
    run([sys.executable, "-m", "dvc", "repro", "--force"], dest, env)
    after = snapshot()
    assert before[0] == after[0]  # byte-identical demo and self-BC buffer snapshots
    assert before[1] == after[1]  # identical metrics and learning curves


def test_adding_a_round_reruns_only_that_round(repo):
    dest, env = repo
    params = dest / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    raw["rounds"]["r02"] = {"policy_in": "r01", "buffer_in": "r01"}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = run([sys.executable, "-m", "dvc", "repro"], dest, env).stdout
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == ["compare_round@r02", "evaluate_round@r02", "ppo@r02", "snapshot@r02"]


def test_repro_killed_mid_stage_recovers_on_the_next_repro(repo):
    """SIGKILL the whole `dvc repro` process group while sft writes its checkpoint."""
    import signal
    import time

    dest, env = repo
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", "sft"], cwd=dest,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = dest / "data" / "checkpoints"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not any(
            any(p.iterdir()) for p in checkpoints.glob(".sft.tmp-*") if p.is_dir()):
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    # Never a half-written checkpoint: absent (DVC removed it before the run) or complete.
    if (checkpoints / "sft").exists():
        load_policy(checkpoints / "sft")
    run([sys.executable, "-m", "dvc", "repro"], dest, env)
    load_policy(checkpoints / "sft")
    # DVC may restore sft from its run-cache without running it; a hidden `.sft.tmp-*` left by
    # the killed run is then removed the next time the stage itself runs (test_io covers that).
    assert all(p.name.startswith(".sft.tmp-") for p in checkpoints.glob(".sft.*"))
    assert "Running stage" not in run([sys.executable, "-m", "dvc", "repro"], dest, env).stdout
