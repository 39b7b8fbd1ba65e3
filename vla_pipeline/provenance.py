"""What produced an output: software versions and the env a policy or buffer was made for.

Recorded inside checkpoints, snapshots and metrics; never timestamps or host names.
"""

from __future__ import annotations

import platform

from vla_pipeline.config import EnvConfig


def software_versions() -> dict:
    from importlib.metadata import version

    import mujoco
    import torch

    return {"metaworld": version("metaworld"), "mujoco": mujoco.__version__,
            "torch": torch.__version__.split("+")[0], "transformers": version("transformers"),
            "python": platform.python_version()}


def env_spec(env: EnvConfig) -> dict:
    """What a policy was trained to see; recorded in the checkpoint and checked at use."""
    versions = software_versions()
    spec = {"cameras": list(env.cameras), "image_size": env.image_size, "render": env.render.model_dump(),
            "train_seeds": list(env.train_seeds), "validation_seed": env.validation_seed,
            "test_seed": env.test_seed, "metaworld": versions["metaworld"], "mujoco": versions["mujoco"]}
    if env.camera_fovy:  # only when set, so checkpoints and demos of MuJoCo's views keep their bytes
        spec["camera_fovy"] = dict(sorted(env.camera_fovy.items()))
    return spec


def protocol_header(name: str, params) -> dict:
    """The head of every metrics file: which policy, and the protocol its numbers hold for."""
    versions = software_versions()
    env, evaluate = params.env, params.evaluate
    return {"policy": name, "protocol": {
        "horizon": env.max_episode_steps, "cameras": list(env.cameras), "image_size": env.image_size,
        "episodes_per_task": {"test": evaluate.episodes_test, "validation": evaluate.episodes_validation,
                              "train": evaluate.episodes_train},
        "split_seeds": {"test": env.test_seed, "validation": env.validation_seed, "train": list(env.train_seeds)},
        "seed": evaluate.seed, "deterministic": evaluate.deterministic, "metaworld": versions["metaworld"],
        "mujoco": versions["mujoco"], "reward": env.reward}}
