"""How precisely a policy reads object and goal positions from its pixels (a diagnosis).

A policy built with `policy.aux_state_weight > 0` has a readout trained to predict the object
and goal xyz from the fused tokens. Its error on the first frame of each evaluation episode
separates "cannot see where things are" from "cannot act on what it sees" (README, "Seeing the
goal"): e.g. a puck read to 0.6 cm while the grasp lands 1-2 cm off is a control limit. Nothing
in the pipeline consumes these numbers; `python -m stages readout-error` writes them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from vla_pipeline.config import EnvConfig, EvaluateConfig
from vla_pipeline.constants import OBS_STATE
from vla_pipeline.envs.chunk_env import ChunkEnv, EpisodeQueue
from vla_pipeline.envs.tasks import resolve_tasks
from vla_pipeline.errors import PipelineError
from vla_pipeline.evaluation import evaluation_episodes

# (name, columns of the 6-vector [object xyz, goal xyz]) the errors are reported for.
PARTS = (("object_xy", (0, 1)), ("object_xyz", (0, 1, 2)), ("goal_xy", (3, 4)), ("goal_xyz", (3, 4, 5)))


def position_errors(estimates: np.ndarray, truths: np.ndarray) -> dict:
    """Per part: median and 90th percentile of the Euclidean error in cm, and the mean signed
    error per axis (a bias) in cm. Inputs (N, 6) in metres: object xyz then goal xyz."""
    diff = (np.asarray(estimates, np.float64) - np.asarray(truths, np.float64)) * 100.0
    out = {}
    for name, cols in PARTS:
        norms = np.linalg.norm(diff[:, list(cols)], axis=1)
        out[name] = {"median_cm": float(np.median(norms)), "p90_cm": float(np.percentile(norms, 90)),
                     "bias_cm": [float(b) for b in diff[:, list(cols)].mean(0)]}
    return out


@torch.no_grad()
def estimate(policy, obs: dict) -> np.ndarray:
    """The aux readout for one observation, in metres (pixels, proprio and task only)."""
    batch = {k: np.asarray(v)[None] for k, v in obs.items() if k != OBS_STATE}
    tensors = policy.obs_to_tensors(batch)
    out = policy(**tensors)
    return (out.aux_state[0] * policy.aux_std + policy.aux_mean).cpu().numpy()


def readout_errors(policy, env_cfg: EnvConfig, eval_cfg: EvaluateConfig, split: str,
                   tasks: Sequence[str] | None = None) -> dict:
    """Errors of the aux readout on the first frame of each of `split`'s evaluation episodes."""
    if not getattr(policy.config, "aux_state", False):
        raise PipelineError("this checkpoint has no aux readout (it was trained with policy.aux_state_weight 0): "
                            "there is no position estimate to measure")
    if policy.config.privileged_state:
        raise PipelineError("this checkpoint reads the object and goal from the state (privileged_state): "
                            "its readout is not a reading of the pixels")
    specs = evaluation_episodes(env_cfg, eval_cfg, [split])
    report = {"split": split, "frame": "first frame of each episode", "tasks": {}}
    for task in tasks or resolve_tasks(env_cfg):
        queue = EpisodeQueue([s for s in specs if s.task == task])
        env = ChunkEnv(env_cfg.model_dump(), policy.config.chunk_len, 0.99, queue)
        estimates, truths = [], []
        try:
            for _ in range(len(queue.episodes)):
                obs, _ = env.reset()
                estimates.append(estimate(policy, obs))
                truths.append(policy.privileged_targets(np.asarray(obs[OBS_STATE], np.float64)[None])[0])
        finally:
            env.close()
        report["tasks"][task] = {"episodes": len(truths), **position_errors(np.stack(estimates), np.stack(truths))}
    return report
