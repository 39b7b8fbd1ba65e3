"""MetaWorld's scripted experts as demonstrators and as the evaluation ceiling."""

from __future__ import annotations

import numpy as np

from vla_pipeline.data.episode import Episode, encode_views
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


def run_expert_episode(sim: TaskSim, spec: EpisodeSpec, action_noise: float, frame_every: int | None,
                       instruction: str = "", source: str = "expert") -> Episode:
    """One scripted-expert episode; Gaussian action noise (clipped) widens the demo states.

    `frame_every`: render (and PNG-encode) the cameras every N steps, starting at step 0;
    None renders nothing (the evaluation ceiling needs no pixels).
    """
    expert = make_expert(spec.task)
    rng = np.random.default_rng(spec.seed)
    state = sim.reset(spec.variation_seed, spec.variation)
    episode = Episode(spec.task, spec.variation_seed, spec.variation, instruction, source)
    while True:
        frames = ()
        if frame_every is not None and sim.t % frame_every == 0:
            frames = encode_views(sim.render())
        proprio, state_vector = sim.proprio(), sim.state_vector()
        action = np.asarray(expert.get_action(state), dtype=np.float64)
        if action_noise > 0:
            action = action + rng.normal(0.0, action_noise, size=action.shape)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        out = sim.step(action)
        episode.add_step(frames, proprio, state_vector, action, out.reward, out.success)
        state = out.state
        if out.terminated or out.truncated:
            return episode.finish(out.terminated, out.truncated)
