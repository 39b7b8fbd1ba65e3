"""The clipped PPO objective on whole-chunk likelihood ratios, and its diagnostics."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vla_pipeline.policies.distributions import gaussian_entropy, step_log_probs

__all__ = ["chunk_log_prob", "explained_variance", "gaussian_entropy", "ppo_loss", "step_log_probs"]


def chunk_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor,
                   step_mask: torch.Tensor) -> torch.Tensor:
    """Joint log-prob of the executed steps only: the unexecuted tail never touched the env."""
    return (step_log_probs(mean, log_std, actions) * step_mask).sum(-1)


@dataclass
class PPOTerms:
    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clip_fraction: torch.Tensor
    ratio_mean: torch.Tensor


def ppo_loss(new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
             new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, log_std: torch.Tensor,
             clip: float, value_clip: float | None, value_coef: float, entropy_coef: float,
             normalize_advantages: bool = True, policy_coef: float = 1.0) -> PPOTerms:
    """Clipped surrogate (weighted by `policy_coef`; 0 drops the PPO term) + value loss - entropy."""
    if normalize_advantages and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_ratio = new_log_prob - old_log_prob
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    policy_loss = -surrogate.mean()
    if value_clip is not None:
        clipped = old_values + (new_values - old_values).clamp(-value_clip, value_clip)
        value_loss = 0.5 * torch.max((new_values - returns).pow(2), (clipped - returns).pow(2)).mean()
    else:
        value_loss = 0.5 * (new_values - returns).pow(2).mean()
    entropy = gaussian_entropy(log_std)
    loss = policy_coef * policy_loss + value_coef * value_loss - entropy_coef * entropy
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()  # the low-variance k3 estimator
        clip_fraction = ((ratio - 1).abs() > clip).float().mean()
    return PPOTerms(loss, policy_loss, value_loss, entropy, approx_kl, clip_fraction, ratio.mean())


def explained_variance(values, returns) -> float:
    import numpy as np

    var = float(np.var(returns))
    return float("nan") if var == 0 else 1.0 - float(np.var(np.asarray(returns) - np.asarray(values))) / var
