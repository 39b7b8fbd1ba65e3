"""Action-chunk windows: the target for step t is a[t:t+K], padded at the episode end."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from vla_pipeline import constants as C
from vla_pipeline.data.snapshot import StepTable


def chunk_window_indices(step: np.ndarray, episode_length: np.ndarray, chunk_len: int) -> tuple[np.ndarray, np.ndarray]:
    """For every row i: row indices of a[t:t+K] and a mask that is 0 past the episode end.

    Rows must be ordered by (episode, step). Padded positions repeat the episode's last row
    (so gathers stay in range) and carry mask 0, so they never reach the loss.
    """
    n = len(step)
    offsets = np.arange(chunk_len)
    remaining = (episode_length - step)[:, None]  # steps left, including this one
    mask = offsets[None, :] < remaining
    index = np.arange(n)[:, None] + np.minimum(offsets[None, :], remaining - 1)
    return index.astype(np.int64), mask.astype(np.float32)


def sample_weights(table: StepTable, balance_tasks: bool, task_weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Sampling weight of every row that has a frame (zero elsewhere).

    Each episode weighs as much as its length, however many frames it has: an RL rollout
    (a frame per decision) counts as much per env step as a demo (a frame per step). With
    `balance_tasks` every task gets the same total weight, so short tasks are not rare;
    `task_weights` then scales a task's share (1 for tasks it does not name).
    """
    starts = np.flatnonzero(table.step == 0)
    episode_of_row = np.cumsum(table.step == 0) - 1
    frames_per_episode = np.add.reduceat(table.has_frame.astype(np.int64), starts)
    weights = np.where(table.has_frame,
                       table.episode_length / np.maximum(frames_per_episode[episode_of_row], 1), 0.0)
    if balance_tasks:
        for task in np.unique(table.task):
            rows = table.task == task
            weights[rows] *= (task_weights or {}).get(task, 1.0) / weights[rows].sum()
    return weights / weights.sum()


class ChunkWindows:
    """Samples (observation at t, a[t:t+K], mask) batches from a decoded snapshot."""

    def __init__(self, table: StepTable, chunk_len: int, task_names: list[str], balance_tasks: bool = False,
                 task_weights: Mapping[str, float] | None = None):
        self.table = table
        self.chunk_len = chunk_len
        self.index, self.mask = chunk_window_indices(table.step, table.episode_length, chunk_len)
        lookup = {name: i for i, name in enumerate(task_names)}
        unknown = sorted(set(table.task) - set(lookup))
        if unknown:
            raise ValueError(f"snapshot has tasks the policy does not know: {unknown}")
        self.task_index = np.array([lookup[t] for t in table.task], dtype=np.int64)
        weights = sample_weights(table, balance_tasks, task_weights)
        self.sample_rows = np.flatnonzero(weights > 0)  # only steps with a rendered frame
        self._cumulative = np.cumsum(weights[self.sample_rows])
        self._cumulative /= self._cumulative[-1]

    def sample(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        picks = np.searchsorted(self._cumulative, rng.random(batch_size), side="right")
        return self.sample_rows[np.minimum(picks, len(self.sample_rows) - 1)]

    def __len__(self) -> int:
        return len(self.sample_rows)

    def batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {
            C.OBS_IMAGE: self.table.images[rows],
            C.OBS_PROPRIO: self.table.proprio[rows],
            C.OBS_STATE: self.table.state[rows],
            C.OBS_TASK_INDEX: self.task_index[rows],
            C.ACTION_CHUNK: self.table.action[self.index[rows]],
            C.ACTION_MASK: self.mask[rows],
        }
