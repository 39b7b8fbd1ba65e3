"""What a new user gets wrong: one clear line on stderr and exit != 0, never a traceback wall.

Every command runs as a real `python -m stages.<stage>` process (as DVC runs it), so stderr is
exactly what the user sees, env workers included.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import ROOT, tiny_raw

PPO = {"iterations": 2, "decisions_per_iteration": 16, "epochs": 1, "minibatch_size": 8,
       "critic_warmup_iterations": 0, "target_kl": None}


def stage(args, params: Path | None = None, env: dict | None = None, **popen):
    name, *rest = args
    module = name.replace("-", "_")
    target = [f"stages.{module}"] if (ROOT / "stages" / f"{module}.py").exists() else ["stages.tools", name]
    cmd = [sys.executable, "-m", *target, *rest] + (["--params", str(params)] if params else [])
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    if popen:
        return subprocess.Popen(cmd, env=full_env, **popen)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=600)


def write_params(tmp_path, **overrides) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(**overrides)))
    return path


def one_error_line(proc, *fragments) -> str:
    """exit 1, no traceback, and stderr is a single `error:` line holding every fragment."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_cuda_on_a_cpu_only_torch_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a usable CUDA device: nothing to refuse")
    params = write_params(tmp_path, sft={"device": "cuda"})
    one_error_line(stage(["sft", "--demos", str(tmp_path / "demos"), "--out", str(tmp_path / "sft"),
                          "--curve", str(tmp_path / "c.json")], params), "sft.device", "set sft.device: cpu")
    params = write_params(tmp_path, evaluate={"device": "cuda:0"})
    one_error_line(stage(["evaluate", "--checkpoint", str(tmp_path / "sft"), "--name", "sft", "--metrics",
                          str(tmp_path / "m.json"), "--table", str(tmp_path / "t.json"), "--videos",
                          str(tmp_path / "v")], params), "evaluate.device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("section, values, fragment", [
    ("evaluate", {"device": "gpu"}, "evaluate.device: device must be 'cpu', 'cuda' or 'cuda:N' (got 'gpu')"),
    ("ppo", {"minibatch_size": 64, "decisions_per_iteration": 16}, "minibatch_size (64) is larger than"),
    ("evaluate", {"episodes_heldout": 0}, "evaluate.episodes_heldout"),
    ("evaluate", {"episodes_seen": 0}, "evaluate.episodes_seen"),
])
def test_check_params_refuses(tmp_path, section, values, fragment):
    proc = stage(["check-params", "--file-only"], write_params(tmp_path, **{section: values}))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and fragment in proc.stderr, proc.stderr


@pytest.mark.parametrize("backend", ["glfw", "no-such-backend"])
def test_a_gl_backend_that_cannot_render_is_one_line_that_says_egl(tmp_path, backend):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "stages.evaluate_expert", "--params",
                           str(write_params(tmp_path, env={"vector": "async"})), "--metrics",
                           str(tmp_path / "m.json"), "--table", str(tmp_path / "t.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    one_error_line(proc, f"MUJOCO_GL={backend}", "use MUJOCO_GL=egl")
    assert not (tmp_path / "m.json").exists()


@pytest.fixture
def round_data(tmp_path, tiny_demos, tiny_checkpoint):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_checkpoint, data / "checkpoints" / "sft")
    shutil.copytree(tiny_demos, data / "buffers" / "demos")
    return data


def test_ppo_on_a_buffer_with_garbage_png_bytes_is_one_line(tmp_path, round_data):
    from vla_pipeline.data.snapshot import load_episodes, read_manifest, write_snapshot
    from vla_pipeline.io import atomic_directory

    demos = round_data / "buffers" / "demos"
    by_task, manifest = load_episodes(demos)
    for episodes in by_task.values():
        for ep in episodes:
            ep.frames = [tuple(b"\x89PNG not really" + bytes(20) for _ in views) if views else () for views in ep.frames]
    with atomic_directory(demos) as tmp:  # a consistent snapshot (sha256 in the manifest match)
        write_snapshot(tmp, by_task, manifest["cameras"], tuple(manifest["image_shape"]), manifest["provenance"])
    assert read_manifest(demos)["shards"]
    params = write_params(tmp_path, ppo=PPO, bc={"weight_rule": "fixed", "weight": 1.0},
                          rounds={"r01": {"policy_in": "sft", "buffer_in": "demos", "base": "sft"}})
    proc = stage(["ppo", "--round", "r01", "--data", str(round_data)], params)
    one_error_line(proc, "cannot be decoded")
    assert not (round_data / "checkpoints" / "r01").exists()


def wait_for(path: Path, text: str, proc, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"never saw {text!r}:\n{path.read_text(errors='replace') if path.exists() else ''}")


def sigint_as_in_a_terminal() -> None:
    """Give the stage the Ctrl-C a terminal's foreground job has.

    A job a non-interactive shell starts in the background (`pytest ... &`, `nohup`, some CI
    runners) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler:
    the stage rightly ignores Ctrl-C, as the shell asked, and the round runs on. That, not the
    stage, made the SIGINT case below fail when the suite itself ran in the background.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_long_round(tmp_path, round_data):
    params = write_params(tmp_path, env={"vector": "async"}, ppo={**PPO, "iterations": 500},
                          rounds={"r01": {"policy_in": "sft", "buffer_in": "demos", "base": "sft"}})
    err = tmp_path / "stderr.txt"
    with open(err, "w") as fh:
        proc = stage(["ppo", "--round", "r01", "--data", str(round_data)], params, stdout=subprocess.DEVNULL,
                     stderr=fh, start_new_session=True, preexec_fn=sigint_as_in_a_terminal)
    wait_for(err, "ppo r01:", proc)  # the env workers are stepping
    time.sleep(1.0)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2, "expected the AsyncVectorEnv workers"
    return proc, err, workers


def test_kill_9_of_a_ppo_round_leaves_no_traceback_walls(tmp_path, round_data):
    proc, err, workers = start_long_round(tmp_path, round_data)
    os.kill(proc.pid, signal.SIGKILL)  # `kill -9 <pid>` of the stage, not of its group
    proc.wait(timeout=60)
    gone, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, f"workers outlived the killed stage: {alive}"
    time.sleep(1.0)
    text = err.read_text(errors="replace")
    assert "Traceback" not in text and "leaked semaphore" not in text and "Error" not in text, text
    assert not (round_data / "checkpoints" / "r01").exists()


@pytest.mark.parametrize("sig, group, code, word", [(signal.SIGINT, True, 130, "interrupted: ppo stopped"),
                                                    (signal.SIGTERM, False, 143, "terminated: ppo stopped")])
def test_ctrl_c_and_sigterm_stop_a_round_with_one_line(tmp_path, round_data, sig, group, code, word):
    proc, err, workers = start_long_round(tmp_path, round_data)
    (os.killpg if group else os.kill)(proc.pid, sig)  # Ctrl-C reaches the whole process group
    assert proc.wait(timeout=120) == code
    gone, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive
    lines = [ln for ln in err.read_text(errors="replace").replace("\r", "\n").splitlines()
             if ln.strip() and not ln.startswith("ppo r01:")]
    assert len(lines) == 1 and word in lines[0], lines
    assert sorted(p.name for p in (round_data / "checkpoints").iterdir()) == ["sft"]  # nothing half-written
