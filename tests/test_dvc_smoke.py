"""End-to-end: the real dvc.yaml on tiny params, in a throw-away copy of the repository."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import copy_tiny_pipeline, run_cmd
from vla_pipeline.checkpoint import load_policy

pytestmark = pytest.mark.slow


def run(cmd, cwd, env, check=True):
    return run_cmd(cmd, cwd, env, check=check, timeout=900)


@pytest.fixture(scope="module")
def repo(tiny_pipeline, tmp_path_factory):
    """A copy of the session's tiny `dvc repro` (tests/conftest.py), for this module to change."""
    dest, env = copy_tiny_pipeline(tiny_pipeline, tmp_path_factory.mktemp("smoke") / "repo")
    return dest, env, tiny_pipeline["first_stdout"]


def test_repro_runs_everything_then_nothing_then_one_stage(repo):
    dest, env, first_stdout = repo
    for stage in ("check_params", "collect_demos", "sft", "evaluate_expert", "evaluate@sft", "ppo@r01",
                  "snapshot@r01", "evaluate_round@r01", "compare_round@r01", "ire_round@ire-rl1",
                  "ire_round@ire-sl1", "evaluate_ire@ire-sl1", "evaluate_groups@sft", "evaluate_groups@r01",
                  "compare_ire@ire-sl1", "collect_demos_offline", "sft_offline", "evaluate@sft-offline",
                  "offline@corft", "evaluate_offline@corft", "offline_summary@corft", "subset_demos", "sft_small",
                  "evaluate@sft-small", "report"):
        assert f"Running stage '{stage}'" in first_stdout
    corft = json.loads((dest / "data/metrics/corft-corft.json").read_text())
    assert set(corft["runs"]["corft"]) == {"test", "validation"} and corft["paper"]["unseen_positions_success"] == 0.443
    assert (dest / "data/checkpoints/corft/critic.safetensors").is_file()
    ire = json.loads((dest / "data/metrics/eval-ire-sl1.json").read_text())
    assert ire["splits"] == ["test", "validation", "expert", "new"]
    paired = json.loads((dest / "data/metrics/paired-ire-sl1.json").read_text())
    assert paired["splits"] == ["test", "validation", "expert", "new"]  # SFT's two files joined
    assert (dest / "data/checkpoints/sft/model.safetensors").is_file()
    assert (dest / "data/metrics/eval-sft.json").is_file() and list((dest / "data/videos/sft").glob("*.mp4"))
    page = (dest / "data/report/report.html").read_text()
    for name in ("expert", "sft", "r01", "ire-rl1", "ire-sl1", "sft-offline", "corft"):
        assert f'<td class="l">{name}</td>' in page

    second = run([sys.executable, "-m", "dvc", "repro"], dest, env)
    assert "Running stage" not in second.stdout

    # `dvc repro` through the timing wrapper: DVC's own output passes through, each stage's time is kept
    single = run([sys.executable, "-m", "stages.tools", "timed-repro", "--out", str(dest / "timings.json"),
                  "--force", "--single-item", "evaluate@sft"], dest, env)
    assert "Running stage 'evaluate@sft'" in single.stdout
    timings = json.loads((dest / "timings.json").read_text())
    assert list(timings["stages"]) == ["evaluate@sft"] and timings["stages"]["evaluate@sft"] > 0
    assert set(timings) == {"stages", "main_chain_stages", "main_chain_minutes", "whole_default_minutes", "cpu"}
    assert timings["cpu"]["usable_cpus"] >= 1  # durations and the CPU: no clock time, no host name
    assert "Running stage 'sft'" not in single.stdout and "collect_demos" not in single.stdout.replace("'evaluate", "")

    shown = json.loads(run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], dest, env).stdout)
    (workspace,) = shown.values()  # keyed by revision; the workspace only, here
    files = workspace["data"]
    # One narrow row per method: only the report's headline files are metrics.
    assert files and all(k.startswith("data/report/headline/") for k in files)
    sft_metrics = files["data/report/headline/sft.json"]["data"]
    assert set(sft_metrics) == {"test", "validation"} and set(sft_metrics["test"]) == {"success", "ci_lo", "ci_hi", "steps"}
    assert 0.0 <= sft_metrics["test"]["success"] <= 1.0
    table = run([sys.executable, "-m", "dvc", "metrics", "show"], dest, env).stdout
    assert max(len(line) for line in table.splitlines()) < 220

    # Only small metrics and the report's tables may reach git (root .gitignore).
    run(["git", "add", "-A"], dest, env)
    staged = run(["git", "ls-files", "data"], dest, env).stdout.split()
    assert staged and all(name.startswith(("data/metrics/", "data/report/headline/")) and name.endswith(".json")
                          or name in ("data/report/summary.md", "data/report/index.html", "data/report/.gitignore")
                          for name in staged)
    assert "data/report/summary.md" in staged and "data/report/report.html" not in staged
    assert "data/report/index.html" in staged  # the light page: a clone opens the run's report


def test_the_small_regime_sft_sees_at_most_n_episodes_per_task(repo):
    """sft-small trains on demos_small.episodes_per_task episodes per task (tiny: 1 of 2), and the
    checkpoint records the demo counts it saw."""
    import yaml

    dest, _, _ = repo
    n = yaml.safe_load((dest / "params.yaml").read_text())["demos_small"]["episodes_per_task"]
    full = json.loads((dest / "data/checkpoints/sft/training_state.json").read_text())["demos"]
    small = json.loads((dest / "data/checkpoints/sft-small/training_state.json").read_text())["demos"]
    assert set(small) == set(full)
    assert all(small[t]["episodes"] == min(n, full[t]["episodes"]) < full[t]["episodes"] for t in small)
    counts = json.loads((dest / "data/metrics/demos-small.json").read_text())
    assert counts["episodes_per_task"] == n and counts["total_episodes"] == n * len(small)


def test_same_params_give_identical_buffers_and_metrics(repo):
    """Reproducibility: a forced rerun rewrites byte-identical demos and identical metrics."""
    dest, env, _ = repo
    buffers = [dest / "data/buffers/demos", dest / "data/buffers/r01", dest / "data/buffers/ire-rl1"]
    metrics = [dest / f"data/metrics/{name}.json" for name in ("eval-sft", "eval-r01", "train-r01", "demos",
                                                                   "episodes-r01", "paired-r01", "train-ire-rl1",
                                                                   "train-ire-sl1", "eval-ire-sl1", "groups-sft")]
    snapshot = lambda: ({(d.name, p.name): p.read_bytes() for d in buffers for p in d.iterdir()},  # noqa: E731
                        [m.read_text() for m in metrics])
    before = snapshot()
    run([sys.executable, "-m", "dvc", "repro", "--force"], dest, env)
    after = snapshot()
    assert before[0] == after[0]  # byte-identical demo and self-BC buffer snapshots
    assert before[1] == after[1]  # identical metrics and learning curves


def test_repro_killed_mid_stage_recovers_on_the_next_repro(repo):
    """SIGKILL the whole `dvc repro` process group while sft writes its checkpoint."""
    import signal
    import time

    dest, env, _ = repo
    checkpoints = dest / "data" / "checkpoints"

    def partial():  # sft's temporary directory, with some of the checkpoint in it
        return [p for p in checkpoints.glob(".sft.tmp-*") if p.is_dir() and any(p.iterdir())]

    for _attempt in range(3):  # the write takes milliseconds: retry if the kill came too late
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", "sft"], cwd=dest,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not partial():
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        if partial() and not (checkpoints / "sft").exists():
            break  # landed mid-write: DVC had removed sft, the new one was not renamed in yet
        run([sys.executable, "-m", "dvc", "repro"], dest, env)
    else:
        raise AssertionError("three kills never landed while sft was writing its checkpoint")
    run([sys.executable, "-m", "dvc", "repro"], dest, env)
    load_policy(checkpoints / "sft")
    # DVC may restore sft from its run-cache without running it: the killed run's hidden
    # `.sft.tmp-*` is then still there, until the next stage command sweeps data/.
    assert all(p.name.startswith(".sft.tmp-") for p in checkpoints.glob(".sft.*"))
    assert "Running stage" not in run([sys.executable, "-m", "dvc", "repro"], dest, env).stdout
    run([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", "check_params"], dest, env)
    assert not list(checkpoints.glob(".sft.*")) and (checkpoints / "sft").is_dir()


def test_editing_one_stage_module_makes_only_its_stages_stale(repo):
    """Each stage depends on its own module: an edit to `stages/snapshot.py` changes the deps of
    `snapshot@*` alone; an edit to `stages/tools.py` (no stage runs it) changes none."""
    dest, env, _ = repo

    def stale() -> set[str]:
        report = json.loads(run([sys.executable, "-m", "dvc", "status", "--json"], dest, env).stdout or "{}")
        return set(report)

    assert stale() == set()
    for module, expected in (("snapshot", {"snapshot@r01"}), ("tools", set())):
        path = dest / "stages" / f"{module}.py"
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        try:
            assert stale() == expected, module
        finally:
            path.write_text(original)
    assert stale() == set()
