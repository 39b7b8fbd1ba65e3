"""The PPO / self-BC weight w in  L = L_PPO + w * L_BC  (the paper adapts it online, no formula).

- `none`:  w = 0 (pure chunked PPO; the BC batch is not even computed).
- `fixed`: constant w.
- `dual`:  constrained view, maximise the PPO objective subject to L_BC <= eps. Dual ascent
  on log w after every minibatch: log w += lr * (L_BC - eps) / eps, clamped. w grows only
  while PPO drags the policy away from its own best behaviour (like SAC's temperature).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class BCWeight:
    rule: str
    weight: float
    target: float | None = None  # eps for `dual`
    lr: float = 0.02
    w_min: float = 1e-3
    w_max: float = 10.0

    def __post_init__(self):
        if self.rule not in ("none", "fixed", "dual"):
            raise ValueError(f"unknown weight rule {self.rule!r}")
        if self.rule == "none":
            self.weight = 0.0

    @property
    def active(self) -> bool:
        return self.rule != "none"

    def set_target(self, bc_loss_at_start: float, slack: float) -> None:
        """eps = (1 + slack) x the BC loss of the round's starting policy on the buffer."""
        self.target = max(bc_loss_at_start, 1e-8) * (1.0 + slack)

    def update(self, bc_loss: float) -> float:
        if self.rule == "dual":
            if self.target is None:
                raise RuntimeError("dual weight rule needs set_target() first")
            log_w = math.log(self.weight) + self.lr * (bc_loss - self.target) / self.target
            log_w = min(math.log(self.w_max), max(math.log(self.w_min), log_w))  # clamp before exp
            self.weight = math.exp(log_w)
        return self.weight
