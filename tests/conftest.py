import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import pytest
import yaml

from vla_pipeline.config import Params, parse_params

ROOT = Path(__file__).resolve().parents[1]
TINY_PARAMS_FILE = ROOT / "tests" / "tiny_params.yaml"


def tiny_raw(**overrides) -> dict:
    """The tiny profile as a dict, in-process envs, with section-level overrides."""
    raw = yaml.safe_load(TINY_PARAMS_FILE.read_text())
    raw["env"]["vector"] = "sync"
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return raw


@pytest.fixture
def tiny_params() -> Params:
    return parse_params(tiny_raw(), "tiny_params.yaml")


@pytest.fixture
def tiny_params_file(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_raw()))
    return path


@pytest.fixture(scope="session")
def tiny_demos(tmp_path_factory) -> Path:
    """A real demo snapshot from the scripted experts (tiny: 2 tasks x 2 episodes, 32 px)."""
    from vla_pipeline.demos import collect_demos
    from vla_pipeline.io import atomic_directory

    out = tmp_path_factory.mktemp("demos") / "demos"
    with atomic_directory(out) as tmp:
        collect_demos(parse_params(tiny_raw()), tmp)
    return out


def invoke(args: list):
    """`python -m stages NAME ARGS`, in-process with CliRunner: NAME is a stage module
    (`collect-demos` -> `stages/collect_demos.py`) or a tool of `stages/tools.py`."""
    import importlib

    from typer.testing import CliRunner

    from stages import tools
    from stages.__main__ import stage_modules

    name, *rest = [str(a) for a in args]
    module = name.replace("-", "_")
    if module in stage_modules():
        return CliRunner().invoke(importlib.import_module(f"stages.{module}").app, rest)
    return CliRunner().invoke(tools.app, [name, *rest])


def tiny_data_root(root: Path, demos: Path, checkpoint: Path, raw: dict) -> tuple[Path, Path]:
    """A round's world in `root`: data/ with the tiny SFT checkpoint and demos, and params.yaml."""
    import shutil

    data = root / "data"
    shutil.copytree(checkpoint, data / "checkpoints" / "sft")
    shutil.copytree(demos, data / "buffers" / "demos")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    return data, params


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_demos, tmp_path_factory) -> Path:
    from vla_pipeline.checkpoint import save_policy
    from vla_pipeline.data.snapshot import load_snapshot
    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.io import atomic_directory
    from vla_pipeline.policies.factory import build_policy
    from vla_pipeline.training.supervised import train_sft

    params = parse_params(tiny_raw())
    tasks = resolve_tasks(params.env)
    table, _ = load_snapshot(tiny_demos)
    policy = build_policy(params.policy, params.env, tasks)
    result = train_sft(policy, table, params)
    out = tmp_path_factory.mktemp("ckpt") / "sft"
    with atomic_directory(out) as tmp:
        save_policy(policy, tmp, {"final_loss": result.final_loss})
    return out


# --------------------------------------------------------------- end-to-end DVC runs

# Imported by every stage process of the shared tiny run (via PYTHONPATH): records the project
# modules each stage really loaded, for tests/test_dvc_versions.py (deps cover runtime imports).
_MODULE_RECORDER = '''
import atexit, os, sys
if os.environ.get("DVC_STAGE") and os.environ.get("VLA_MODULE_LOG"):
    def _record():
        root = os.path.realpath(os.environ.get("DVC_ROOT", os.getcwd()))
        paths = {os.path.realpath(f) for m in list(sys.modules.values())
                 if isinstance(f := getattr(m, "__file__", None), str) and os.path.isabs(f) and os.path.isfile(f)}
        files = sorted(os.path.relpath(f, root) for f in paths if f.startswith(root + os.sep))
        name = f"{os.environ['DVC_STAGE']}.{os.getpid()}.txt"
        with open(os.path.join(os.environ["VLA_MODULE_LOG"], name), "w") as fh:
            fh.write("\\n".join(files))
    atexit.register(_record)
'''


def copy_git_files(dest: Path) -> None:
    """Copy the working tree as git sees it (tracked + untracked, not ignored) into `dest`."""
    import shutil
    import subprocess

    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def copy_worktree(dest: Path) -> None:
    """The working tree as git sees it, tiny params, no lock."""
    copy_git_files(dest)
    # DVC needs every section a stage declares: write the tiny profile with defaults filled in.
    from vla_pipeline.config import load_params

    (dest / "params.yaml").write_text(yaml.safe_dump(load_params(TINY_PARAMS_FILE).model_dump(), sort_keys=False))
    for stale in ("dvc.lock",) + tuple(str(p.relative_to(ROOT)) for p in (ROOT / "data" / "metrics").glob("*.json")):
        (dest / stale).unlink(missing_ok=True)


def dvc_env(repo: Path, *extra_path: Path, **extra) -> dict:
    """Environment for git/dvc in a test repository: this venv first, the repository's code.

    Bytecode writing stays on (as for users): `__pycache__` inside directory deps must not
    make stages look changed (.dvcignore)."""
    import sys

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1", PYTHONPATH=os.pathsep.join(map(str, (repo, *extra_path))),
               GIT_AUTHOR_NAME="ci", GIT_AUTHOR_EMAIL="ci@localhost", GIT_COMMITTER_NAME="ci",
               GIT_COMMITTER_EMAIL="ci@localhost", **extra)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_cmd(cmd, cwd, env, check=True, timeout=1200):
    import subprocess

    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> dict:
    """ONE `dvc repro` of the real dvc.yaml on tiny params, committed in a throw-away git repo.

    Tests that change the repository work on a copy (`copy_tiny_pipeline`), so the whole
    suite pays for the first run once."""
    import sys

    base = tmp_path_factory.mktemp("tiny-pipeline")
    repo, hook, modules = base / "repo", base / "hook", base / "modules"
    hook.mkdir()
    modules.mkdir()
    (hook / "sitecustomize.py").write_text(_MODULE_RECORDER)
    copy_worktree(repo)
    env = dvc_env(repo, hook, VLA_MODULE_LOG=str(modules))
    run_cmd(["git", "init", "-q", "-b", "main"], repo, env)
    run_cmd(["git", "add", "-A"], repo, env)
    run_cmd(["git", "commit", "-qm", "tiny pipeline"], repo, env)
    first = run_cmd([sys.executable, "-m", "dvc", "repro"], repo, env)
    return {"repo": repo, "first_stdout": first.stdout, "modules": modules}


def copy_tiny_pipeline(tiny_pipeline: dict, dest: Path) -> tuple[Path, dict]:
    """A private copy of the shared tiny run (git history, DVC cache and outputs included)."""
    import shutil

    shutil.copytree(tiny_pipeline["repo"], dest, symlinks=True,
                    ignore=lambda d, names: ["tmp"] if Path(d).name == ".dvc" else [])
    return dest, dvc_env(dest)
