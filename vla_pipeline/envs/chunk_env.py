"""The chunk executor and a gymnasium env whose step is one whole action chunk.

One `step` runs K actions open loop, stops early on success / termination / time limit,
and returns the discounted chunk reward R = sum_{i<n} gamma^i r_i and the number n of
executed steps. The camera renders only at decision points (after reset and after each
chunk), never in between, unless a video is being recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import gymnasium as gym
import numpy as np

from vla_pipeline.config import EnvConfig
from vla_pipeline.constants import (
    ACTION_DIM, OBS_IMAGE, OBS_PROPRIO, OBS_STATE, OBS_TASK_INDEX, PROPRIO_DIM, STATE_DIM,
)
from vla_pipeline.envs.sim import TaskSim
from vla_pipeline.envs.tasks import Configuration, EpisodeSpec, resolve_tasks


@dataclass
class ChunkResult:
    steps: int  # executed steps n <= K
    reward: float  # discounted chunk reward
    rewards: list[float]
    success: bool  # success flag seen inside the chunk
    terminated: bool
    truncated: bool
    proprios: list[np.ndarray] = field(default_factory=list)  # before each executed step
    states: list[np.ndarray] = field(default_factory=list)  # MetaWorld state before each step
    actions: list[np.ndarray] = field(default_factory=list)  # executed (clipped) actions
    successes: list[bool] = field(default_factory=list)  # success flag after each step


def execute_chunk(
    sim: TaskSim,
    actions: np.ndarray,
    gamma: float,
    on_step: Optional[Callable[[TaskSim], None]] = None,
) -> ChunkResult:
    """Run the K actions of `actions` (K x 4) on `sim`, stopping at the episode's end."""
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] != ACTION_DIM or len(actions) < 1:
        raise ValueError(f"expected an action chunk of shape (K>=1, {ACTION_DIM}), got {actions.shape}")
    rewards: list[float] = []
    proprios, states, executed, successes = [], [], [], []
    success = terminated = truncated = False
    for action in actions:
        proprios.append(sim.proprio())
        states.append(sim.state_vector())
        executed.append(np.clip(action, -1.0, 1.0).astype(np.float32))
        out = sim.step(action)
        rewards.append(out.reward)
        successes.append(out.success)
        success |= out.success
        if on_step is not None:
            on_step(sim)
        if out.terminated or out.truncated:
            terminated, truncated = out.terminated, out.truncated
            break
    discounted = float(sum(r * gamma**i for i, r in enumerate(rewards)))
    return ChunkResult(len(rewards), discounted, rewards, success, terminated, truncated,
                       proprios, states, executed, successes)


def _pad(values: list, length: int, width: int | None = None) -> np.ndarray:
    shape = (length,) if width is None else (length, width)
    out = np.zeros(shape, np.float32)
    if values:
        out[: len(values)] = np.asarray(values, np.float32)
    return out


@dataclass
class EpisodeQueue:
    """Episodes an env runs in order; `cycle_seed` set = sample forever instead."""

    episodes: Sequence[EpisodeSpec] = ()
    cycle_seed: Optional[int] = None
    tasks: Sequence[str] = ()
    configurations: Sequence[Configuration] = ()  # drawn uniformly for every task
    offset: int = 0  # where this env starts in the round-robin over tasks
    # Set: draw each task with these probabilities instead of round-robin (a curriculum).
    task_weights: Optional[Sequence[float]] = None
    _cursor: int = field(default=0, repr=False)

    def next(self, rng: np.random.Generator | None = None) -> Optional[EpisodeSpec]:
        if self.cycle_seed is None:
            if self._cursor >= len(self.episodes):
                return None
            spec = self.episodes[self._cursor]
            self._cursor += 1
            return spec
        assert rng is not None
        if self.task_weights is None:
            task = self.tasks[(self._cursor + self.offset) % len(self.tasks)]  # round-robin: balanced tasks
        else:
            task = self.tasks[int(rng.choice(len(self.tasks), p=np.asarray(self.task_weights)))]
        self._cursor += 1
        config = self.configurations[int(rng.integers(len(self.configurations)))]
        return EpisodeSpec(task, config.seed, config.index, int(rng.integers(2**31)), "train")


class ChunkEnv(gym.Env):
    """A MetaWorld multi-task env whose action is a chunk of K actions.

    Observation: one right-way-up RGB image per camera, proprio (hand xyz + gripper), the
    MetaWorld state (read only by privileged diagnosis policies), and the task's index (the
    policy maps it to the task's instruction). Episodes come from an `EpisodeQueue`;
    when it runs dry the env idles (`info["idle"]`) so vector envs can keep stepping.
    """

    metadata = {"render_modes": []}

    def __init__(self, env_cfg: dict, chunk_len: int, gamma: float, queue: EpisodeQueue,
                 record_frames: bool = False):
        super().__init__()
        self.cfg = EnvConfig.model_validate(env_cfg)
        if chunk_len < 1:
            raise ValueError("chunk_len must be >= 1")
        self.tasks = resolve_tasks(self.cfg)
        self.chunk_len = chunk_len
        self.gamma = gamma
        self.queue = queue
        self.record_frames = record_frames
        size = self.cfg.image_size
        views = len(self.cfg.cameras)
        self.observation_space = gym.spaces.Dict({
            OBS_IMAGE: gym.spaces.Box(0, 255, (views, size, size, 3), np.uint8),
            OBS_PROPRIO: gym.spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32),
            OBS_STATE: gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
            OBS_TASK_INDEX: gym.spaces.Discrete(len(self.tasks)),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (chunk_len, ACTION_DIM), np.float32)
        self._sims: dict[str, TaskSim] = {}
        self._sim: Optional[TaskSim] = None
        self._spec: Optional[EpisodeSpec] = None
        self._rng = np.random.default_rng(queue.cycle_seed)
        self._frames: list[np.ndarray] = []
        self.renders = 0
        self.env_steps = 0

    def _sim_for(self, task: str) -> TaskSim:
        # One sim per task, kept alive: recreating envs costs time, and freeing a renderer
        # while another lives is what blanks frames (env-probe.md 2b).
        if task not in self._sims:
            self._sims[task] = TaskSim(task, self.cfg)
        return self._sims[task]

    def _observe(self, record: bool = True) -> dict:
        image = self._sim.render()
        self.renders += 1
        if record and self.record_frames:
            self._frames.append(image)
        return {
            OBS_IMAGE: image,
            OBS_PROPRIO: self._sim.proprio(),
            OBS_STATE: self._sim.state_vector(),
            OBS_TASK_INDEX: self.tasks.index(self._sim.task),
        }

    def _idle_obs(self) -> dict:
        size = self.cfg.image_size
        return {
            OBS_IMAGE: np.zeros((len(self.cfg.cameras), size, size, 3), np.uint8),
            OBS_PROPRIO: np.zeros(PROPRIO_DIM, np.float32),
            OBS_STATE: np.zeros(STATE_DIM, np.float32),
            OBS_TASK_INDEX: 0,
        }

    def _episode_info(self) -> dict:
        spec = self._spec
        return {"idle": spec is None, "task": spec.task if spec else "",
                "variation_seed": spec.variation_seed if spec else -1,
                "variation": spec.variation if spec else -1, "split": spec.split if spec else "",
                "episode_seed": spec.seed if spec else -1}

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self._spec = self.queue.next(self._rng)
        self._frames = []
        if self._spec is None:
            self._sim = None
            return self._idle_obs(), self._episode_info()
        if self._spec.task not in self.tasks:
            raise ValueError(f"task {self._spec.task} is not in this env's task list")
        self._sim = self._sim_for(self._spec.task)
        self._sim.reset(self._spec.variation_seed, self._spec.variation)
        return self._observe(), self._episode_info()

    def step(self, action):
        info = self._episode_info()
        if self._sim is None:  # idle: nothing left to run
            k = self.chunk_len
            info.update(steps=0, success=False, episode_step=0, success_step=-1,
                        chunk_proprio=np.zeros((k, PROPRIO_DIM), np.float32),
                        chunk_states=np.zeros((k, STATE_DIM), np.float32),
                        chunk_actions=np.zeros((k, ACTION_DIM), np.float32),
                        chunk_rewards=np.zeros(k, np.float32), chunk_successes=np.zeros(k, np.float32))
            return self._idle_obs(), 0.0, False, False, info
        on_step = (lambda sim: self._frames.append(sim.render())) if self.record_frames else None
        actions = np.asarray(action, dtype=np.float64).reshape(-1, ACTION_DIM)
        result = execute_chunk(self._sim, actions, self.gamma, on_step)
        self.env_steps += result.steps
        # With recording on, the chunk's last step already stored this frame.
        obs = self._observe(record=False)
        info.update(steps=result.steps, success=result.success, episode_step=self._sim.t,
                    success_step=self._sim.success_step,
                    chunk_proprio=_pad(result.proprios, self.chunk_len, PROPRIO_DIM),
                    chunk_states=_pad(result.states, self.chunk_len, STATE_DIM),
                    chunk_actions=_pad(result.actions, self.chunk_len, ACTION_DIM),
                    chunk_rewards=_pad(result.rewards, self.chunk_len),
                    chunk_successes=_pad(result.successes, self.chunk_len))
        return obs, result.reward, result.terminated, result.truncated, info

    def recorded_frames(self) -> list[np.ndarray]:
        return list(self._frames)

    def set_task_weights(self, weights: Optional[Sequence[float]]) -> None:
        """Task probabilities for the episodes that start from now on (None: round-robin)."""
        self.queue.task_weights = None if weights is None else [float(w) for w in weights]

    def counters(self) -> dict:
        return {"renders": self.renders, "env_steps": self.env_steps}

    def close(self):
        for sim in self._sims.values():
            sim.close()
        self._sims.clear()
        self._sim = None
