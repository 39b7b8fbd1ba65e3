"""Run inside a private network namespace by tests/test_distributed.py: the chunk collector on
Ray actors (1 and 2 envs per actor) against in-process envs, same queues, seeds and policy.
Writes what differs (nothing, when the backends agree) as JSON to argv[1]."""

import json
import sys

import numpy as np
import torch

from vla_pipeline.config import parse_params
from vla_pipeline.envs.tasks import resolve_tasks
from vla_pipeline.envs.vector import make_chunk_vector_env, sum_counters
from vla_pipeline.policies.factory import build_policy
from vla_pipeline.training.ppo.rollout import ChunkCollector
from vla_pipeline.training.ppo.trainer import training_queues

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from conftest import tiny_raw  # noqa: E402

NUM_ENVS, DECISIONS = 3, 30  # 120 env steps per env: episodes end (horizon 100) and reset


def collect(mode: str, envs_per_worker: int = 1):
    params = parse_params(tiny_raw(env={"vector": mode, "num_envs": NUM_ENVS,
                                        "ray": {"envs_per_worker": envs_per_worker}}), "check")
    torch.manual_seed(0)
    policy = build_policy(params.policy, params.env, resolve_tasks(params.env)).eval()
    envs = make_chunk_vector_env(params.env, policy.config.chunk_len, 0.99, training_queues(params, NUM_ENVS, 7), mode)
    try:
        collector = ChunkCollector(envs, 0.99, 0.95, "check", torch.Generator().manual_seed(1))
        batch, episodes, stats = collector.collect(policy, DECISIONS)
        envs.call("set_task_weights", [0.5, 0.5])
        return batch, episodes, stats, sum_counters(envs)
    finally:
        envs.close()


def _fingerprint(episode) -> tuple:
    """Everything an episode records: its configuration, every frame's PNG bytes, every array."""
    arrays = episode.arrays()
    return (episode.task, episode.variation_seed, episode.variation, episode.terminated, episode.truncated,
            tuple(episode.frames), tuple(arrays[k].tobytes() for k in sorted(arrays)))


def main(out: str) -> None:
    base_batch, base_eps, base_stats, base_counters = collect("sync")
    report = {"episodes": len(base_eps), "stats": base_stats, "differences": {}}
    for per in (1, 2):
        batch, episodes, stats, counters = collect("ray", per)
        diff = [f for f in base_batch.__dataclass_fields__ if not np.array_equal(getattr(base_batch, f), getattr(batch, f))]
        if [_fingerprint(e) for e in episodes] != [_fingerprint(e) for e in base_eps]:
            diff.append("episodes")
        if stats != base_stats or counters != base_counters:
            diff.append("counters")
        report["differences"][f"ray, {per} env(s) per worker"] = diff
    with open(out, "w") as fh:
        json.dump(report, fh)


if __name__ == "__main__":
    main(sys.argv[1])
