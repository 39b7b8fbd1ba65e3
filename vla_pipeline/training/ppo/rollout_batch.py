"""Rollout storage and chunk-level GAE (semi-MDP: discount per env step, lambda per decision).

For decision k that executed n_k env steps with discounted chunk reward R_k:
    delta_k = R_k + g^{n_k} (1 - d_k) V(o_{k+1}) - V(o_k)
    A_k     = delta_k + g^{n_k} lam (1 - d_k)(1 - tau_k) A_{k+1}
d_k = episode terminated (success: no bootstrap), tau_k = cut by the time limit (bootstrap
from the value of the last observation, which `next_values` holds, but do not chain A).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def chunk_gae(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, steps: np.ndarray,
              terminated: np.ndarray, truncated: np.ndarray, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Arrays shaped (T, N): T decisions of N envs in time order. Returns (advantages, returns).

    `next_values[k]` is V of the observation returned after chunk k (the next decision's
    observation, or the final one of a truncated episode). The last row's chain is cut
    (A_{T} = 0), its delta still bootstraps from `next_values`.
    """
    rewards, values, next_values = (np.asarray(x, np.float64) for x in (rewards, values, next_values))
    discount = gamma ** np.asarray(steps, np.float64)
    not_done = 1.0 - np.asarray(terminated, np.float64)
    chain = not_done * (1.0 - np.asarray(truncated, np.float64))
    advantages = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1:])
    for k in range(len(rewards) - 1, -1, -1):
        delta = rewards[k] + discount[k] * not_done[k] * next_values[k] - values[k]
        running = delta + discount[k] * lam * chain[k] * running
        advantages[k] = running
    return advantages, advantages + values


@dataclass
class RolloutBatch:
    """One PPO iteration's decisions, flattened to (D, ...) after GAE."""

    images: np.ndarray  # (D, V, H, W, 3) uint8
    proprio: np.ndarray  # (D, 4)
    state: np.ndarray  # (D, 39): read only by a privileged policy
    task_index: np.ndarray  # (D,)
    actions: np.ndarray  # (D, K, A) sampled, normalised, unclipped
    step_mask: np.ndarray  # (D, K) 1 for executed steps
    log_probs: np.ndarray  # (D,) chunk log-prob under the behaviour policy
    values: np.ndarray  # (D,)
    advantages: np.ndarray  # (D,)
    returns: np.ndarray  # (D,)

    def __len__(self) -> int:
        return len(self.values)
