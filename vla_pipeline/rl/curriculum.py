"""Which task the next training episode runs: uniform, or where the policy still fails.

With sparse reward a task the policy already solves every time gives PPO almost nothing
to learn from (advantages ~0), while the failing tasks see a handful of episodes per
round. `failures` draws each new episode's task with probability proportional to the
task's recent failure rate, floored so that solved tasks keep being visited (their steps
to success still improve, and PPO must not drift on them unseen).
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np


class TaskCurriculum:
    def __init__(self, tasks: Sequence[str], mode: str, floor: float, window: int):
        if mode not in ("uniform", "failures"):
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
        raw = np.array([max(1.0 - self.success_estimate(t), self.floor) for t in self.tasks])
        return (raw / raw.sum()).tolist()
