"""The self behaviour-cloning buffer: the shortest successful episodes found so far.

Keyed per task, or per (task, variation) so that easy variations (short episodes) do not
crowd out hard ones (`research/seeds.md` 2.3). A success enters a slot that has room, or
replaces the slot's longest episode when it is strictly shorter (ties keep the older one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from vla_pipeline.data.episode import Episode
from vla_pipeline.data.snapshot import StepTable, decode_frame, decode_steps, episodes_to_table


@dataclass
class _Entry:
    order: int  # admission counter: older entries win ties
    episode: Episode


class SelfBCBuffer:
    def __init__(self, key: str, capacity: int):
        if key not in ("task", "task_variation"):
            raise ValueError(f"unknown buffer key {key!r}")
        if capacity < 1:
            raise ValueError("buffer capacity must be >= 1")
        self.key, self.capacity = key, capacity
        self._slots: dict[tuple, list[_Entry]] = {}
        self._counter = 0
        self.changed_tasks: set[str] = set()
        # Decoded frames per kept entry (by admission order): re-decoding every PNG of the
        # buffer after each admission cost ~40% of a CPU round.
        self._decoded: dict[int, np.ndarray] = {}

    def _slot_key(self, ep: Episode) -> tuple:
        return (ep.task,) if self.key == "task" else (ep.task, ep.variation_seed, ep.variation)

    def offer(self, episode: Episode) -> bool:
        """Admit a successful episode if there is room or it beats the slot's longest."""
        if episode.steps_to_success <= 0:
            return False
        slot = self._slots.setdefault(self._slot_key(episode), [])
        entry = _Entry(self._counter, episode)
        if len(slot) < self.capacity:
            slot.append(entry)
        else:
            # The longest; among equally long ones the newest goes first (keep older ones).
            worst = max(range(len(slot)), key=lambda i: (slot[i].episode.length, slot[i].order))
            if episode.length >= slot[worst].episode.length:
                return False
            slot[worst] = entry
        self._counter += 1
        self.changed_tasks.add(episode.task)
        return True

    def seed(self, episodes: Iterable[Episode]) -> set[str]:
        """Fill from an existing snapshot (in its order) without marking tasks as changed.

        Returns the tasks where some episode was not admitted: their content now differs
        from the source snapshot's shard.
        """
        differs = set()
        for ep in episodes:
            if not self.offer(ep):
                differs.add(ep.task)
        self.changed_tasks.clear()
        return differs

    def _entries(self) -> list[_Entry]:
        """Deterministic order: by slot key, then admission order."""
        out = []
        for key in sorted(self._slots):
            out += sorted(self._slots[key], key=lambda e: e.order)
        return out

    def episodes(self) -> list[Episode]:
        return [e.episode for e in self._entries()]

    def episodes_by_task(self) -> dict[str, list[Episode]]:
        by_task: dict[str, list[Episode]] = {}
        for ep in self.episodes():
            by_task.setdefault(ep.task, []).append(ep)
        return by_task

    @property
    def version(self) -> int:
        """Changes whenever an episode is admitted (cache key for decoded views)."""
        return self._counter

    def __len__(self) -> int:
        return sum(len(s) for s in self._slots.values())

    def stats(self) -> dict:
        eps = self.episodes()
        lengths = [ep.length for ep in eps]
        return {"episodes": len(eps), "slots": len(self._slots),
                "mean_length": float(np.mean(lengths)) if lengths else None,
                "self_episodes": sum(ep.source != "expert" for ep in eps)}

    def step_table(self, cameras: tuple[str, ...], image_shape: tuple[int, int, int]) -> StepTable:
        """Decoded training view of the current content (frames decoded once per entry)."""
        entries = self._entries()
        live = {e.order for e in entries}
        self._decoded = {order: f for order, f in self._decoded.items() if order in live}
        for e in entries:
            if e.order not in self._decoded or self._decoded[e.order].shape[2:] != tuple(image_shape):
                self._decoded[e.order] = _decode_episode(e.episode, len(cameras), image_shape)
        episodes = [e.episode for e in entries]
        images = np.concatenate([self._decoded[e.order] for e in entries])
        return decode_steps(episodes_to_table(episodes, cameras, image_shape), cameras, image_shape,
                            "self-BC buffer", images)


def _decode_episode(ep: Episode, views: int, image_shape: tuple[int, int, int]) -> np.ndarray:
    """(length, V, H, W, 3); a corrupt frame is a clear error naming the episode."""
    out = np.zeros((ep.length, views, *image_shape), np.uint8)
    for t, frames in enumerate(ep.frames):
        for v, data in enumerate(frames):
            out[t, v] = decode_frame(data, image_shape, f"buffer episode ({ep.task}, configuration "
                                     f"{ep.variation_seed}/{ep.variation}, source {ep.source}) step {t} view {v}")
    return out
