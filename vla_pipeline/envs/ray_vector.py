"""Chunk envs on Ray actors (`env.vector: ray`): the same vector env, its workers anywhere.

Each actor owns `env.ray.envs_per_worker` consecutive `ChunkEnv`s; the policy keeps acting in
the calling process on the whole batch, so a round's episodes are the ones the local
backends give: env i gets episode queue i on every backend, and an env's episode depends
only on its queue and the actions it receives (tests/test_distributed.py compares them).

The driver mirrors gymnasium's `SyncVectorEnv` (same observation concatenation, same info
layout, reset of masked envs only), so `ChunkCollector` and evaluation use it unchanged;
`step_async` lets the collector PNG-encode the decision frames while the actors step.
Ray starts on this machine unless `env.ray.address` (or RAY_ADDRESS) names a cluster.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import numpy as np
from gymnasium.vector import VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array

from vla_pipeline.config import RayConfig
from vla_pipeline.errors import PipelineError


class EnvGroup:
    """A Ray actor's envs, stepped one after another (as `SyncVectorEnv` does)."""

    def __init__(self, factories: Sequence[Callable]):
        self.envs = [make() for make in factories]

    def spaces(self) -> tuple:
        return self.envs[0].observation_space, self.envs[0].action_space

    def reset(self, mask: Sequence[bool], seeds: Sequence[Optional[int]], options: Optional[dict]) -> list:
        return [env.reset(seed=seed, options=options) if keep else None
                for env, keep, seed in zip(self.envs, mask, seeds)]

    def step(self, actions: np.ndarray) -> list:
        return [env.step(action) for env, action in zip(self.envs, actions)]

    def call(self, name: str, args: tuple, kwargs: dict) -> list:
        return [getattr(env, name)(*args, **kwargs) for env in self.envs]

    def close(self) -> None:
        for env in self.envs:
            env.close()


def worker_slices(num_envs: int, envs_per_worker: int) -> list[slice]:
    """Consecutive env indices per actor: 5 envs, 2 per worker -> [0:2], [2:4], [4:5]."""
    workers = math.ceil(num_envs / envs_per_worker)
    return [slice(w * envs_per_worker, min((w + 1) * envs_per_worker, num_envs)) for w in range(workers)]


class RayChunkEnvs(VectorEnv):
    def __init__(self, factories: Sequence[Callable], cfg: RayConfig):
        import ray

        self._ray = ray
        self.num_envs = len(factories)
        self._slices = worker_slices(self.num_envs, cfg.envs_per_worker)
        self._started_ray = False
        if not ray.is_initialized():
            self._started_ray = True
            start_ray(cfg, len(self._slices))
        actor = ray.remote(EnvGroup).options(num_cpus=cfg.worker_cpus, max_concurrency=1)
        self._actors = [actor.remote(list(factories[s])) for s in self._slices]
        observation_space, action_space = self._get(self._actors[0].spaces.remote())
        self.single_observation_space, self.single_action_space = observation_space, action_space
        self.observation_space = batch_space(observation_space, self.num_envs)
        self.action_space = batch_space(action_space, self.num_envs)
        self._env_obs: list[Any] = [None] * self.num_envs
        self._observations = create_empty_array(observation_space, self.num_envs)
        self._pending: Optional[list] = None
        self.closed = False

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed=None, options: Optional[dict] = None):
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        mask = np.ones(self.num_envs, bool) if mask is None else np.asarray(mask, bool)
        if mask.shape != (self.num_envs,) or not mask.any():
            raise ValueError(f"reset_mask must be a boolean array of shape ({self.num_envs},) with a True value")
        seeds = [None] * self.num_envs if seed is None else (
            [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed))
        refs = {w: actor.reset.remote(list(mask[s]), seeds[s], options)
                for w, (actor, s) in enumerate(zip(self._actors, self._slices)) if mask[s].any()}
        infos: dict = {}
        for w, results in zip(refs, self._get(list(refs.values()))):
            for i, result in zip(range(self._slices[w].start, self._slices[w].stop), results):
                if result is not None:
                    self._env_obs[i], info = result
                    infos = self._add_info(infos, info, i)
        return self._concatenate(), infos

    def step_async(self, actions) -> None:
        if self._pending is not None:
            raise RuntimeError("step_async called twice without step_wait")
        actions = np.asarray(actions)
        self._pending = [actor.step.remote(actions[s]) for actor, s in zip(self._actors, self._slices)]

    def step_wait(self):
        if self._pending is None:
            raise RuntimeError("step_wait called without step_async")
        pending, self._pending = self._pending, None
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        infos: dict = {}
        i = 0
        for results in self._get(pending):
            for obs, reward, term, trunc, info in results:
                self._env_obs[i], rewards[i], terminated[i], truncated[i] = obs, reward, term, trunc
                infos = self._add_info(infos, info, i)
                i += 1
        return self._concatenate(), rewards, terminated, truncated, infos

    def step(self, actions):
        self.step_async(actions)
        return self.step_wait()

    def call(self, name: str, *args, **kwargs) -> tuple:
        refs = [actor.call.remote(name, args, kwargs) for actor in self._actors]
        return tuple(value for values in self._get(refs) for value in values)

    def close_extras(self, **kwargs) -> None:
        """Actors are killed, not asked: a pending step (Ctrl-C during a wait) must not block."""
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
        if self._started_ray:
            self._ray.shutdown()

    # ------------------------------------------------------------------ helpers
    def _concatenate(self):
        self._observations = concatenate(self.single_observation_space, self._env_obs, self._observations)
        return {key: np.copy(value) for key, value in self._observations.items()}

    def _get(self, refs):
        """ray.get, with an actor that died (crash, OOM kill, lost node) said in one line."""
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayActorError as exc:
            raise PipelineError(f"a Ray env worker died ({type(exc).__name__}); see the Ray logs "
                                "(out of memory? a crash in the simulator or renderer? a lost node?)") from None
        except self._ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None


def start_ray(cfg: RayConfig, workers: int) -> None:
    """Join `cfg.address` (or RAY_ADDRESS), or start Ray here with a CPU count that admits every
    worker: like AsyncVectorEnv's processes, actors may share the cores."""
    import os

    import ray

    address = cfg.address or os.environ.get("RAY_ADDRESS")
    common = dict(include_dashboard=False, log_to_driver=True, configure_logging=False)
    if address and address != "auto":
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, **common)
        else:
            ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(workers * cfg.worker_cpus)), **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        raise PipelineError(f"cannot start or join {where}: {str(exc).splitlines()[0]}") from None


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Ray retries an unreachable cluster address for minutes; say at once that nothing answers."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise PipelineError(f"env.ray.address must be 'auto' or host:port, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise PipelineError(f"no Ray cluster answers at {address} ({exc.strerror or type(exc).__name__}); "
                            "start one with `ray start --head` there, or set env.ray.address: null "
                            "to start Ray on this machine") from None
