"""CO-RFT's chunked TD targets: what every demo step's target needs, apart from the bootstrap value.

Every demo step t is a transition (not only chunk-aligned ones): the observation o_t, the data
chunk a[t:t+K] with its pad mask, and for each prefix j = 1..J (J = `td_chunk`)

    y_t^(j) = sum_{i<j} gamma^i r_{t+i} + gamma^j (1 - d_{t,j}) min_m Qbar_m^(J)(o_{t+j}, pibar(o_{t+j}))

where d_{t,j} = 1 when the episode ended within the first j actions. A critic ensemble reads
the trunk's fused readout tokens plus the (padded) chunk and predicts one value per prefix (or
the full chunk's only). A conservative term (Cal-QL: CQL with policy-chunk values floored at
the Monte-Carlo return-to-go) keeps unseen chunks low; the actor is TD3+BC on the policy's
action head. With `trainable: heads` the trunk is frozen and its readouts are computed once
per frame, so each update is a few small MLPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla_pipeline.data.snapshot import StepTable
from vla_pipeline.errors import PipelineError


@dataclass
class ChunkTargets:
    """Per row of a step table, what the chunk TD target needs (J = td_chunk columns)."""

    prefix_return: np.ndarray  # (N, J) sum_{i<j} gamma^i r_{t+i}, rewards past the episode end are 0
    done: np.ndarray  # (N, J) 1 when the episode terminated within the first j actions
    bootstrap: np.ndarray  # (N, J) 1 when o_{t+j} exists (the episode goes on past t+j)
    valid: np.ndarray  # (N, J) 0 when the episode was cut (truncated) inside the prefix: no target
    next_row: np.ndarray  # (N, J) row of o_{t+j} (clipped to the episode's last row)
    return_to_go: np.ndarray  # (N,) sum_i gamma^i r_{t+i} to the episode's end: Cal-QL's floor


def step_rewards(success: np.ndarray, success_reward: float, step_cost: float) -> np.ndarray:
    """r_t = success_reward * 1[success at t] - step_cost (a demo ends at its success)."""
    return success.astype(np.float64) * success_reward - step_cost


def chunk_targets(step: np.ndarray, episode_length: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
                  td_chunk: int, gamma: float) -> ChunkTargets:
    """Everything but the bootstrap value of y_t^(j), for every row. Rows ordered by (episode, step);
    `terminated[i]` is true on an episode's last row when it ended by termination (success)."""
    n = len(step)
    remaining = episode_length - step  # actions left in the episode, this one included
    last_row = np.arange(n) + remaining - 1
    ended_by_termination = terminated[last_row]
    # Return-to-go by a backward pass over each episode.
    return_to_go = np.zeros(n)
    running = 0.0
    for i in range(n - 1, -1, -1):
        running = reward[i] + gamma * (running if remaining[i] > 1 else 0.0)
        return_to_go[i] = running
    prefix_return = np.zeros((n, td_chunk))
    done = np.zeros((n, td_chunk))
    bootstrap = np.zeros((n, td_chunk))
    valid = np.ones((n, td_chunk))
    next_row = np.zeros((n, td_chunk), np.int64)
    acc = np.zeros(n)
    for j in range(1, td_chunk + 1):
        inside = remaining >= j  # the j-th action (step t+j-1) exists
        acc = acc + np.where(inside, gamma ** (j - 1) * reward[np.minimum(np.arange(n) + j - 1, last_row)], 0.0)
        prefix_return[:, j - 1] = acc
        ends = remaining <= j  # the episode is over after the prefix: no o_{t+j}
        done[:, j - 1] = ends & ended_by_termination
        bootstrap[:, j - 1] = ~ends
        valid[:, j - 1] = ~(ends & ~ended_by_termination)
        next_row[:, j - 1] = np.minimum(np.arange(n) + j, last_row)
    return ChunkTargets(prefix_return.astype(np.float32), done.astype(np.float32), bootstrap.astype(np.float32),
                        valid.astype(np.float32), next_row, return_to_go.astype(np.float32))


def check_every_step_has_a_frame(table: StepTable) -> None:
    if not table.has_frame.all():
        missing = int((~table.has_frame).sum())
        raise PipelineError(f"CO-RFT needs a frame at every step (o_(t+j) for every j); this snapshot lacks "
                            f"{missing} of {len(table.has_frame)} (collect it with offline_demos.frame_every: 1)")
