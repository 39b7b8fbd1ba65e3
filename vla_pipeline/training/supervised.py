"""Supervised warm start: clone a[t:t+K] from (images, instruction, proprio) at t.

Batches are task-balanced by default (every task equally often, whatever its demo count or
episode length). With `sft.validate_every`, the policy is rolled out on validation
configurations every so many steps; training stops once validation success has not risen
for `patience` checks, and the best weights are kept. With `sft.ema_decay`, what is checked
and kept is an exponential moving average of the weights rather than the last iterate.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm
from torch.optim.swa_utils import AveragedModel
from transformers import get_cosine_schedule_with_warmup

from vla_pipeline import distributed
from vla_pipeline.config import Params, SFTConfig
from vla_pipeline.data.snapshot import StepTable
from vla_pipeline.data.windows import ChunkWindows
from vla_pipeline.errors import PipelineError
from vla_pipeline.policies.vla import VLAPolicy
from vla_pipeline.training.behaviour_cloning import batch_to_tensors, bc_loss_on_batch

Validator = Callable[[VLAPolicy], dict]  # -> {"success": MT10 mean, ...}


@dataclass
class TrainResult:
    curve: list[dict]
    skipped_batches: int
    final_loss: float
    best_step: int  # the step whose weights were kept
    validation: Optional[dict] = None  # the kept weights' validation result


def train_sft(policy: VLAPolicy, table: StepTable, params: Params, validate: Optional[Validator] = None) -> TrainResult:
    """The warm start: fit the normalisation to the demos, then clone them."""
    cfg = params.sft
    policy.set_normalization(policy.proprio_features(table.proprio, table.state), table.action, table.state)
    windows = ChunkWindows(table, policy.config.chunk_len, policy.config.task_names, balance_tasks=cfg.task_balance,
                           task_weights=cfg.task_weights)
    return train_on_windows(policy, windows, cfg, params.policy.aux_state_weight, validate)


def train_on_windows(policy: VLAPolicy, windows, cfg: SFTConfig, aux_state_weight: float,
                     validate: Optional[Validator] = None) -> TrainResult:
    """The cloning loop: any sampler with `sample(rng, n)` and `batch(rows)` (SFT's demo windows,
    or iRe-VLA's mix of demos and RL successes). The normalisation is left as it is."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    policy.to(cfg.device).train()
    distributed.broadcast_parameters(policy)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, cfg.steps), cfg.steps)
    with distributed.synced_batch_norm(policy):
        return _train_loop(policy, windows, cfg, aux_state_weight, validate, rng, generator, optimizer, schedule,
                           trainable)


def ema_average(decay: float):
    """`multi_avg_fn` for torch's `AveragedModel`: an exponential moving average whose decay
    warms up as min(decay, (1 + n) / (10 + n)) after n updates, so that an early validation
    check is not dragged back towards the random init. Integer buffers (BatchNorm's batch count)
    take the latest value."""

    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():
            for kept, new in zip(averaged, current):
                kept.copy_(new)
            return
        n = float(n_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))

    return average


def _train_loop(policy, windows, cfg: SFTConfig, aux_state_weight: float, validate: Optional[Validator], rng,
                generator, optimizer, schedule, trainable) -> TrainResult:
    curve, skipped, running = [], 0, []
    # The averaged copy is what validation checks and what is kept (BatchNorm statistics included).
    ema = AveragedModel(policy, multi_avg_fn=ema_average(cfg.ema_decay), use_buffers=True) if cfg.ema_decay else None
    best = {"score": -1.0, "step": cfg.steps, "state": None, "validation": None, "stale": 0}
    checking = validate is not None and cfg.validate_every > 0
    bar = tqdm(range(1, cfg.steps + 1), desc="sft", unit="step", mininterval=2.0, dynamic_ncols=True,
               **distributed.progress_options())
    for step in bar:
        loss, grad_norm = sft_step(policy, windows, cfg, aux_state_weight, rng, generator, optimizer, trainable)
        if not np.isfinite(loss) or not torch.isfinite(grad_norm):
            skipped += 1
            if skipped > cfg.max_skipped_batches:
                raise PipelineError(
                    f"sft: non-finite loss or gradient at step {step} (loss={loss}); "
                    f"stopping without writing a checkpoint (sft.max_skipped_batches={cfg.max_skipped_batches})"
                )
            continue
        optimizer.step()
        schedule.step()
        if ema is not None:
            ema.update_parameters(policy)
        running.append(loss)
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean_loss = float(np.mean(running))
            curve.append({"step": step, "loss": mean_loss, "lr": schedule.get_last_lr()[0]})
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            running = []
        if checking and (step % cfg.validate_every == 0 or step == cfg.steps):
            if distributed.is_main():  # one rank rolls out; the others wait for its decision
                _validation_check(policy if ema is None else ema.module, validate, step, best, curve)
            if distributed.broadcast(best["stale"] >= cfg.patience):
                break  # no new best for `patience` checks
            policy.train()
    if checking and best["state"] is not None:
        policy.load_state_dict(best["state"])
    elif ema is not None:
        policy.load_state_dict(ema.module.state_dict())
    policy.eval()
    final_loss = next((c["loss"] for c in reversed(curve) if "loss" in c), float("nan"))
    return TrainResult(curve, skipped, final_loss, best["step"] if checking else step, best["validation"])


def sft_step(policy: VLAPolicy, windows, cfg: SFTConfig, aux_state_weight: float, rng: np.random.Generator,
             generator: torch.Generator, optimizer: torch.optim.Optimizer, trainable: list) -> tuple[float, torch.Tensor]:
    """Loss and gradient of one batch, ready for `optimizer.step()`: (mean loss, gradient norm).

    Under torchrun every rank draws the same batch and keeps its block of rows; the gradients
    are averaged over ranks (vla_pipeline.distributed), so the step is the one-rank step."""
    rows = windows.sample(rng, cfg.batch_size)
    part = distributed.block(len(rows))
    batch = batch_to_tensors(windows.batch(rows[part]), cfg.device)
    block = (part, len(rows)) if distributed.world_size() > 1 else None
    loss = bc_loss_on_batch(policy, batch, cfg.loss, cfg.augment_shift, generator, aux_state_weight, block)
    optimizer.zero_grad(set_to_none=True)
    mean_loss = distributed.mean_value(loss.item())
    if not np.isfinite(mean_loss):
        return mean_loss, torch.tensor(float("nan"))
    loss.backward()
    distributed.average_gradients(trainable)
    return mean_loss, torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)


def _validation_check(policy: VLAPolicy, validate: Validator, step: int, best: dict, curve: list[dict]) -> None:
    """Roll out on validation configurations; remember the best weights."""
    policy.eval()
    result = validate(policy)
    record = {"step": step, "validation_success": result["success"],
              "validation_steps_to_success": result["steps_to_success"]}
    if curve and curve[-1]["step"] == step:
        curve[-1].update(record)
    else:
        curve.append(record)
    if result["success"] > best["score"]:
        best.update(score=result["success"], step=step, validation=result, stale=0,
                    state=copy.deepcopy(policy.state_dict()))
    else:
        best["stale"] += 1
