"""The Gaussian over an action chunk: per-step log-densities and entropy.

Shared by the policy (sampling, log-probs of its own samples) and the RL objectives.
"""

from __future__ import annotations

import math

import torch


def step_log_probs(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log N(a | mean, std) summed over action dims: (B, K, A) -> (B, K)."""
    var = (2 * log_std).exp()
    return (-0.5 * (actions - mean).pow(2) / var - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of the whole chunk distribution (state-independent std)."""
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum()
