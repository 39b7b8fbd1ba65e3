"""The self behaviour-cloning buffer: the shortest successful episodes found so far.

Keyed per task, or per (task, variation) so that easy variations (short episodes) do not
crowd out hard ones (`research/seeds.md` 2.3). A success enters a slot that has room, or
replaces the slot's longest episode when it is strictly shorter (ties keep the older one).

With `admit_margin` set, a success also has to be fast to enter a slot that has room: no
longer than `admit_margin` x the median length of its task's episodes in the buffer. Without
it, most of a round's successes land in placements the demos never covered and are cloned
however slow they are (the buffer's mean length rose 53.8 -> 55.7 over five rounds), so
self-BC holds the policy at, or below, its teacher's pace. Seeding (demos, an earlier
round's buffer) is not filtered: what was admitted once stays the reference.
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
    def __init__(self, key: str, capacity: int, admit_margin: float | None = None):
        if key not in ("task", "task_variation"):
            raise ValueError(f"unknown buffer key {key!r}")
        if capacity < 1:
            raise ValueError("buffer capacity must be >= 1")
        if admit_margin is not None and admit_margin <= 0:
            raise ValueError("buffer admit_margin must be > 0 (or None: admit any success into a free slot)")
        self.key, self.capacity, self.admit_margin = key, capacity, admit_margin
        self._slots: dict[tuple, list[_Entry]] = {}
        self._counter = 0
        self.changed_tasks: set[str] = set()
        # Decoded frames per kept entry (by admission order): re-decoding every PNG of the
        # buffer after each admission cost ~40% of a CPU round.
        self._decoded: dict[int, np.ndarray] = {}

    def _slot_key(self, ep: Episode) -> tuple:
        return (ep.task,) if self.key == "task" else (ep.task, ep.variation_seed, ep.variation)

    def offer(self, episode: Episode, seeding: bool = False) -> bool:
        """Admit a successful episode if there is room (and, with `admit_margin`, it is fast
        for its task) or it beats the slot's longest."""
        if episode.steps_to_success <= 0:
            return False
        slot = self._slots.setdefault(self._slot_key(episode), [])
        entry = _Entry(self._counter, episode)
        if len(slot) < self.capacity:
            if not seeding and not self._fast_enough(episode):
                return False
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

    def _fast_enough(self, episode: Episode) -> bool:
        if self.admit_margin is None:
            return True
        lengths = [e.episode.length for key, slot in self._slots.items() if key[0] == episode.task for e in slot]
        return not lengths or episode.length <= self.admit_margin * float(np.median(lengths))

    def seed(self, episodes: Iterable[Episode]) -> set[str]:
        """Fill from an existing snapshot (in its order) without marking tasks as changed.

        Returns the tasks where some episode was not admitted: their content now differs
        from the source snapshot's shard.
        """
        differs = set()
        for ep in episodes:
            if not self.offer(ep, seeding=True):
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
