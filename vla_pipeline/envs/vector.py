"""Vector envs of `ChunkEnv`: in-process (sync) or one process per env (async, spawn).

`spawn`, never `fork`: a forked worker hangs on its first EGL render once the parent has
rendered (dvc-scaling.md 3.5). Envs are built inside the workers from picklable factories.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv

from vla_pipeline.config import EnvConfig
from vla_pipeline.envs.chunk_env import ChunkEnv, EpisodeQueue


def make_chunk_vector_env(
    cfg: EnvConfig, chunk_len: int, gamma: float, queues: Sequence[EpisodeQueue], mode: str
) -> VectorEnv:
    factories = [
        functools.partial(ChunkEnv, cfg.model_dump(), chunk_len, gamma, queue) for queue in queues
    ]
    if mode == "sync":
        return SyncVectorEnv(factories, autoreset_mode=AutoresetMode.DISABLED)
    return AsyncVectorEnv(
        factories, context="spawn", autoreset_mode=AutoresetMode.DISABLED, daemon=True
    )


def split_round_robin(items: Sequence, parts: int) -> list[list]:
    """Deal items out like cards: part i gets items i, i+parts, ... (keeps order stable)."""
    return [list(items[i::parts]) for i in range(parts)]


def reset_done(envs: VectorEnv, done: np.ndarray):
    """Reset only the finished envs (autoreset is disabled)."""
    return envs.reset(options={"reset_mask": np.asarray(done, dtype=bool)})


def sum_counters(envs: VectorEnv) -> dict:
    if isinstance(envs, SyncVectorEnv):
        counters = [env.counters() for env in envs.envs]
    else:
        counters = envs.call("counters")
    return {key: int(sum(c[key] for c in counters)) for key in counters[0]}
