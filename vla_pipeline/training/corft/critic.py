"""CO-RFT's critic: an ensemble of Q heads over action chunks, its files, and the Polyak update."""

from __future__ import annotations

import torch
from torch import nn

CRITIC_FILE = "critic.safetensors"  # critic + Polyak targets, beside the policy in a CO-RFT checkpoint
CRITIC_CONFIG_FILE = "critic.json"


class ChunkCritic(nn.Module):
    """An ensemble of Q heads: (critic readout, chunk of J actions, its mask) -> one value per prefix.

    The readout's projection is computed once per observation and shared by every chunk scored
    there (the conservative term scores many chunks per observation).
    """

    def __init__(self, feature_dim: int, td_chunk: int, action_dim: int, hidden: int, ensemble: int,
                 prefix_heads: bool):
        super().__init__()
        self.arguments = {"feature_dim": feature_dim, "td_chunk": td_chunk, "action_dim": action_dim,
                          "hidden": hidden, "ensemble": ensemble, "prefix_heads": prefix_heads}
        self.td_chunk, self.action_dim = td_chunk, action_dim
        self.outputs = td_chunk if prefix_heads else 1
        self.obs_in = nn.ModuleList(nn.Linear(feature_dim, hidden) for _ in range(ensemble))
        self.chunk_in = nn.ModuleList(nn.Linear(td_chunk * (action_dim + 1), hidden, bias=False)
                                      for _ in range(ensemble))
        self.body = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.LayerNorm(hidden),
                          nn.GELU(), nn.Linear(hidden, self.outputs))
            for _ in range(ensemble))

    def describe(self) -> dict:
        """What rebuilds this critic (saved as JSON beside its safetensors)."""
        return {"class": "ChunkCritic", **self.arguments}

    def forward(self, features: torch.Tensor, chunks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """features (B, F); chunks (B, S, J, A); mask (B, S, J) -> Q (M, B, S, outputs).

        Padded actions are zeroed and the mask is an input, so a chunk cut by the episode's end
        is scored as the shorter chunk it is."""
        chunk_input = torch.cat([chunks * mask.unsqueeze(-1), mask.unsqueeze(-1)], -1).flatten(2)
        return torch.stack([body(obs(features).unsqueeze(1) + act(chunk_input))
                            for obs, act, body in zip(self.obs_in, self.chunk_in, self.body)])


def polyak(target: nn.Module, source: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.lerp_(s, tau)
