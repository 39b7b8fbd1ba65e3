"""Is this snapshot or checkpoint made for the env that params.yaml describes?

A policy sees only pixels: frames from another camera, size or field of view are another
input, so a stage refuses them by name instead of training or evaluating on them.
"""

from __future__ import annotations

from pathlib import Path

from vla_pipeline.config import EnvConfig
from vla_pipeline.data.snapshot import snapshot_layout
from vla_pipeline.errors import PipelineError


def check_snapshot_fits_env(path: Path, manifest: dict, env: EnvConfig) -> None:
    cameras, shape = snapshot_layout(manifest)
    if list(cameras) != list(env.cameras) or tuple(shape) != (env.image_size, env.image_size, 3):
        raise PipelineError(f"{path} holds cameras {list(cameras)} at {shape[0]} px; params.yaml asks for "
                            f"env.cameras {list(env.cameras)} at {env.image_size} px (rerun collect_demos)")
    recorded = manifest.get("provenance", {}).get("env")
    if isinstance(recorded, dict):  # demo snapshots record the views they were rendered with
        check_same_fovy(recorded.get("camera_fovy", {}), env, f"{path} was rendered", "rerun collect_demos")


def check_policy_fits_env(policy, env: EnvConfig, tasks: list[str], checkpoint: Path) -> None:
    config = policy.config
    if list(config.cameras) != list(env.cameras) or config.image_size != env.image_size:
        raise PipelineError(
            f"{checkpoint} was trained on cameras {list(config.cameras)} at {config.image_size} px; "
            f"params.yaml asks for {list(env.cameras)} at {env.image_size} px"
        )
    check_same_fovy((config.env_spec or {}).get("camera_fovy", {}), env, f"{checkpoint} was trained",
                    "set env.camera_fovy to match, or retrain")
    unknown = sorted(set(tasks) - set(policy.config.task_names))
    if unknown:
        raise PipelineError(f"{checkpoint} does not know tasks {unknown}")


def check_same_fovy(recorded: dict, env: EnvConfig, what: str, fix: str) -> None:
    wanted = dict(env.camera_fovy)
    if dict(recorded) != wanted:
        raise PipelineError(f"{what} with env.camera_fovy {dict(recorded) or '{} (MuJoCo views)'}; params.yaml "
                            f"asks for {wanted or '{} (MuJoCo views)'} ({fix})")
