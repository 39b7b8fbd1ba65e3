"""MetaWorld's scripted experts as demonstrators and as the evaluation ceiling."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vla_pipeline.envs.sim import TaskSim
from vla_pipeline.envs.tasks import EpisodeSpec


def make_expert(task: str):
    import warnings

    # MetaWorld warns that its own gains saturate; the env clips actions anyway.
    warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high", category=UserWarning)
    from metaworld.policies import ENV_POLICY_MAP

    if task not in ENV_POLICY_MAP:
        raise KeyError(f"MetaWorld has no scripted expert for {task}")
    return ENV_POLICY_MAP[task]()


@dataclass
class Episode:
    """A finished episode: per-step frames (optional), proprio, actions and outcomes."""

    spec: EpisodeSpec
    images: list[np.ndarray] = field(default_factory=list)  # observation before each step
    proprios: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def steps_to_success(self) -> int:
        """1-based step at which success was first flagged; -1 if never."""
        for i, s in enumerate(self.successes):
            if s:
                return i + 1
        return -1


def run_expert_episode(sim: TaskSim, spec: EpisodeSpec, action_noise: float, render: bool) -> Episode:
    """One scripted-expert episode; Gaussian action noise (clipped) widens the demo states."""
    expert = make_expert(spec.task)
    rng = np.random.default_rng(spec.seed)
    state = sim.reset(spec.variation)
    episode = Episode(spec)
    while True:
        if render:
            episode.images.append(sim.render())
        episode.proprios.append(sim.proprio())
        action = np.asarray(expert.get_action(state), dtype=np.float64)
        if action_noise > 0:
            action = action + rng.normal(0.0, action_noise, size=action.shape)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        out = sim.step(action)
        episode.actions.append(action)
        episode.rewards.append(out.reward)
        episode.successes.append(out.success)
        state = out.state
        if out.terminated or out.truncated:
            episode.terminated, episode.truncated = out.terminated, out.truncated
            return episode
