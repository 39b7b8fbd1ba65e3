"""Behaviour cloning on action chunks, shared by SFT, self-BC and iRe-VLA's supervised phase."""

from __future__ import annotations

import math
from typing import Optional

import torch

from vla_pipeline import constants as C
from vla_pipeline import distributed


def masked_chunk_loss(mean: torch.Tensor, log_std: torch.Tensor, target: torch.Tensor,
                      mask: torch.Tensor, kind: str = "mse", real_steps: Optional[float] = None) -> torch.Tensor:
    """Mean over real (unpadded) steps of the per-step loss, summed over action dims.

    mean/target: (B, K, A) in normalised action space; log_std: (K, A); mask: (B, K).
    `mse` trains only the mean (keeps the exploration std for PPO); `nll` is the Gaussian
    negative log-likelihood and also trains the std. `real_steps`: divide by this count instead
    of the mask's (a data-parallel rank's block divides by the whole batch's).
    """
    if kind == "mse":
        per_step = (mean - target).pow(2).sum(-1)
    elif kind == "nll":
        var = (2 * log_std).exp()
        per_step = (0.5 * (target - mean).pow(2) / var + log_std + 0.5 * math.log(2 * math.pi)).sum(-1)
    else:
        raise ValueError(f"unknown loss kind {kind!r}")
    steps = mask.sum().clamp_min(1.0) if real_steps is None else max(real_steps, 1.0)
    return (per_step * mask).sum() / steps


def random_shift(pixels: torch.Tensor, pad: int, generator: torch.Generator,
                 rows: Optional[tuple[slice, int]] = None) -> torch.Tensor:
    """DrQ-style augmentation of (B, V, C, H, W): replicate-pad by `pad` pixels and crop back
    at a random offset, drawn independently for every image.

    `rows=(block, total)`: these B rows are `block` of a global batch of `total` rows (one
    data-parallel rank's share); the offsets of the whole batch are drawn and this block's
    kept, so every image gets the offset it would get on one rank."""
    if pad == 0:
        return pixels
    shape = pixels.shape
    flat = pixels.flatten(0, 1)
    n, _, h, w = flat.shape
    padded = torch.nn.functional.pad(flat, (pad, pad, pad, pad), mode="replicate")
    if rows is None:
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    else:
        block, total = rows
        views = shape[1]
        offsets = torch.randint(0, 2 * pad + 1, (total * views, 2), generator=generator)
        offsets = offsets[block.start * views:block.stop * views]
    offsets = offsets.to(flat.device)
    rows = (offsets[:, :1] + torch.arange(h, device=flat.device))[:, :, None]  # (n, h, 1)
    cols = (offsets[:, 1:] + torch.arange(w, device=flat.device))[:, None, :]  # (n, 1, w)
    shifted = padded.permute(0, 2, 3, 1)[torch.arange(n, device=flat.device)[:, None, None], rows, cols]
    return shifted.permute(0, 3, 1, 2).reshape(shape)  # one gather instead of a crop per image


def batch_to_tensors(batch: dict, device: str) -> dict:
    return {key: torch.as_tensor(value, device=device) for key, value in batch.items()}


def bc_loss_on_batch(policy, batch: dict, loss_kind: str, shift: int, generator: torch.Generator,
                     aux_weight: float = 0.0, rows: Optional[tuple[slice, int]] = None) -> torch.Tensor:
    """The cloning loss of a chunk-window batch (`data.windows.ChunkWindows.batch`), plus
    `aux_weight` x the MSE of the auxiliary object/goal prediction when the policy has that head.
    `rows=(block, total)`: the batch is one data-parallel rank's block of `total` rows; the loss
    is then scaled so that the mean over ranks is the whole batch's loss (real chunk steps
    counted over every rank), which makes the averaged gradient the one-rank gradient."""
    pixels = random_shift(policy.preprocess_images(batch[C.OBS_IMAGE]), shift, generator, rows)
    out = policy(images=None, pixels=pixels, proprio=batch[C.OBS_PROPRIO], state=batch[C.OBS_STATE],
                 task_index=batch[C.OBS_TASK_INDEX])
    target = policy.normalize_actions(batch[C.ACTION_CHUNK])
    mask = batch[C.ACTION_MASK]
    ranks, real_steps, row_share = 1, None, 1.0
    if rows is not None:
        ranks = distributed.world_size()
        real_steps = distributed.sum_value(mask.sum().item())
        row_share = len(mask) / rows[1]
    loss = ranks * masked_chunk_loss(out.action_mean, out.action_log_std, target, mask, loss_kind, real_steps)
    if aux_weight > 0 and out.aux_state is not None:
        aux_target = (policy.privileged_targets(batch[C.OBS_STATE].float()) - policy.aux_mean) / policy.aux_std
        aux = (out.aux_state - aux_target).pow(2).sum(-1).mean()
        loss = loss + aux_weight * (aux if rows is None else ranks * row_share * aux)
    return loss
