"""Supervised warm start: clone a[t:t+K] from (image, instruction, proprio) at t."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from vla_pipeline import constants as C
from vla_pipeline.config import Params
from vla_pipeline.data.snapshot import StepTable
from vla_pipeline.data.windows import ChunkWindows
from vla_pipeline.errors import PipelineError
from vla_pipeline.policies.vla import VLAPolicy
from vla_pipeline.rl.bc import masked_chunk_loss


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ-style augmentation: replicate-pad by `pad` pixels and crop back at random offsets."""
    if pad == 0:
        return images
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    return torch.stack([padded[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(offsets.tolist())])


def batch_to_tensors(batch: dict, device: str) -> dict:
    return {key: torch.as_tensor(value, device=device) for key, value in batch.items()}


def bc_loss_on_batch(policy: VLAPolicy, batch: dict, loss_kind: str, shift: int,
                     generator: torch.Generator) -> torch.Tensor:
    pixels = random_shift(policy.preprocess_images(batch[C.OBS_IMAGE]), shift, generator)
    out = policy(images=None, pixels=pixels, proprio=batch[C.OBS_PROPRIO], task_index=batch[C.OBS_TASK_INDEX])
    target = policy.normalize_actions(batch[C.ACTION_CHUNK])
    return masked_chunk_loss(out.action_mean, out.action_log_std, target, batch[C.ACTION_MASK], loss_kind)


@dataclass
class TrainResult:
    curve: list[dict]
    skipped_batches: int
    final_loss: float


def train_sft(policy: VLAPolicy, table: StepTable, params: Params) -> TrainResult:
    cfg = params.sft
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    policy.set_normalization(table.proprio, table.action)
    policy.to(cfg.device).train()
    windows = ChunkWindows(table, policy.config.chunk_len, policy.config.task_names)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, cfg.steps), cfg.steps)
    curve, skipped, running = [], 0, []
    bar = tqdm(range(1, cfg.steps + 1), desc="sft", unit="step", mininterval=2.0, dynamic_ncols=True)
    for step in bar:
        rows = windows.sample(rng, cfg.batch_size)
        batch = batch_to_tensors(windows.batch(rows), cfg.device)
        loss = bc_loss_on_batch(policy, batch, cfg.loss, cfg.augment_shift, generator)
        optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        if not torch.isfinite(loss) or not torch.isfinite(grad_norm):
            skipped += 1
            if skipped > cfg.max_skipped_batches:
                raise PipelineError(
                    f"sft: non-finite loss or gradient at step {step} (loss={loss.item()}); "
                    f"stopping without writing a checkpoint (sft.max_skipped_batches={cfg.max_skipped_batches})"
                )
            continue
        optimizer.step()
        schedule.step()
        running.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean_loss = float(np.mean(running))
            curve.append({"step": step, "loss": mean_loss, "lr": schedule.get_last_lr()[0]})
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            running = []
    policy.eval()
    return TrainResult(curve, skipped, curve[-1]["loss"] if curve else float("nan"))
