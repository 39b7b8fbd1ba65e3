"""Scale-out benchmark (`stages bench-scale`): Ray env workers and data-parallel SFT ranks.

In one run: the chunk collector with 2 local async workers (the default layout, as the
reference), then on Ray actors with 1, 2 and 4 workers (one env each); the layout not built
(a policy copy in every Ray worker, weights sent before each collect) with as many workers;
and SFT updates on 1
and 2 torchrun ranks with the same global batch (samples/s counts the global batch). Every
figure is the median of its repeats in its own spawned process (as `stages bench`). Ray and
gloo start on this machine; run it inside a private network namespace where that matters
(README, "Past one machine").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from vla_pipeline.bench.jobs import _collector_job, _demos_job
from vla_pipeline.bench.measure import (
    ENV_STEPS_PER_S, SAMPLES_PER_S, _measure, _Planned, _repeat, _run_in_child, _summary_line, machine_facts,
)
from vla_pipeline.bench.throughput import bench_params
from vla_pipeline.config import Params
from vla_pipeline.distributed import threads_per_rank
from vla_pipeline.errors import PipelineError

DEFAULT_OUT = Path("data/metrics/bench-scale.json")
RAY_WORKERS = (1, 2, 4)
RANKS = (1, 2)
CHUNK_LEN = 4


def run_scale_bench(params: Params, out: str | Path = DEFAULT_OUT, repeats: int = 3, collector_steps: int = 500,
                    sft_steps: int = 20, demos: Optional[str | Path] = None) -> dict:
    from tqdm.auto import tqdm

    from vla_pipeline.io import write_json_atomic

    bench = bench_params(params)
    raw = bench.model_dump()
    common = {"params_raw": raw, "repeats": repeats, "seed": 0, "chunk_len": CHUNK_LEN, "steps": collector_steps}
    plan = [_Planned("collector-async-n2-k4", _collector_job, {**common, "vector": "async", "num_envs": 2},
                     ENV_STEPS_PER_S, {"kind": "collector", "vector": "async", "num_envs": 2, "chunk_len": CHUNK_LEN})]
    plan += [_Planned(f"collector-ray-n{n}-k4", _collector_job, {**common, "vector": "ray", "num_envs": n},
                      ENV_STEPS_PER_S, {"kind": "collector", "vector": "ray", "num_envs": n, "envs_per_worker": 1,
                                        "chunk_len": CHUNK_LEN})
             for n in RAY_WORKERS]
    plan += [_Planned(f"policy-in-workers-ray-n{n}-k4", _policy_in_workers_job, {**common, "workers": n},
                      ENV_STEPS_PER_S, {"kind": "policy copy per Ray worker (the alternative not built)",
                                        "workers": n, "envs_per_worker": 1, "chunk_len": CHUNK_LEN,
                                        "weights": "sent to every worker before each collect (ray.put once)",
                                        "returned": "each worker's rollout batch, to the driver"})
             for n in RAY_WORKERS]
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if demos is None:
            demos = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vla-bench-scale-"))) / "demos"
            _run_in_child("demos", _demos_job, params_raw=raw, out_dir=str(demos), episodes=3)
        plan += [_Planned(f"sft-ranks{r}", _data_parallel_sft_job,
                          {"params_raw": raw, "demos": str(demos), "ranks": r, "steps": sft_steps, "repeats": repeats},
                          SAMPLES_PER_S, {"kind": "sft", "ranks": r, "global_batch": bench.sft.batch_size,
                                          "torch_threads_per_rank": threads_per_rank(bench.sft.num_threads, r),
                                          "backend": "gloo" if bench.sft.device == "cpu" else "nccl"})
                 for r in RANKS]
        measurements = {}
        for item in tqdm(plan, desc="bench-scale", unit="run", dynamic_ncols=True):
            measurements[item.name] = _measure(item)
            tqdm.write(_summary_line(item.name, measurements[item.name]))
    med = lambda name: measurements[name]["median"]  # noqa: E731
    result = {
        "machine": machine_facts(params),
        "measurements": measurements,
        "ratios": {
            "ray_over_async_n2": {f"n{n}": round(med(f"collector-ray-n{n}-k4") / med("collector-async-n2-k4"), 3)
                                  for n in RAY_WORKERS},
            "ray_n2_over_n1": round(med("collector-ray-n2-k4") / med("collector-ray-n1-k4"), 3),
            "ray_n4_over_n1": round(med("collector-ray-n4-k4") / med("collector-ray-n1-k4"), 3),
            "policy_in_workers_over_batched": {
                f"n{n}": round(med(f"policy-in-workers-ray-n{n}-k4") / med(f"collector-ray-n{n}-k4"), 3)
                for n in RAY_WORKERS},
            "sft_ranks2_over_ranks1": round(med("sft-ranks2") / med("sft-ranks1"), 3),
        },
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(out, result)
    return result


class PolicyWorker:
    """The layout not built, measured for comparison: a Ray actor with its own policy copy
    acting for its own envs, loading the driver's weights before every collect."""

    def __init__(self, params_raw: dict, chunk_len: int, queue, seed: int):
        import torch

        from vla_pipeline.bench.jobs import _open_every_task, _random_policy
        from vla_pipeline.envs.tasks import resolve_tasks
        from vla_pipeline.envs.vector import make_chunk_vector_env
        from vla_pipeline.training.ppo.rollout import ChunkCollector

        torch.set_num_threads(1)
        params = Params.model_validate(params_raw)
        self.policy = _random_policy(params, chunk_len).eval()
        self.envs = make_chunk_vector_env(params.env, chunk_len, params.ppo.gamma, [queue], "sync")
        _open_every_task(self.envs, len(resolve_tasks(params.env)))  # as the collector measurements do
        self.collector = ChunkCollector(self.envs, params.ppo.gamma, params.ppo.gae_lambda, "bench",
                                        torch.Generator().manual_seed(seed))

    def collect(self, weights: dict, decisions: int) -> tuple:
        self.policy.load_state_dict(weights)
        batch, _, stats = self.collector.collect(self.policy, decisions)
        return stats["env_steps"], batch


def _policy_in_workers_job(params_raw: dict, workers: int, chunk_len: int, steps: int, repeats: int,
                           seed: int) -> dict:
    import ray
    import torch

    from vla_pipeline.bench.jobs import _random_policy
    from vla_pipeline.envs.ray_vector import start_ray
    from vla_pipeline.training.ppo.trainer import training_queues

    params = Params.model_validate(params_raw)
    start_ray(params.env.ray, workers)
    try:
        torch.manual_seed(seed)
        policy = _random_policy(params, chunk_len).eval()
        actor = ray.remote(PolicyWorker).options(num_cpus=params.env.ray.worker_cpus)
        actors = [actor.remote(params_raw, chunk_len, queue, seed + i)
                  for i, queue in enumerate(training_queues(params, workers, seed))]
        decisions = -(-steps // (workers * chunk_len))

        def collect() -> int:
            weights = ray.put(policy.state_dict())
            return sum(env_steps for env_steps, _ in ray.get([a.collect.remote(weights, decisions) for a in actors]))

        collect()  # warm-up (each worker's first episodes build their MetaWorld envs)
        return {**_repeat(collect, repeats), "config": {"decisions_per_worker": decisions}}
    finally:
        ray.shutdown()


def _data_parallel_sft_job(params_raw: dict, demos: str, ranks: int, steps: int, repeats: int) -> dict:
    """torchrun with `ranks` processes of `_rank_main`; rank 0's timings come back in a file."""
    with tempfile.TemporaryDirectory(prefix="vla-dp-") as tmp:
        params_file, result_file = Path(tmp) / "params.json", Path(tmp) / "result.json"
        params_file.write_text(json.dumps(params_raw))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
               "--master-addr", "127.0.0.1", "--master-port", "29541", "-m", "vla_pipeline.bench.scale",
               "--params", str(params_file), "--demos", demos, "--steps", str(steps), "--repeats", str(repeats),
               "--out", str(result_file)]
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PipelineError(f"torchrun with {ranks} ranks failed ({proc.returncode}): "
                                f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no output'}")
        return json.loads(result_file.read_text())


def _rank_main(argv: Optional[list[str]] = None) -> None:
    """One rank: SFT steps (`sft.sft_step` + the optimizer step) on the demo windows, as
    `train_on_windows` runs them; every rank times the same steps, rank 0 writes the rates."""
    import numpy as np
    import torch

    from vla_pipeline import distributed
    from vla_pipeline.bench.jobs import _random_policy
    from vla_pipeline.data.snapshot import load_snapshot
    from vla_pipeline.data.windows import ChunkWindows
    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.training.supervised import sft_step

    parser = argparse.ArgumentParser()
    for flag in ("--params", "--demos", "--out"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    args = parser.parse_args(argv)
    params = Params.model_validate(json.loads(Path(args.params).read_text()))
    cfg = params.sft
    distributed.init_from_env(cfg.device)
    torch.set_num_threads(distributed.threads_per_rank(cfg.num_threads))
    torch.manual_seed(0)
    table, _ = load_snapshot(args.demos, resolve_tasks(params.env))
    policy = _random_policy(params, params.policy.chunk_len)
    policy.set_normalization(policy.proprio_features(table.proprio, table.state), table.action, table.state)
    windows = ChunkWindows(table, policy.config.chunk_len, policy.config.task_names, balance_tasks=cfg.task_balance)
    policy.to(cfg.device).train()
    distributed.broadcast_parameters(policy)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)

    def train(steps: int) -> int:
        for _ in range(steps):
            sft_step(policy, windows, cfg, params.policy.aux_state_weight, rng, generator, optimizer, trainable)
            optimizer.step()
        return steps * cfg.batch_size  # the global batch

    with distributed.synced_batch_norm(policy):
        train(2)  # warm-up
        result = _repeat(lambda: train(args.steps), args.repeats)
    if distributed.is_main():
        Path(args.out).write_text(json.dumps({**result, "config": {"steps_per_repeat": args.steps,
                                                                   "ranks": distributed.world_size()}}))
    distributed.shutdown()


if __name__ == "__main__":
    _rank_main()
