"""How fast the scripted demonstrators are, and how much of their time a hand axis is already
at the action limit: the room an RL policy has to finish sooner than its teacher.

The env clips each action to [-1, 1], and the hand moves at most a fixed distance per axis per
step, so a teacher whose largest hand-axis command is at the limit on nearly every step can be
beaten only by a shorter path, not by moving faster along its own (issue 38's finding).
"""

from __future__ import annotations

import numpy as np

from vla_pipeline.config import Params
from vla_pipeline.envs.experts import EXPERT_KINDS, run_expert_episode
from vla_pipeline.envs.sim import TaskSim
from vla_pipeline.envs.tasks import EpisodeSpec, resolve_tasks, split_configurations

AT_LIMIT = 0.99  # |action| at or above this counts as the limit (the env clips at 1)


def share_at_limit(actions: np.ndarray) -> float:
    """Share of steps whose largest hand-axis command (x, y, z; not the gripper) is at the limit."""
    hand = np.abs(np.asarray(actions, dtype=np.float64)[:, :3])
    return float((hand.max(axis=1) >= AT_LIMIT).mean()) if len(hand) else 0.0


def expert_pace(params: Params, episodes: int, split: str = "validation") -> dict:
    """Per task and expert kind, on the first `episodes` placements of `split` (no action noise,
    no rendering): successes, mean steps to success, and the share of steps at the limit."""
    placements = split_configurations(params.env, split)[:episodes]
    table = {}
    for task in resolve_tasks(params.env):
        sim = TaskSim(task, params.env, render=False)
        table[task] = {kind: _pace(sim, task, placements, kind, split) for kind in EXPERT_KINDS}
    return {"split": split, "episodes_per_task": len(placements), "at_limit": AT_LIMIT, "tasks": table,
            "mean": {kind: _mean_over_tasks(table, kind) for kind in EXPERT_KINDS}}


def _pace(sim: TaskSim, task: str, placements, kind: str, split: str) -> dict:
    steps, at_limit = [], []
    for i, place in enumerate(placements):
        episode = run_expert_episode(sim, EpisodeSpec(task, place.seed, place.index, i, split), 0.0, None,
                                     expert=kind)
        at_limit.append(share_at_limit(np.asarray(episode.actions)))
        if episode.steps_to_success > 0:
            steps.append(episode.steps_to_success)
    return {"successes": len(steps), "steps_to_success": float(np.mean(steps)) if steps else None,
            "share_at_limit": float(np.mean(at_limit))}


def _mean_over_tasks(table: dict, kind: str) -> dict:
    rows = [t[kind] for t in table.values()]
    steps = [r["steps_to_success"] for r in rows if r["steps_to_success"] is not None]
    return {"steps_to_success": float(np.mean(steps)) if steps else None,
            "share_at_limit": float(np.mean([r["share_at_limit"] for r in rows]))}
