"""The Arrow schema of a buffer shard (one row per env step), versioned.

Version 2: one image column per camera (`image_<camera>`), the configuration's MT1 seed
beside its index, and MetaWorld's state (for privileged diagnosis only).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import pyarrow as pa

from vla_pipeline import constants as C

SCHEMA_NAME = "vla_pipeline.buffer"
SCHEMA_VERSION = 2
META_SCHEMA = b"vla_pipeline.schema"
META_VERSION = b"vla_pipeline.schema_version"
META_IMAGE_SHAPE = b"vla_pipeline.image_shape"
META_CAMERAS = b"vla_pipeline.cameras"


class FrameLayout(NamedTuple):
    """What every stored frame holds: one image per camera, in this order, of this shape.

    A tuple, so `cameras, image_shape = layout` unpacks it; `of_env` is the layout the env
    settings render (what a snapshot or a checkpoint must match)."""

    cameras: tuple[str, ...]
    image_shape: tuple[int, int, int]

    @classmethod
    def of_env(cls, env) -> "FrameLayout":
        return cls(tuple(env.cameras), (env.image_size, env.image_size, 3))


def buffer_schema(cameras: Sequence[str], image_shape: tuple[int, int, int]) -> pa.Schema:
    fields = [
        pa.field(C.EPISODE, pa.int64(), nullable=False),
        pa.field(C.STEP, pa.int32(), nullable=False),
        pa.field(C.TASK, pa.string(), nullable=False),
        pa.field(C.VARIATION_SEED, pa.int32(), nullable=False),
        pa.field(C.VARIATION, pa.int16(), nullable=False),
        pa.field(C.INSTRUCTION, pa.string(), nullable=False),
        *[pa.field(C.image_column(camera), pa.binary(), nullable=False) for camera in cameras],
        pa.field(C.PROPRIO, pa.list_(pa.float32(), C.PROPRIO_DIM), nullable=False),
        pa.field(C.STATE, pa.list_(pa.float32(), C.STATE_DIM), nullable=False),
        pa.field(C.ACTION, pa.list_(pa.float32(), C.ACTION_DIM), nullable=False),
        pa.field(C.REWARD, pa.float32(), nullable=False),
        pa.field(C.SUCCESS, pa.bool_(), nullable=False),
        pa.field(C.TERMINATED, pa.bool_(), nullable=False),
        pa.field(C.TRUNCATED, pa.bool_(), nullable=False),
        pa.field(C.SOURCE, pa.string(), nullable=False),
        pa.field(C.EPISODE_LENGTH, pa.int32(), nullable=False),
        pa.field(C.STEPS_TO_SUCCESS, pa.int32(), nullable=False),
    ]
    metadata = {
        META_SCHEMA: SCHEMA_NAME.encode(),
        META_VERSION: str(SCHEMA_VERSION).encode(),
        META_IMAGE_SHAPE: ",".join(map(str, image_shape)).encode(),
        META_CAMERAS: ",".join(cameras).encode(),
    }
    return pa.schema(fields, metadata=metadata)
