"""What CO-RFT's critic and actor read: the trunk's fused readout tokens, cached once per frame
(`trainable: heads`) or recomputed per batch (`trainable: all`)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from vla_pipeline.data.snapshot import StepTable
from vla_pipeline.policies.vla import VLAPolicy


@torch.no_grad()
def cache_readouts(policy: VLAPolicy, table: StepTable, task_index: np.ndarray, batch_size: int,
                   device: str, desc: str = "cache readouts") -> torch.Tensor:
    """The frozen trunk's fused readout tokens for every row: (N, readouts, d), float32, on `device`."""
    policy.eval()
    out = []
    for start in tqdm(range(0, len(task_index), batch_size), desc=desc, unit="batch", mininterval=2.0):
        out.append(policy.readout_tokens(**_trunk_inputs(policy, table, task_index,
                                                         np.arange(start, min(start + batch_size, len(task_index))),
                                                         device)))
    return torch.cat(out)


def _trunk_inputs(policy: VLAPolicy, table: StepTable, task_index: np.ndarray, rows: np.ndarray, device: str) -> dict:
    inputs = {"images": torch.as_tensor(table.images[rows], device=device),
              "proprio": torch.as_tensor(table.proprio[rows], device=device),
              "task_index": torch.as_tensor(task_index[rows], device=device)}
    if policy.config.privileged_state:
        inputs["state"] = torch.as_tensor(table.state[rows], device=device)
    return inputs


class CachedReadouts:
    """`trainable: heads`: readouts looked up in the cache; nothing flows into the trunk."""

    def __init__(self, cache: torch.Tensor):
        self.cache = cache

    def critic(self, rows: torch.Tensor) -> torch.Tensor:
        return self.cache[rows].flatten(1)

    def actor(self, rows: torch.Tensor) -> torch.Tensor:
        return self.cache[rows, 0]


class LiveReadouts:
    """`trainable: all`: a trunk pass per batch; the actor's loss trains the trunk, the critic
    reads it through a stop-gradient (a noisy critic must not move the imitation features)."""

    def __init__(self, policy: VLAPolicy, table: StepTable, task_index: np.ndarray, device: str):
        self.policy, self.table, self.task_index, self.device = policy, table, task_index, device

    def _tokens(self, rows: torch.Tensor) -> torch.Tensor:
        flat = rows.reshape(-1).cpu().numpy()
        tokens = self.policy.readout_tokens(**_trunk_inputs(self.policy, self.table, self.task_index, flat,
                                                            self.device))
        return tokens.reshape(*rows.shape, *tokens.shape[1:])

    def critic(self, rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._tokens(rows).flatten(-2)

    def actor(self, rows: torch.Tensor) -> torch.Tensor:
        return self._tokens(rows)[..., 0, :]
