"""The masked chunk cloning loss, shared by SFT, self-BC and iRe-VLA's supervised phase."""

from __future__ import annotations

import math

import torch


def masked_chunk_loss(mean: torch.Tensor, log_std: torch.Tensor, target: torch.Tensor,
                      mask: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Mean over real (unpadded) steps of the per-step loss, summed over action dims.

    mean/target: (B, K, A) in normalised action space; log_std: (K, A); mask: (B, K).
    `mse` trains only the mean (keeps the exploration std for PPO); `nll` is the Gaussian
    negative log-likelihood and also trains the std.
    """
    if kind == "mse":
        per_step = (mean - target).pow(2).sum(-1)
    elif kind == "nll":
        var = (2 * log_std).exp()
        per_step = (0.5 * (target - mean).pow(2) / var + log_std + 0.5 * math.log(2 * math.pi)).sum(-1)
    else:
        raise ValueError(f"unknown loss kind {kind!r}")
    return (per_step * mask).sum() / mask.sum().clamp_min(1.0)
