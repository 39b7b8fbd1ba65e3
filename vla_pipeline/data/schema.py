"""The Arrow schema of a buffer shard (one row per env step), versioned."""

from __future__ import annotations

import pyarrow as pa

from vla_pipeline import constants as C

SCHEMA_NAME = "vla_pipeline.buffer"
SCHEMA_VERSION = 1
META_SCHEMA = b"vla_pipeline.schema"
META_VERSION = b"vla_pipeline.schema_version"
META_IMAGE_SHAPE = b"vla_pipeline.image_shape"


def buffer_schema(image_shape: tuple[int, int, int]) -> pa.Schema:
    fields = [
        pa.field(C.EPISODE, pa.int64(), nullable=False),
        pa.field(C.STEP, pa.int32(), nullable=False),
        pa.field(C.TASK, pa.string(), nullable=False),
        pa.field(C.VARIATION, pa.int16(), nullable=False),
        pa.field(C.INSTRUCTION, pa.string(), nullable=False),
        pa.field(C.IMAGE, pa.binary(), nullable=False),
        pa.field(C.PROPRIO, pa.list_(pa.float32(), C.PROPRIO_DIM), nullable=False),
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
    }
    return pa.schema(fields, metadata=metadata)
