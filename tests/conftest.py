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


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_demos, tmp_path_factory) -> Path:
    from vla_pipeline.checkpoint import save_policy
    from vla_pipeline.data.snapshot import load_snapshot
    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.io import atomic_directory
    from vla_pipeline.policies.factory import build_policy
    from vla_pipeline.sft import train_sft

    params = parse_params(tiny_raw())
    tasks = resolve_tasks(params.env)
    table, _ = load_snapshot(tiny_demos)
    policy = build_policy(params.policy, params.env, tasks)
    result = train_sft(policy, table, params)
    out = tmp_path_factory.mktemp("ckpt") / "sft"
    with atomic_directory(out) as tmp:
        save_policy(policy, tmp, {"final_loss": result.final_loss})
    return out
