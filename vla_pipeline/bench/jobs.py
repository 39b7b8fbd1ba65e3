"""The benchmark's jobs: what each spawned child sets up, warms up and times (`measure._repeat`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vla_pipeline.bench.measure import _repeat
from vla_pipeline.config import Params
from vla_pipeline.errors import PipelineError


def _demos_job(params_raw: dict, out_dir: str, episodes: int) -> dict:
    """A small demo snapshot from the project's collector; failures kept too, so that no task
    can come back empty (the measurements need frames, not good demos)."""
    from vla_pipeline.demos import collect_demos
    from vla_pipeline.io import atomic_directory

    params = Params.model_validate(params_raw)
    demos = params.demos.model_copy(update={"episodes_per_task": episodes, "task_episodes": {},
                                            "only_successes": False})
    with atomic_directory(out_dir) as tmp:
        summary = collect_demos(params.model_copy(update={"demos": demos}), tmp)
    return {"episodes": summary["manifest"]["total_episodes"], "rows": summary["manifest"]["total_rows"]}


class _RawLoop:
    """MetaWorld at the collector's render schedule and nothing else: one sim per task, episodes
    round-robin over the tasks, uniform random actions, and a frame after every reset and after
    every K steps or the episode's end (the decision points of K-step chunks)."""

    def __init__(self, sims: list, chunk_len: int, configuration_seed: int, rng: np.random.Generator):
        self.sims, self.chunk_len, self.configuration_seed, self.rng = sims, chunk_len, configuration_seed, rng
        self.current = -1
        self.since_frame = 0
        self._next_episode()

    def _next_episode(self) -> None:
        from vla_pipeline.envs.tasks import NUM_VARIATIONS

        self.current = (self.current + 1) % len(self.sims)
        sim = self.sims[self.current]
        sim.reset(self.configuration_seed, int(self.rng.integers(NUM_VARIATIONS)))
        sim.render()
        self.since_frame = 0

    def run(self, steps: int) -> int:
        from vla_pipeline.constants import ACTION_DIM

        for _ in range(steps):
            sim = self.sims[self.current]
            out = sim.step(self.rng.uniform(-1.0, 1.0, ACTION_DIM))
            self.since_frame += 1
            done = out.terminated or out.truncated
            if done or self.since_frame == self.chunk_len:
                sim.render()
                self.since_frame = 0
            if done:
                self._next_episode()
        return steps


def _raw_job(params_raw: dict, chunk_len: int, steps: int, repeats: int, seed: int) -> dict:
    from vla_pipeline.envs.sim import TaskSim
    from vla_pipeline.envs.tasks import resolve_tasks

    env = Params.model_validate(params_raw).env
    sims = []
    try:
        # Every task's sim is built before timing, as the collector's warm-up builds them.
        sims = [TaskSim(task, env) for task in resolve_tasks(env)]
        loop = _RawLoop(sims, chunk_len, env.train_seeds[0], np.random.default_rng(seed))
        loop.run(2 * chunk_len)  # warm-up
        return _repeat(lambda: loop.run(steps), repeats)
    finally:
        for sim in sims:
            sim.close()


def _random_policy(params: Params, chunk_len: int):
    """A VLA from the config with random weights (encoders never downloaded)."""
    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.policies.factory import build_policy

    cfg = params.policy
    cfg = cfg.model_copy(update={"chunk_len": chunk_len,
                                 "vision": cfg.vision.model_copy(update={"pretrained": None}),
                                 "text": cfg.text.model_copy(update={"pretrained": None})})
    return build_policy(cfg, params.env, resolve_tasks(params.env))


def _open_every_task(envs, num_tasks: int) -> None:
    """Start one episode of every task in every env before timing, through the curriculum's
    public task weights. A ChunkEnv builds a task's sim (MetaWorld env and renderer, ~1 s) the
    first time it draws the task; a PPO round pays that once per worker and task, a short
    repeat would count it as stepping time."""
    for task in range(num_tasks):
        envs.call("set_task_weights", [float(i == task) for i in range(num_tasks)])
        envs.reset()
    envs.call("set_task_weights", None)  # back to round-robin, as training_queues sets them up


def _collector_job(params_raw: dict, chunk_len: int, vector: str, num_envs: int, steps: int, repeats: int,
                   seed: int) -> dict:
    """PPO's rollout path: make_chunk_vector_env + ChunkCollector.collect with the policy acting
    on one torch thread, as training/ppo/trainer.run_round does."""
    import torch

    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.envs.vector import make_chunk_vector_env
    from vla_pipeline.parallel import acting_threads
    from vla_pipeline.training.ppo.rollout import ChunkCollector
    from vla_pipeline.training.ppo.trainer import training_queues

    params = Params.model_validate(params_raw)
    torch.manual_seed(seed)
    policy = _random_policy(params, chunk_len).to(params.ppo.device).eval()
    queues = training_queues(params, num_envs, seed)
    envs = make_chunk_vector_env(params.env, chunk_len, params.ppo.gamma, queues, vector)
    try:
        _open_every_task(envs, len(resolve_tasks(params.env)))
        collector = ChunkCollector(envs, params.ppo.gamma, params.ppo.gae_lambda, "bench",
                                   torch.Generator().manual_seed(seed))
        lockstep = -(-steps // (num_envs * chunk_len))  # decisions per env: at least `steps` env steps

        def collect() -> int:
            return collector.collect(policy, lockstep)[2]["env_steps"]

        with acting_threads():
            collector.collect(policy, 1)  # warm-up
            return {**_repeat(collect, repeats), "config": {"decisions_per_env": lockstep}}
    finally:
        envs.close()


def _sft_job(params_raw: dict, demos: str, steps: int, batch_size: int, repeats: int, seed: int) -> dict:
    """supervised.train_on_windows on the demo windows, set up as train_sft does (normalisation from the
    demos, task-balanced windows); no validation rollouts."""
    import torch

    from vla_pipeline.data.snapshot import load_snapshot
    from vla_pipeline.data.windows import ChunkWindows
    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.parallel import torch_threads
    from vla_pipeline.training.supervised import train_on_windows

    params = Params.model_validate(params_raw)
    cfg = params.sft.model_copy(update={"steps": steps, "batch_size": batch_size, "validate_every": 0,
                                        "log_every": steps, "seed": seed})
    tasks = resolve_tasks(params.env)
    table, _ = load_snapshot(demos, tasks)
    missing = sorted(set(tasks) - set(table.task))
    if missing:
        raise PipelineError(f"{demos} has no demos for tasks {missing}")
    torch.manual_seed(seed)
    policy = _random_policy(params, params.policy.chunk_len)
    policy.set_normalization(policy.proprio_features(table.proprio, table.state), table.action, table.state)
    windows = ChunkWindows(table, policy.config.chunk_len, policy.config.task_names, balance_tasks=cfg.task_balance,
                           task_weights=cfg.task_weights)
    aux = params.policy.aux_state_weight

    def train() -> int:
        train_on_windows(policy, windows, cfg, aux)
        return steps * batch_size

    with torch_threads(cfg.num_threads):
        train_on_windows(policy, windows, cfg.model_copy(update={"steps": 1, "log_every": 1}), aux)  # warm-up
        return _repeat(train, repeats)


def _ppo_job(params_raw: dict, demos: str, decisions: int, repeats: int, seed: int) -> dict:
    """PPOTrainer.update on one rollout batch from the collector, with the self-BC buffer seeded
    from the demos as round r01's is. `target_kl` is off so that every repeat runs all epochs."""
    import torch

    from vla_pipeline.parallel import torch_threads
    from vla_pipeline.training.rounds import open_buffer
    from vla_pipeline.training.ppo.trainer import PPOTrainer

    params = Params.model_validate(params_raw)
    ppo = params.ppo.model_copy(update={"target_kl": None,
                                        "minibatch_size": min(params.ppo.minibatch_size, decisions)})
    params = params.model_copy(update={"ppo": ppo})
    torch.manual_seed(seed)
    policy = _random_policy(params, params.policy.chunk_len).to(ppo.device).eval()
    batch = _rollout_batch(params, policy, decisions, seed)
    buffer, _ = open_buffer(params, "demos", Path(demos))
    trainer = PPOTrainer(policy, buffer, params, "bench")
    start_bc = trainer.measure_bc_loss()  # also decodes the buffer's frames, before timing
    if params.bc.weight_rule == "dual" and start_bc is not None:
        trainer.weight.set_target(start_bc, params.bc.target_slack)
    per_epoch = _minibatch_samples(len(batch), ppo.minibatch_size)

    def update() -> int:
        return per_epoch * trainer.update(batch, value_only=False)["epochs_run"]

    with torch_threads(ppo.num_threads):
        out = _repeat(update, repeats)
    return {**out, "config": {"bc_term": start_bc is not None, "bc_batch_size": params.bc.batch_size,
                              "bc_weight_rule": params.bc.weight_rule}}


def _rollout_batch(params: Params, policy, decisions: int, seed: int):
    """`decisions` decisions from one in-process env through the collector (not timed)."""
    import torch

    from vla_pipeline.envs.vector import make_chunk_vector_env
    from vla_pipeline.parallel import acting_threads
    from vla_pipeline.training.ppo.rollout import ChunkCollector
    from vla_pipeline.training.ppo.trainer import training_queues

    ppo, k = params.ppo, policy.config.chunk_len
    envs = make_chunk_vector_env(params.env, k, ppo.gamma, training_queues(params, 1, seed), "sync")
    try:
        collector = ChunkCollector(envs, ppo.gamma, ppo.gae_lambda, "bench", torch.Generator().manual_seed(seed))
        with acting_threads():
            batch, _, _ = collector.collect(policy, decisions)
    finally:
        envs.close()
    return batch


def _minibatch_samples(n: int, minibatch_size: int) -> int:
    """Decisions one PPO epoch trains on: PPOTrainer.update skips a last minibatch of one."""
    return sum(min(minibatch_size, n - start) for start in range(0, n, minibatch_size) if n - start >= 2)
