"""Run by tests/test_distributed.py under torchrun (1 or 2 gloo ranks, private network): one
PPO + self-BC minibatch of a real rollout batch, its loss and the gradient averaged over ranks.
Rank 0 writes them to argv[3] (.npz). argv: tiny SFT checkpoint, tiny demo snapshot, output."""

import sys
from pathlib import Path

import numpy as np
import torch

from vla_pipeline import distributed
from vla_pipeline.checkpoint import load_policy
from vla_pipeline.config import parse_params
from vla_pipeline.envs.vector import make_chunk_vector_env
from vla_pipeline.training.ppo.rollout import ChunkCollector
from vla_pipeline.training.rounds import open_buffer
from vla_pipeline.training.ppo.trainer import PPOTrainer, training_queues

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_raw  # noqa: E402


def main(checkpoint: str, demos: str, out: str) -> None:
    distributed.init_from_env("cpu")
    params = parse_params(tiny_raw(), "check")
    policy = load_policy(Path(checkpoint), "cpu")
    buffer, _ = open_buffer(params, "demos", Path(demos))
    trainer = PPOTrainer(policy, buffer, params, "r01")
    batch = None
    if distributed.is_main():  # rank 0 steps the envs, as in a round
        envs = make_chunk_vector_env(params.env, policy.config.chunk_len, 0.99, training_queues(params, 2, 3), "sync")
        try:
            batch, _, _ = ChunkCollector(envs, 0.99, 0.95, "check", torch.Generator().manual_seed(0)).collect(policy, 8)
        finally:
            envs.close()
    batch = distributed.broadcast(batch)
    result = {}
    for value_only in (True, False):
        _, bc_loss, loss = trainer.minibatch_loss(batch, np.arange(len(batch)), trainer.bc_windows(), value_only)
        assert trainer.gradient(loss)
        name = "value" if value_only else "full"
        result[f"{name}_loss"] = distributed.mean_value(loss.item())
        result[f"{name}_bc_loss"] = distributed.mean_value(bc_loss.item())
        result[f"{name}_gradient"] = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel())
                                                for p in trainer.trainable]).numpy()
    if distributed.is_main():
        np.savez(out, **result)
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
