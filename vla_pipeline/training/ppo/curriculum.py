"""Which task the next training episode runs: uniform, where the policy fails, or where it
sometimes succeeds.

With sparse reward a task the policy already solves every time gives PPO almost nothing
to learn from (advantages ~0), and so does a task it never solves. `failures` draws each
new episode's task in proportion to the task's recent failure rate 1 - p; `uncertain` in
proportion to p (1 - p), the variance of the success signal, which peaks where some
episodes succeed and others do not. Both are floored so that every task keeps being
visited (steps to success still improve, and PPO must not drift on a task unseen).
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np


class TaskCurriculum:
    def __init__(self, tasks: Sequence[str], mode: str, floor: float, window: int):
        if mode not in ("uniform", "failures", "uncertain"):
            raise ValueError(f"unknown task sampling {mode!r}")
        self.tasks, self.mode, self.floor = list(tasks), mode, floor
        self._recent = {task: deque(maxlen=window) for task in self.tasks}

    def record(self, task: str, success: bool) -> None:
        self._recent[task].append(bool(success))

    def success_estimate(self, task: str) -> float:
        """Recent success rate with a uniform Beta(1, 1) prior: 0.5 before any episode."""
        recent = self._recent[task]
        return (sum(recent) + 1.0) / (len(recent) + 2.0)

    def weights(self) -> list[float] | None:
        """Task probabilities, or None for the env's balanced round-robin."""
        if self.mode == "uniform":
            return None
        p = np.array([self.success_estimate(t) for t in self.tasks])
        signal = 1.0 - p if self.mode == "failures" else p * (1.0 - p)
        raw = np.maximum(signal, self.floor)
        return (raw / raw.sum()).tolist()
