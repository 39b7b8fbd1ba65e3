"""The one episode type of the pipeline: scripted demos, RL rollouts and buffer entries.

Frames are kept PNG-encoded (one image per camera) at the steps where a frame was rendered:
every step (or every `frame_every` steps) for demos, decision points only for RL rollouts.
Steps without a frame hold an empty tuple.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from vla_pipeline import constants as C


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def encode_views(images: np.ndarray) -> tuple[bytes, ...]:
    """(V, H, W, 3) frames of one step -> one PNG per camera."""
    return tuple(encode_png(view) for view in images)


@dataclass
class Episode:
    task: str
    variation_seed: int  # the configuration: MT1(task, seed=variation_seed).train_tasks[variation]
    variation: int
    instruction: str = ""
    source: str = ""
    frames: list = field(default_factory=list)  # per step: PNG bytes per camera, () if none
    proprios: list = field(default_factory=list)  # observation before each step (4,)
    states: list = field(default_factory=list)  # MetaWorld state before each step (39,)
    actions: list = field(default_factory=list)  # executed (clipped) action (4,)
    rewards: list = field(default_factory=list)
    successes: list = field(default_factory=list)  # success flag after each step
    terminated: bool = False
    truncated: bool = False

    def add_step(self, frames: tuple, proprio, state, action, reward: float, success: bool) -> None:
        self.frames.append(tuple(frames))
        self.proprios.append(np.asarray(proprio, np.float32))
        self.states.append(np.asarray(state, np.float32))
        self.actions.append(np.asarray(action, np.float32))
        self.rewards.append(float(reward))
        self.successes.append(bool(success))

    def finish(self, terminated: bool, truncated: bool) -> "Episode":
        self.terminated, self.truncated = bool(terminated), bool(truncated)
        return self

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def steps_to_success(self) -> int:
        """1-based step at which success was first flagged; -1 if never."""
        hits = np.flatnonzero(np.asarray(self.successes, bool))
        return int(hits[0]) + 1 if len(hits) else -1

    @property
    def frame_count(self) -> int:
        return sum(1 for f in self.frames if f)

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-step numeric columns as arrays of fixed shape."""
        n = self.length
        return {
            C.PROPRIO: np.asarray(self.proprios, np.float32).reshape(n, C.PROPRIO_DIM),
            C.STATE: np.asarray(self.states, np.float32).reshape(n, C.STATE_DIM),
            C.ACTION: np.asarray(self.actions, np.float32).reshape(n, C.ACTION_DIM),
            C.REWARD: np.asarray(self.rewards, np.float32).reshape(n),
            C.SUCCESS: np.asarray(self.successes, bool).reshape(n),
        }
