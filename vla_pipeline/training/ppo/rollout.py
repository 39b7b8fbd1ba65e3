"""Collect chunk decisions from vector envs with batched policy inference.

One decision per chunk: the env renders once, the policy samples K actions, the env runs
them open loop. Episodes keep running across iterations (the collector owns the envs).
Finished episodes come back as `Episode`s with a frame only at decision points.
"""

from __future__ import annotations

import numpy as np
import torch

from vla_pipeline import constants as C
from vla_pipeline.data.episode import Episode, encode_views
from vla_pipeline.envs.vector import reset_done
from vla_pipeline.training.ppo.rollout_batch import RolloutBatch, chunk_gae


def add_chunk(episode: Episode, frames: tuple[bytes, ...], info: dict, i: int, steps: int) -> None:
    """Append one executed chunk of env i: the decision frame (PNG per camera) at its first step only."""
    for j in range(steps):
        episode.add_step(frames if j == 0 else (), info["chunk_proprio"][i][j], info["chunk_states"][i][j],
                         info["chunk_actions"][i][j], float(info["chunk_rewards"][i][j]),
                         bool(info["chunk_successes"][i][j]))


class ChunkCollector:
    def __init__(self, envs, gamma: float, lam: float, source: str, generator: torch.Generator):
        self.envs, self.gamma, self.lam, self.source, self.generator = envs, gamma, lam, source, generator
        self.obs, info = envs.reset()
        self.open = [self._new_episode(info, i) for i in range(envs.num_envs)]
        self.env_steps = 0

    def _new_episode(self, info: dict, i: int) -> Episode:
        return Episode(str(info["task"][i]), int(info["variation_seed"][i]), int(info["variation"][i]),
                       source=self.source)

    @torch.no_grad()
    def _values(self, policy, obs: dict) -> np.ndarray:
        return policy(**policy.obs_to_tensors(obs)).value.cpu().numpy().astype(np.float64)

    def _step_and_encode(self, actions: np.ndarray) -> tuple:
        """Step every env and PNG-encode the decision frames (~1.3 ms each at 84 px). Worker
        processes step while this process encodes, which it would otherwise wait idle. The
        frames are `self.obs`, the vector env's copy, which the step in flight does not touch."""
        if hasattr(self.envs, "step_async"):  # AsyncVectorEnv
            self.envs.step_async(actions)
            frames = self._encode_decision_frames()
            return (*self.envs.step_wait(), frames)
        frames = self._encode_decision_frames()
        return (*self.envs.step(actions), frames)

    def _encode_decision_frames(self) -> list[tuple[bytes, ...]]:
        return [encode_views(views) for views in self.obs[C.OBS_IMAGE]]

    @torch.no_grad()
    def collect(self, policy, lockstep_steps: int) -> tuple[RolloutBatch, list[Episode], dict]:
        n, k = self.envs.num_envs, policy.config.chunk_len
        keys = ("images", "proprio", "state", "task_index", "actions", "step_log_probs", "values", "rewards",
                "steps", "terminated", "truncated", "next_values")
        store = {key: [] for key in keys}
        finished: list[Episode] = []
        instructions = policy.config.instructions
        with policy.instruction_cache():  # weights are fixed while collecting: encode each task mix once
            for _ in range(lockstep_steps):
                out = policy.act(self.obs, deterministic=False, generator=self.generator, with_log_probs=True)
                next_obs, rewards, terminated, truncated, info, frames = self._step_and_encode(out["actions"])
                steps = np.asarray(info["steps"], np.int64)
                next_values = np.zeros(n)
                if truncated.any():  # bootstrap from the final observation of cut episodes
                    next_values[truncated] = self._values(policy, _subset(next_obs, truncated))
                for key, value in (("images", self.obs[C.OBS_IMAGE]), ("proprio", self.obs[C.OBS_PROPRIO]),
                                   ("state", self.obs[C.OBS_STATE]),
                                   ("task_index", self.obs[C.OBS_TASK_INDEX]), ("actions", out["actions_normalized"]),
                                   ("step_log_probs", out["step_log_probs"]), ("values", out["value"]),
                                   ("rewards", rewards), ("steps", steps), ("terminated", terminated),
                                   ("truncated", truncated), ("next_values", next_values)):
                    store[key].append(np.asarray(value).copy())
                done = terminated | truncated
                for i in range(n):
                    add_chunk(self.open[i], frames[i], info, i, int(steps[i]))
                    if done[i]:
                        self.open[i].instruction = instructions[int(self.obs[C.OBS_TASK_INDEX][i])]
                        finished.append(self.open[i].finish(bool(terminated[i]), bool(truncated[i])))
                self.env_steps += int(steps.sum())
                self.obs = next_obs
                if done.any():
                    self.obs, reset_info = reset_done(self.envs, done)
                    for i in np.flatnonzero(done):
                        self.open[i] = self._new_episode(reset_info, i)
            arrays = {key: np.stack(v) for key, v in store.items()}  # (T, N, ...)
            # V(o_{k+1}) of a running episode is the next decision's value; the last row uses the
            # value of the current observation (the chain is cut there).
            last_values = self._values(policy, self.obs)
        running = ~(arrays["terminated"] | arrays["truncated"])
        following = np.concatenate([arrays["values"][1:], last_values[None]], axis=0)
        arrays["next_values"] = np.where(running, following, arrays["next_values"])
        advantages, returns = chunk_gae(arrays["rewards"], arrays["values"], arrays["next_values"], arrays["steps"],
                                        arrays["terminated"], arrays["truncated"], self.gamma, self.lam)
        flat = lambda a: a.reshape(-1, *a.shape[2:])  # noqa: E731
        step_mask = (np.arange(k)[None, None, :] < arrays["steps"][..., None]).astype(np.float32)
        batch = RolloutBatch(
            images=flat(arrays["images"]), proprio=flat(arrays["proprio"]).astype(np.float32),
            state=flat(arrays["state"]).astype(np.float32),
            task_index=flat(arrays["task_index"]).astype(np.int64), actions=flat(arrays["actions"]).astype(np.float32),
            step_mask=flat(step_mask), log_probs=flat(arrays["step_log_probs"]).astype(np.float32),
            values=flat(arrays["values"]).astype(np.float32), advantages=flat(advantages).astype(np.float32),
            returns=flat(returns).astype(np.float32))
        stats = {"decisions": int(arrays["steps"].size), "env_steps": int(arrays["steps"].sum()),
                 "episodes": len(finished), "successes": sum(ep.steps_to_success > 0 for ep in finished)}
        return batch, finished, stats


def _subset(obs: dict, mask: np.ndarray) -> dict:
    return {key: np.asarray(value)[mask] for key, value in obs.items()}
