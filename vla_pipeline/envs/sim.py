"""One MetaWorld task: variations, sparse/dense reward, success termination, horizon."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from vla_pipeline.config import EnvConfig
from vla_pipeline.constants import PROPRIO_DIM
from vla_pipeline.envs.rendering import FrameRenderer
from vla_pipeline.envs.tasks import NUM_VARIATIONS
from vla_pipeline.errors import PipelineError


@functools.lru_cache(maxsize=256)
def variation_tasks(task: str, seed: int) -> tuple:
    """The 50 pre-sampled configurations of `MT1(task, seed)`; `reset(seed=)` does not pick
    them, `set_task` does. Building one costs ~1 s (50 env resets), hence the cache."""
    import metaworld

    benchmark = metaworld.MT1(task, seed=seed)
    return benchmark.train_classes[task], tuple(benchmark.train_tasks)


def configuration_vector(task: str, seed: int, index: int) -> np.ndarray:
    """The object/goal placement vector MetaWorld samples for one configuration."""
    import pickle

    return np.asarray(pickle.loads(variation_tasks(task, seed)[1][index].data)["rand_vec"], np.float64)


def proprio_from_state(state: np.ndarray) -> np.ndarray:
    """Hand xyz + gripper opening: the only low-dimensional input the policy gets."""
    return np.asarray(state[:PROPRIO_DIM], dtype=np.float32)


@dataclass
class StepResult:
    state: np.ndarray
    reward: float
    success: bool
    terminated: bool
    truncated: bool


class TaskSim:
    """A MetaWorld env for one task, with our horizon, reward and a guarded renderer."""

    def __init__(self, task: str, cfg: EnvConfig, render: bool = True):
        env_cls, _ = variation_tasks(task, cfg.train_seeds[0])
        self.task = task
        self.cfg = cfg
        self.env = env_cls()
        self.renderer = (
            FrameRenderer(self.env.model, cfg)
            if render else None
        )
        self.t = 0
        self.ever_succeeded = False
        self.success_step = -1  # 1-based step of the first success flag, -1 if none yet
        self.state: np.ndarray | None = None

    def reset(self, variation_seed: int, variation: int) -> np.ndarray:
        if not 0 <= variation < NUM_VARIATIONS:
            raise PipelineError(f"variation {variation} out of range 0..{NUM_VARIATIONS - 1}")
        self.env.set_task(variation_tasks(self.task, variation_seed)[1][variation])
        state, _ = self.env.reset()
        self.t = 0
        self.ever_succeeded = False
        self.success_step = -1
        self.state = state
        return state

    def step(self, action: np.ndarray) -> StepResult:
        if self.t >= self.cfg.max_episode_steps:
            raise RuntimeError("episode is over: reset before stepping again")
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        state, dense_reward, _, _, info = self.env.step(action)
        self.t += 1
        success = bool(info["success"])
        first_success = success and not self.ever_succeeded
        if first_success:
            self.success_step = self.t
        self.ever_succeeded |= success
        if self.cfg.reward == "dense":
            reward = float(dense_reward)
        else:
            reward = float(first_success)
        reward -= self.cfg.step_cost
        terminated = success and self.cfg.terminate_on_success
        truncated = not terminated and self.t >= self.cfg.max_episode_steps
        self.state = state
        return StepResult(state, reward, success, terminated, truncated)

    def proprio(self) -> np.ndarray:
        return proprio_from_state(self.state)

    def state_vector(self) -> np.ndarray:
        return np.asarray(self.state, dtype=np.float32)

    def render(self) -> np.ndarray:
        """One frame per camera: (V, H, W, 3) uint8."""
        if self.renderer is None:
            raise RuntimeError("this TaskSim was built without a renderer")
        return self.renderer.render(self.env.data)

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
        self.env.close()
