"""Issue 41: what a stage that fails part-way leaves behind, and what it says about it.

One test per reproduction of the issue (1-7), on tiny params; the DVC ones on a small DVC
repository of the project's code (its own `dvc.yaml`: `check_params` and a stage after it),
so that they run in seconds rather than the whole tiny pipeline's minutes.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import copy_worktree, dvc_env, invoke, run_cmd, tiny_raw
from tests.test_bad_inputs import round_data, stage, start_long_round, write_params  # noqa: F401 (fixture)

DVC = [sys.executable, "-m", "dvc"]


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line(text: str) -> str:
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.startswith(("error:", "interrupted:"))]
    assert len(lines) == 1, text
    return lines[0]


# ------------------------------------------------- 1. a failed later write replaces nothing

def sft_world(tmp_path, tiny_demos, tiny_checkpoint):
    """Earlier outputs of sft (checkpoint and curve) and params that would make new ones (seed 1)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_checkpoint, data / "checkpoints" / "sft")
    (data / "metrics").mkdir(parents=True)
    (data / "metrics" / "train-sft.json").write_text("[]\n")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_raw(sft={"seed": 1})))
    args = ["sft", "--params", str(params), "--demos", str(tiny_demos), "--out", str(data / "checkpoints" / "sft")]
    return data, args


def test_unwritable_curve_is_refused_before_training_and_replaces_nothing(tmp_path, tiny_demos, tiny_checkpoint):
    """Reproduction 1 as the issue has it (data/metrics unwritable): refused up front."""
    data, args = sft_world(tmp_path, tiny_demos, tiny_checkpoint)
    before = files(data)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the curve's folder should be\n")  # root ignores chmod: unwritable for root
    result = invoke([*args, "--curve", str(blocked / "train-sft.json")])
    assert result.exit_code == 1, result.output
    assert files(data) == before, "the checkpoint was replaced although the stage failed"
    line = one_line(result.output)
    assert f"could not write {blocked / 'train-sft.json'}" in line and "earlier outputs are intact" in line, line


def test_a_write_failing_after_others_were_written_replaces_none(tmp_path, tiny_demos, tiny_checkpoint,
                                                                  monkeypatch):
    """Reproduction 1 when the failure comes only at write time (full disk, a folder made
    read-only during training): the checkpoint written first is not renamed either."""
    from vla_pipeline import io

    data, args = sft_world(tmp_path, tiny_demos, tiny_checkpoint)
    before = files(data)
    blocked = tmp_path / "blocked"
    monkeypatch.setattr(io, "check_writable", lambda *paths: None, raising=False)  # it did not see it coming
    blocked.write_text("a file where the curve's folder should be\n")
    result = invoke([*args, "--curve", str(blocked / "train-sft.json")])
    assert result.exit_code == 1, result.output
    assert files(data) == before, "the checkpoint was replaced although the stage failed"
    line = one_line(result.output)
    assert "could not write" in line and "earlier outputs are intact" in line, line
    assert not [p for p in (data / "checkpoints").iterdir() if p.name != "sft"]  # no temporary left


def test_stage_outputs_put_back_what_was_renamed_when_a_rename_fails(tmp_path):
    from vla_pipeline.errors import PipelineError
    from vla_pipeline.io import StageOutputs, atomic_directory, write_json_atomic

    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "w").write_text("old")
    write_json_atomic(tmp_path / "c.json", [1])
    before = files(tmp_path)
    with pytest.raises(PipelineError, match="could not write"):
        with StageOutputs(tmp_path / "ck", tmp_path / "c.json") as outputs:
            with atomic_directory(tmp_path / "ck") as tmp:
                (tmp / "w").write_text("new")
            write_json_atomic(tmp_path / "c.json", [2])
            os.unlink(outputs._staged[tmp_path / "c.json"])  # the second rename will fail (ENOENT)
    assert files(tmp_path) == before


# ------------------------------------- 2 and 6: bad values stop `dvc repro` at check_params

AFTER_STAGE = """
import sys, yaml
lr = yaml.safe_load(open("params.yaml"))["sft"]["lr"]
if lr > 1.0:  # what sft does at such a rate: diverge and stop without writing
    sys.exit("error: non-finite loss; stopping without writing a checkpoint")
open("data/after.txt", "w").write(f"trained at {lr}\\n")
"""

SLOW_STAGE = """
import os, time
from pathlib import Path
import yaml
from stages.common import run, stage_app, user_errors
app = stage_app()
@app.command()
@user_errors
def slow():
    seconds = yaml.safe_load(open("slow.yaml"))["sleep"]
    print("started", flush=True)
    Path("slow.started").write_text(f"{os.getpid()}\\n")  # the test signals this pid, only after this
    time.sleep(seconds)
    Path("data/slow.txt").write_text(f"slept {seconds}\\n")
if __name__ == "__main__":
    run(app, "slow_stage")
"""


@pytest.fixture(scope="module")
def mini_repo(tmp_path_factory):
    """The project's code and tiny params in a git + DVC repository whose dvc.yaml has
    check_params, a stage after it (reads sft.lr) and a slow stage, all run and committed once."""
    repo = tmp_path_factory.mktemp("mini") / "repo"
    copy_worktree(repo)
    (repo / "after_stage.py").write_text(AFTER_STAGE)
    (repo / "slow_stage.py").write_text(SLOW_STAGE)
    (repo / "slow.yaml").write_text("sleep: 0\n")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "check_params": {"cmd": "python -m stages.check_params --out data/checks/params.ok",
                         "params": [{"params.yaml": None}], "outs": ["data/checks/params.ok"]},
        "after": {"cmd": "python after_stage.py", "deps": ["data/checks/params.ok"], "params": ["sft.lr"],
                  "outs": ["data/after.txt"]},
        "slow": {"cmd": "python -m slow_stage", "params": [{"slow.yaml": ["sleep"]}], "outs": ["data/slow.txt"]},
    }}, sort_keys=False))
    env = dvc_env(repo)
    init = [] if (repo / ".dvc").is_dir() else [[*DVC, "init", "-q"]]  # the project's .dvc/ came with the code
    for cmd in (["git", "init", "-q", "-b", "main"], *init, [*DVC, "repro"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "mini"]):
        run_cmd(cmd, repo, env, timeout=300)
    return repo, env


def set_param(repo: Path, section: str, **values) -> None:
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.parametrize("section, values, key", [
    ("sft", {"steps": 0}, "sft.steps"),  # rejected before issue 41 too: the message is what changed
    ("sft", {"lr": 1.0e6}, "sft.lr"),
    ("ppo", {"lr": 1.0e6}, "ppo.lr"),
    ("ppo", {"head_lr": 1.0e6}, "ppo.head_lr"),
    ("env", {"vector": "ray", "ray": {"address": "127.0.0.1:1"}}, "env.ray.address"),
])
def test_values_that_can_only_fail_stop_dvc_repro_at_check_params(mini_repo, section, values, key):
    """Reproductions 2 and 6: the bad value stops `dvc repro` at check_params, the stage after
    keeps its output, and the message says how check_params's own stamp comes back."""
    repo, env = mini_repo
    after = (repo / "data" / "after.txt").read_bytes()
    try:
        set_param(repo, section, **values)
        proc = run_cmd([*DVC, "repro"], repo, env, check=False, timeout=300)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        line = proc.stderr[proc.stderr.index("error:"):]
        assert key in line.replace("'", ""), line
        assert "dvc checkout check_params" in line and "nothing was deleted" not in line, line
        assert "Running stage 'after'" not in proc.stdout
        assert (repo / "data" / "after.txt").read_bytes() == after
    finally:
        run_cmd(["git", "checkout", "--", "params.yaml"], repo, env)
    run_cmd([*DVC, "checkout", "check_params"], repo, env)
    assert (repo / "data" / "checks" / "params.ok").read_text() == "valid\n"


def test_lr_bounds_are_documented_and_inclusive():
    from vla_pipeline.config import parse_params
    from vla_pipeline.config.training import MAX_LR

    parse_params(tiny_raw(sft={"lr": MAX_LR}, ppo={"lr": MAX_LR, "head_lr": MAX_LR, "value_lr": MAX_LR}), "p")
    for section, key in (("sft", "lr"), ("ppo", "value_lr"), ("ppo", "log_std_lr"), ("ire", "sl_lr"),
                         ("offline", "critic_lr"), ("offline", "actor_lr")):
        with pytest.raises(Exception, match=key):
            parse_params(tiny_raw(**{section: {key: 2.0}}), "p")


# ------------------------------------------ 3. Ctrl-C under DVC: where the outputs are now

def test_ctrl_c_under_dvc_says_how_to_restore_the_outputs(mini_repo):
    repo, env = mini_repo
    try:
        (repo / "slow.yaml").write_text("sleep: 60\n")
        (repo / "slow.started").unlink(missing_ok=True)  # the fixture's own run wrote one
        proc = subprocess.Popen([*DVC, "repro", "slow"], cwd=repo, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,  # Ctrl-C as a foreground job has it,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even under `&`
        deadline = time.time() + 120
        # Wait for the marker the command writes once its handlers are in place (a fixed sleep was
        # too short on a slower machine), and signal the pid it names: DVC starts the command
        # through $SHELL or /bin/sh, and a shell that does not exec would take the signal itself.
        marker = repo / "slow.started"
        while not (marker.exists() and marker.read_text().strip()) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), "the slow stage never reached its command"
        assert not (repo / "data" / "slow.txt").exists()  # DVC removed the output before the command
        child = psutil.Process(int(marker.read_text()))
        assert "slow_stage" in " ".join(child.cmdline())
        child.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        line = one_line(err)
        assert "interrupted: slow stopped" in line and "intact" not in line, line
        assert "dvc checkout slow" in line, line
    finally:
        (repo / "slow.yaml").write_text("sleep: 0\n")
        (repo / "slow.started").unlink(missing_ok=True)
    run_cmd([*DVC, "checkout", "slow"], repo, env)  # what the message says brings it back
    assert (repo / "data" / "slow.txt").read_text() == "slept 0\n"


def test_messages_outside_dvc_say_intact_only_when_true(monkeypatch):
    from stages import common
    from vla_pipeline import io

    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setattr(io, "_REPLACED", [])
    assert common.outputs_state("; ") == "; earlier outputs are intact"
    monkeypatch.setattr(io, "_REPLACED", [Path("data/checkpoints/r01")])
    assert "already replaced: data/checkpoints/r01" in common.outputs_state("; ")
    assert "intact" not in common.outputs_state("; ")


# ----------------------------------- 4. a killed env worker during a PPO round: one line

def test_a_killed_env_worker_ends_the_round_with_one_line_naming_it(tmp_path, round_data):
    proc, err, workers = start_long_round(tmp_path, round_data)
    victim = next(p for p in workers if "spawn_main" in " ".join(p.cmdline()))  # an env worker, not the tracker
    victim.kill()
    try:
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 1, err.read_text(errors="replace")
    text = err.read_text(errors="replace")
    line = one_line(text)
    assert "env worker process died" in line and f"pid {victim.pid}" in line and "rerun" in line, text
    assert "Traceback" not in text
    psutil.wait_procs(workers, timeout=10)
    assert not (round_data / "checkpoints" / "r01").exists()


# --------------------------- 5. kill -9 of collect-demos: no process of it left after 5 s

def kill_9_and_check_the_tree(proc, wanted: int, what: str) -> None:
    """Wait until `proc` has `wanted` descendants, kill -9 it mid-run, and assert none of them
    outlives it by more than 5 s."""
    deadline, tree = time.time() + 120, []
    while time.time() < deadline:
        tree = psutil.Process(proc.pid).children(recursive=True)
        if len(tree) >= wanted:
            break
        time.sleep(0.2)
    assert len(tree) >= wanted, f"expected {what}, got {tree}"
    time.sleep(2.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    gone, alive = psutil.wait_procs(tree, timeout=5)
    for p in alive:  # don't leave them to the rest of the suite
        p.kill()
    assert not alive, f"processes outlived the killed stage: {[(p.pid, p.name()) for p in alive]}"


def test_kill_9_of_collect_demos_leaves_no_process(tmp_path):
    params = write_params(tmp_path, env={"vector": "async", "num_envs": 2},
                          demos={"episodes_per_task": 40})  # long enough to be killed mid-way
    proc = stage(["collect-demos", "--out", str(tmp_path / "demos"), "--metrics", str(tmp_path / "demos.json")],
                 params, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    kill_9_and_check_the_tree(proc, 3, "two pool workers and a resource tracker")
    assert not (tmp_path / "demos").exists() and not (tmp_path / "demos.json").exists()


def test_kill_9_of_an_evaluation_leaves_no_process_after_5_s(tmp_path, tiny_checkpoint):
    params = write_params(tmp_path, env={"vector": "async", "num_envs": 2},
                          evaluate={"episodes_test": 40, "episodes_validation": 40})  # killed mid-way
    proc = stage(["evaluate", "--checkpoint", str(tiny_checkpoint), "--name", "sft", "--metrics",
                  str(tmp_path / "eval.json"), "--table", str(tmp_path / "tasks.json")],
                 params, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    kill_9_and_check_the_tree(proc, 2, "two env workers")
    assert not (tmp_path / "eval.json").exists()


def test_kill_9_of_a_ppo_round_leaves_no_process_after_5_s(tmp_path, round_data):
    proc, err, tree = start_long_round(tmp_path, round_data)  # env workers and the resource tracker
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    gone, alive = psutil.wait_procs(tree, timeout=5)
    for p in alive:
        p.kill()
    assert not alive, f"processes outlived the killed stage: {[(p.pid, p.name()) for p in alive]}"


# ---------------------------------------- 7. a diverged checkpoint is refused when loaded

@pytest.mark.parametrize("name, value, words", [("nan", float("nan"), "non-finite"),
                                                ("action_std", 0.0, "action_std")])
def test_a_checkpoint_with_nan_or_zero_std_is_refused_naming_its_file(tmp_path, tiny_checkpoint, name, value, words):
    import torch
    from safetensors.torch import load_file, save_file

    from vla_pipeline.checkpoint import WEIGHTS_FILE, load_policy
    from vla_pipeline.errors import PipelineError

    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ck)
    weights = load_file(ck / WEIGHTS_FILE)
    if name == "nan":
        key = next(k for k, t in weights.items() if t.is_floating_point() and t.numel() > 1 and k != "action_std")
        weights[key] = weights[key].clone()
        weights[key].view(-1)[0] = value
    else:
        weights["action_std"] = torch.full_like(weights["action_std"], value)
    save_file(weights, ck / WEIGHTS_FILE)
    with pytest.raises(PipelineError) as err:
        load_policy(ck)
    message = str(err.value)
    assert str(ck / WEIGHTS_FILE) in message and words in message and "save" not in message, message
