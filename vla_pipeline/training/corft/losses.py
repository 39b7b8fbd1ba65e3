"""CO-RFT's two losses: the conservative term of the critic (CQL / Cal-QL) and TD3+BC for the actor."""

from __future__ import annotations

from typing import Optional

import torch


def conservative_penalty(q_data: torch.Tensor, q_random: torch.Tensor, q_policy: torch.Tensor,
                         floor: Optional[torch.Tensor], temperature: float) -> torch.Tensor:
    """CQL's term per (member, row, head): T logsumexp over {random, policy, data} chunks / T minus Q(data).

    q_data (M, B, H); q_random, q_policy (M, B, S, H); `floor` (B,) the Monte-Carlo return-to-go:
    Cal-QL lifts policy-chunk values below it to it (no gradient then), so the term never
    pushes a chunk below what the data's own return shows it is worth. None = plain CQL.
    """
    if floor is not None:
        q_policy = torch.maximum(q_policy, floor.view(1, -1, 1, 1))
    candidates = torch.cat([q_random, q_data.unsqueeze(2), q_policy], 2)
    return temperature * torch.logsumexp(candidates / temperature, 2) - q_data


def td3_bc_actor_loss(q_policy: torch.Tensor, policy_chunk: torch.Tensor, data_chunk: torch.Tensor,
                      mask: torch.Tensor, bc_alpha: float) -> tuple[torch.Tensor, dict]:
    """TD3+BC: -(alpha / mean|Q|) Q(o, pi(o)) + the masked chunk MSE (sum over action dims,
    mean over real steps). Q is normalised by its detached batch magnitude (Fujimoto & Gu)."""
    scale = bc_alpha / q_policy.abs().mean().detach().clamp_min(1e-6)
    per_step = ((policy_chunk - data_chunk) ** 2).sum(-1)
    bc = (per_step * mask).sum() / mask.sum().clamp_min(1.0)
    loss = -scale * q_policy.mean() + bc
    return loss, {"actor_q": q_policy.mean().item(), "bc_loss": bc.item(), "q_scale": scale.item()}
