"""iRe-VLA rounds (`ire_rounds` in params.yaml): RL with the trunk frozen, then supervised
learning of the whole model on the demos plus D_RL, the RL successes.

- `rl`: the chunked-PPO round (`ppo.trainer.run_round`) with `ppo.freeze_backbone`, the BC term
  off and `ire.rl_iterations`; only the action head, its log-std and the critic train.
- `ppo`: the same with the trunk trainable: the plain-RL baseline the paper calls unstable.
- `sl`: the SFT loop (`supervised.train_on_windows`) on batches drawing `ire.sl_rl_fraction` from D_RL
  and the rest from the demos; the normalisation stays the warm start's.

D_RL is a `SelfBCBuffer` keyed per (task, variation) that keeps the shortest
`ire.d_rl_capacity` successes; every round writes it to `data/buffers/<round>` (an SL round
passes its input on unchanged) so the next round can continue it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vla_pipeline.config import IreRoundConfig, Params
from vla_pipeline.data.snapshot import StepTable
from vla_pipeline.data.windows import ChunkWindows
from vla_pipeline.errors import PipelineError
from vla_pipeline.policies.vla import VLAPolicy
from vla_pipeline.training.success_buffer import SelfBCBuffer
from vla_pipeline.training.rounds import seed_from_snapshot, stream_seed


def ire_round_item(params: Params, round_name: str) -> IreRoundConfig:
    if round_name in params.ire_rounds:
        return params.ire_rounds[round_name]
    if round_name in params.rounds:
        raise PipelineError(f"{round_name!r} is an ACPPO round (under 'rounds'): run it with `python -m stages ppo`")
    known = ", ".join(params.ire_rounds) or "none"
    raise PipelineError(f"params.yaml: no round named {round_name!r} under 'ire_rounds' (known: {known})")


def ire_seed(params: Params, round_name: str) -> int:
    return stream_seed(params.ire.seed, round_name)


# ---------------------------------------------------------------------------- D_RL
def open_d_rl(params: Params, snapshot: Optional[Path]) -> tuple[SelfBCBuffer, set[str]]:
    """The D_RL a round continues (empty from `demos`, else a previous round's snapshot), and
    the tasks whose content the current cap filtered (their shards cannot be reused as they are)."""
    d_rl = SelfBCBuffer(params.ire.d_rl_key, params.ire.d_rl_capacity)
    return d_rl, (seed_from_snapshot(d_rl, snapshot) if snapshot is not None else set())


# ---------------------------------------------------------------------------- RL phase
def rl_params(params: Params, kind: str) -> Params:
    """`ppo` / `bc` as an iRe-VLA RL round runs them: trunk frozen (kind rl), no BC term."""
    ire = params.ire
    ppo = params.ppo.model_copy(update={"freeze_backbone": kind == "rl", "iterations": ire.rl_iterations,
                                        "critic_warmup_iterations": ire.critic_warmup_iterations, "seed": ire.seed})
    bc = params.bc.model_copy(update={"weight_rule": "none"})
    return params.model_copy(update={"ppo": ppo, "bc": bc})


def reset_critic(policy: VLAPolicy, seed: int) -> None:
    """A fresh critic, initialised as the model initialises it (small last layer, zero bias)."""
    torch.manual_seed(seed)
    for module in policy.value_head:
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    last = policy.value_head[-1]
    torch.nn.init.zeros_(last.bias)
    last.weight.data.mul_(0.1)


def run_rl_round(policy: VLAPolicy, d_rl: SelfBCBuffer, params: Params, round_name: str, kind: str):
    """One RL round; its successes enter `d_rl`. Returns the trainer's RoundResult."""
    from vla_pipeline.training.ppo.trainer import run_round

    if params.ire.critic == "fresh":
        reset_critic(policy, ire_seed(params, round_name) + 1)
    return run_round(policy, d_rl, rl_params(params, kind), round_name)


# ---------------------------------------------------------------------------- SL phase
class MixedWindows:
    """Batches with a fixed share from a second source: round(n * fraction) rows of each batch
    from `extra` (D_RL), the rest from `base` (the demos). Rows of `extra` are numbered after
    `base`'s, so one array of rows names both."""

    def __init__(self, base: ChunkWindows, extra: Optional[ChunkWindows], fraction: float):
        self.base, self.extra = base, extra
        self.fraction = fraction if extra is not None else 0.0
        self.offset = len(base.table.step)

    def sample(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        n_extra = int(round(batch_size * self.fraction))
        rows = self.base.sample(rng, batch_size - n_extra)
        if n_extra:
            rows = np.concatenate([rows, self.extra.sample(rng, n_extra) + self.offset])
        return rows

    def batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        from_extra = rows >= self.offset
        parts = [self.base.batch(rows[~from_extra])]
        if from_extra.any():
            parts.append(self.extra.batch(rows[from_extra] - self.offset))
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def sl_config(params: Params, round_name: str):
    """The SFT settings an SL round trains with (its own steps, lr, batch and random streams)."""
    ire = params.ire
    return params.sft.model_copy(update={
        "steps": ire.sl_steps, "lr": ire.sl_lr, "warmup_steps": ire.sl_warmup_steps, "batch_size": ire.sl_batch_size,
        "validate_every": 0, "seed": ire_seed(params, round_name)})


def run_sl_round(policy: VLAPolicy, demos: StepTable, d_rl: Optional[StepTable], params: Params, round_name: str):
    """Supervised learning of the whole model on demos + D_RL (SFT's loss and loop)."""
    from vla_pipeline.training.supervised import train_on_windows

    cfg = sl_config(params, round_name)
    chunk, names = policy.config.chunk_len, policy.config.task_names
    base = ChunkWindows(demos, chunk, names, balance_tasks=cfg.task_balance, task_weights=cfg.task_weights)
    extra = ChunkWindows(d_rl, chunk, names, balance_tasks=cfg.task_balance) if d_rl is not None else None
    windows = MixedWindows(base, extra, params.ire.sl_rl_fraction)
    return train_on_windows(policy, windows, cfg, params.policy.aux_state_weight), windows.fraction
