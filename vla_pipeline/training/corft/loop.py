"""CO-RFT step 2: chunked offline RL on demonstrations (seeds.md section 4; docs/ARCHITECTURE.md).

The TD targets over chunk prefixes are in `targets.py` (its docstring has the formula). A
critic ensemble reads the trunk's fused readout tokens plus the (padded) chunk; a conservative
term (Cal-QL: CQL with policy-chunk values floored at the Monte-Carlo return-to-go) keeps unseen
chunks low; the actor is TD3+BC on the policy's action head. With `trainable: heads` the trunk
is frozen and its readouts are computed once per frame, so each update is a few small MLPs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vla_pipeline.config import OfflineConfig
from vla_pipeline.data.snapshot import StepTable
from vla_pipeline.data.windows import ChunkWindows
from vla_pipeline.errors import PipelineError
from vla_pipeline.policies.vla import VLAPolicy
from vla_pipeline.training.corft.critic import ChunkCritic, polyak
from vla_pipeline.training.corft.losses import conservative_penalty, td3_bc_actor_loss
from vla_pipeline.training.corft.readouts import CachedReadouts, LiveReadouts, cache_readouts
from vla_pipeline.training.corft.targets import check_every_step_has_a_frame, chunk_targets, step_rewards

Validator = Callable[[VLAPolicy], dict]


@dataclass
class OfflineResult:
    curve: list[dict]
    best_step: int
    validation: Optional[dict]
    critic: ChunkCritic
    transitions: int
    targets: dict  # the Polyak targets at the end of training: {"critic_target": ..., "actor_target": ...}

    def training_state(self) -> dict[str, torch.Tensor]:
        """Critic and target networks as flat tensors (saved beside the policy, never inside it:
        evaluation loads the policy alone)."""
        modules = {"critic": self.critic, **self.targets}
        return {f"{name}.{key}": value.detach().contiguous().cpu()
                for name, module in modules.items() for key, value in module.state_dict().items()}


class OfflineTrainer:
    """Critic and actor updates of one CO-RFT run (the loop is in `train_offline`)."""

    def __init__(self, policy: VLAPolicy, table: StepTable, cfg: OfflineConfig, readouts, windows: ChunkWindows):
        self.policy, self.cfg, self.readouts, self.windows = policy, cfg, readouts, windows
        device = cfg.device
        k, a = policy.config.chunk_len, policy.config.action_dim
        self.k, self.a, self.j = k, a, cfg.td_chunk
        targets = chunk_targets(table.step, table.episode_length,
                                step_rewards(table.success, cfg.success_reward, cfg.step_cost),
                                table.terminated, cfg.td_chunk, cfg.gamma)
        self.targets = {name: torch.as_tensor(getattr(targets, name), device=device)
                        for name in ("prefix_return", "done", "bootstrap", "valid", "next_row", "return_to_go")}
        self.discount = torch.as_tensor(cfg.gamma ** np.arange(1, cfg.td_chunk + 1), dtype=torch.float32,
                                        device=device)
        self.data_chunk = policy.normalize_actions(
            torch.as_tensor(table.action[windows.index], device=device)).float()  # (N, K, A)
        self.data_mask = torch.as_tensor(windows.mask, device=device)
        feature_dim = readouts.critic(torch.zeros(1, dtype=torch.long, device=device)).shape[-1]
        self.critic = ChunkCritic(feature_dim, cfg.td_chunk, a, cfg.critic_hidden, cfg.ensemble,
                                  cfg.prefix_heads).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_target = copy.deepcopy(policy.action_head).requires_grad_(False)
        self.actor_params = ([p for p in policy.action_head.parameters()] if cfg.trainable == "heads"
                             else [p for n, p in policy.named_parameters()
                                   if p.requires_grad and not n.startswith(("value_head", "action_log_std", "aux_head"))])
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.actor_opt = torch.optim.Adam(self.actor_params, lr=cfg.actor_lr)
        # Random chunks: uniform over the env's action box [-1, 1], in normalised units.
        self.low = policy.normalize_actions(torch.full((a,), -1.0, device=device))
        self.high = policy.normalize_actions(torch.full((a,), 1.0, device=device))
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)

    def _chunk_of(self, action_tokens: torch.Tensor, head: nn.Module) -> torch.Tensor:
        return head(action_tokens).view(*action_tokens.shape[:-1], self.k, self.a)[..., :self.j, :]

    def _noise(self, shape, std: float, clip: Optional[float] = None) -> torch.Tensor:
        noise = torch.randn(shape, generator=self.generator, device=self.cfg.device) * std
        return noise.clamp(-clip, clip) if clip is not None else noise

    def critic_step(self, rows: torch.Tensor) -> dict:
        cfg, j = self.cfg, self.j
        t = {name: value[rows] for name, value in self.targets.items()}
        features = self.readouts.critic(rows)
        ones = torch.ones(len(rows), 1, j, device=cfg.device)
        with torch.no_grad():
            next_rows = t["next_row"]  # (B, J)
            next_chunk = self._chunk_of(self.readouts.actor(next_rows).detach(), self.actor_target)
            next_chunk = next_chunk + self._noise(next_chunk.shape, cfg.target_noise, cfg.target_noise_clip)
            next_features = self.readouts.critic(next_rows.reshape(-1))
            q_next = self.critic_target(next_features, next_chunk.reshape(-1, 1, j, self.a),
                                        ones.repeat(j, 1, 1))[..., 0, -1].min(0).values.view(-1, j)
            target = t["prefix_return"] + self.discount * t["bootstrap"] * (1 - t["done"]) * q_next  # (B, J)
        valid = t["valid"]
        if self.critic.outputs == 1:  # the full chunk's head only
            target, valid = target[:, -1:], valid[:, -1:]
        data_chunk = self.data_chunk[rows, :j].unsqueeze(1)
        data_mask = self.data_mask[rows, :j].unsqueeze(1)
        q_data = self.critic(features, data_chunk, data_mask)[:, :, 0]  # (M, B, H)
        td = (((q_data - target) ** 2) * valid).sum() / (valid.sum() * q_data.shape[0]).clamp_min(1.0)
        loss, stats = td, {"td_loss": td.item(), "q_data": q_data.mean().item(), "target": target.mean().item()}
        if cfg.conservative != "none":
            penalty = self._conservative(rows, features, q_data, t["return_to_go"])
            loss = loss + cfg.cql_alpha * penalty
            stats["cql_term"] = penalty.item()
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        polyak(self.critic_target, self.critic, cfg.tau)
        return stats

    def _conservative(self, rows, features, q_data, return_to_go) -> torch.Tensor:
        cfg, j, s = self.cfg, self.j, self.cfg.cql_samples
        b = len(rows)
        uniform = torch.rand((b, s, j, self.a), generator=self.generator, device=cfg.device)
        random_chunks = self.low + (self.high - self.low) * uniform
        std = self.policy.action_log_std.detach().clamp(-5.0, 1.0).exp()[:j]
        with torch.no_grad():  # policy chunks at o_t and at o_{t+J}, sampled around the actor's mean
            here = self._chunk_of(self.readouts.actor(rows), self.policy.action_head)
            after = self._chunk_of(self.readouts.actor(self.targets["next_row"][rows, -1]), self.policy.action_head)
        policy_chunks = torch.cat([here.unsqueeze(1).expand(-1, s, -1, -1),
                                   after.unsqueeze(1).expand(-1, s, -1, -1)], 1)
        policy_chunks = policy_chunks + self._noise(policy_chunks.shape, 1.0) * std
        ones = torch.ones(b, 3 * s, j, device=cfg.device)
        q = self.critic(features, torch.cat([random_chunks, policy_chunks], 1), ones)
        floor = return_to_go if cfg.conservative == "calql" else None
        return conservative_penalty(q_data, q[:, :, :s], q[:, :, s:], floor, cfg.cql_temperature).mean()

    def actor_step(self, rows: torch.Tensor) -> dict:
        features = self.readouts.critic(rows)
        chunk = self.policy.action_chunk_mean(self.readouts.actor(rows))  # (B, K, A)
        ones = torch.ones(len(rows), 1, self.j, device=self.cfg.device)
        q = self.critic(features, chunk[:, :self.j].unsqueeze(1), ones)[0, :, 0, -1]
        loss, stats = td3_bc_actor_loss(q, chunk, self.data_chunk[rows], self.data_mask[rows], self.cfg.bc_alpha)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        self.critic_opt.zero_grad(set_to_none=True)  # the actor's loss also reached the critic
        polyak(self.actor_target, self.policy.action_head, self.cfg.tau)
        return stats


def train_offline(policy: VLAPolicy, table: StepTable, cfg: OfflineConfig, validate: Optional[Validator] = None,
                  readouts=None) -> OfflineResult:
    """CO-RFT's offline phase; the policy's weights end as the best validation check's.

    `readouts` may be given (tests); otherwise the frozen trunk's readouts are cached
    (`trainable: heads`) or recomputed per batch (`all`)."""
    check_every_step_has_a_frame(table)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    policy.to(cfg.device)
    windows = ChunkWindows(table, policy.config.chunk_len, policy.config.task_names, balance_tasks=True)
    if readouts is None:
        if cfg.trainable == "heads":
            readouts = CachedReadouts(cache_readouts(policy, table, windows.task_index, cfg.feature_batch_size,
                                                     cfg.device))
        else:
            readouts = LiveReadouts(policy, table, windows.task_index, cfg.device)
    policy.eval()  # BatchNorm keeps the SFT statistics; only weights move
    if cfg.trainable == "heads":
        policy.requires_grad_(False)
        policy.action_head.requires_grad_(True)
    trainer = OfflineTrainer(policy, table, cfg, readouts, windows)
    curve, running = [], {}
    best = {"score": -1.0, "step": 0, "state": None, "validation": None}
    bar = tqdm(range(1, cfg.steps + 1), desc="offline", unit="step", mininterval=2.0, dynamic_ncols=True)
    for step in bar:
        rows = torch.as_tensor(windows.sample(rng, cfg.batch_size), device=cfg.device)
        stats = trainer.critic_step(rows)
        if step % cfg.policy_delay == 0:
            stats.update(trainer.actor_step(rows))
        for key, value in stats.items():
            running.setdefault(key, []).append(value)
        if not np.isfinite(stats["td_loss"]):
            raise PipelineError(f"offline: the critic diverged at step {step} (td_loss {stats['td_loss']}); "
                                "no checkpoint written (lower offline.critic_lr or raise cql_alpha)")
        if step % cfg.log_every == 0 or step == cfg.steps:
            record = {"step": step, **{k: float(np.mean(v)) for k, v in running.items()}}
            curve.append(record)
            bar.set_postfix(td=f"{record['td_loss']:.4f}", q=f"{record['q_data']:.3f}")
            running = {}
        if validate is not None and (step % cfg.validate_every == 0 or step == cfg.steps):
            result = validate(policy)
            curve[-1].update({"validation_success": result["success"],
                              "validation_steps_to_success": result["steps_to_success"]})
            if result["success"] > best["score"]:
                best.update(score=result["success"], step=step, validation=result,
                            state={k: v.clone() for k, v in policy.state_dict().items()})
    if best["state"] is not None:
        policy.load_state_dict(best["state"])
    policy.requires_grad_(True)
    if policy.config.freeze_text:
        policy.text.requires_grad_(False)
    policy.eval()
    return OfflineResult(curve, best["step"] if validate is not None else cfg.steps, best["validation"],
                         trainer.critic, len(table.step),
                         {"critic_target": trainer.critic_target, "actor_target": trainer.actor_target})
