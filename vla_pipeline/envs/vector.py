"""Vector envs of `ChunkEnv`: in-process (sync), one process per env (async, spawn), or Ray
actors (ray, envs/ray_vector.py).

`spawn`, never `fork`: a forked worker hangs on its first EGL render once the parent has
rendered (dvc-scaling.md 3.5). Envs are built inside the workers from picklable factories.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from typing import Sequence

import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv
from gymnasium.vector.async_vector_env import AsyncState, _async_worker

from vla_pipeline.config import EnvConfig
from vla_pipeline.envs.chunk_env import ChunkEnv, EpisodeQueue
from vla_pipeline.errors import PipelineError
from vla_pipeline.lifetime import die_with_parent


def make_chunk_vector_env(
    cfg: EnvConfig, chunk_len: int, gamma: float, queues: Sequence[EpisodeQueue], mode: str
) -> VectorEnv:
    factories = [
        functools.partial(ChunkEnv, cfg.model_dump(), chunk_len, gamma, queue) for queue in queues
    ]
    if mode == "sync":
        return SyncVectorEnv(factories, autoreset_mode=AutoresetMode.DISABLED)
    if mode == "ray":
        from vla_pipeline.envs.ray_vector import RayChunkEnvs  # Ray is imported only when used

        return RayChunkEnvs(factories, cfg.ray)
    _quiet_resource_tracker()
    try:
        return _AsyncChunkEnvs(
            factories, context="spawn", autoreset_mode=AutoresetMode.DISABLED, daemon=True, worker=_worker
        )
    except (EOFError, ConnectionResetError, BrokenPipeError):
        raise PipelineError("an env worker process died while starting; see its output above "
                            "(out of memory? a crash in the simulator or renderer?)") from None


class _AsyncChunkEnvs(AsyncVectorEnv):
    """Closing while a step is pending (an exception, Ctrl-C or SIGTERM interrupted the wait)
    terminates the workers: gymnasium would wait for the pending results again and, when
    some had already been read, block forever."""

    def reset_async(self, *args, **kwargs):
        with self._worker_deaths():
            return super().reset_async(*args, **kwargs)

    def step_async(self, *args, **kwargs):
        with self._worker_deaths():  # sending to a dead worker: BrokenPipeError
            return super().step_async(*args, **kwargs)

    def call_async(self, *args, **kwargs):
        with self._worker_deaths():
            return super().call_async(*args, **kwargs)

    def reset_wait(self, *args, **kwargs):
        with self._worker_deaths():
            return super().reset_wait(*args, **kwargs)

    def step_wait(self, *args, **kwargs):
        with self._worker_deaths():
            return super().step_wait(*args, **kwargs)

    def call_wait(self, *args, **kwargs):
        with self._worker_deaths():
            return super().call_wait(*args, **kwargs)

    @contextlib.contextmanager
    def _worker_deaths(self):
        """A worker that died (crash, OOM kill) closes its pipe: say which, in one line."""
        try:
            yield
        except (EOFError, ConnectionResetError, BrokenPipeError):
            time.sleep(0.5)  # let the dead worker's exit code land
            dead = [f"worker {i} (pid {p.pid}, exit code {p.exitcode})" for i, p in enumerate(self.processes)
                    if not p.is_alive()]
            raise PipelineError(f"an env worker process died: {', '.join(dead) or 'pipe closed'}; nothing was "
                                "written: rerun the stage (a kill or out of memory? with env.vector: sync the "
                                "envs run in the stage's own process)") from None

    def close_extras(self, timeout: float | None = None, terminate: bool = False) -> None:
        if self._state != AsyncState.DEFAULT:
            self._state = AsyncState.DEFAULT  # the pending results are not wanted any more
            terminate = True
        if any(not p.is_alive() for p in self.processes):
            terminate = True  # a dead worker's pipe is broken: "close" cannot be sent to it
        super().close_extras(timeout=timeout, terminate=terminate)


def _worker(*args) -> None:
    """gymnasium's worker, minus the noise when the main process goes away.

    Ctrl-C reaches every process of the terminal's group: workers ignore it and the main
    process stops them. When the main process is killed, the worker dies with it
    (lifetime.die_with_parent), or its pipe breaks first: it exits
    silently instead of printing two tracebacks that nobody can act on.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()  # a `kill -9` of the stage ends its workers too
    try:
        _async_worker(*args)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        os._exit(0)


def _quiet_resource_tracker() -> None:
    """After a `kill -9` of the main process, multiprocessing's resource tracker frees the
    workers' semaphores and warns about them ("leaked semaphore objects"); the cleanup is
    right, the warning is noise. The tracker starts with the first semaphore and reads
    PYTHONWARNINGS from the environment it inherits."""
    rule = "ignore:resource_tracker:UserWarning"
    current = os.environ.get("PYTHONWARNINGS", "")
    if rule not in current.split(","):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [current, rule]))


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
