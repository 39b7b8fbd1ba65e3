"""One DVC round of action-chunked PPO with self-BC: collect -> buffer -> GAE -> update.

The shape follows SB3's split: `ChunkCollector` collects and stores (with chunk GAE),
`SelfBCBuffer` keeps the best successes, `update` runs the minibatch epochs. A round is
several iterations inside one process; DVC caches rounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from vla_pipeline import distributed
from vla_pipeline.config import EnvConfig, Params
from vla_pipeline.data.episode import Episode
from vla_pipeline.data.schema import FrameLayout
from vla_pipeline.data.windows import ChunkWindows
from vla_pipeline.envs.chunk_env import EpisodeQueue
from vla_pipeline.envs.tasks import resolve_tasks, split_configurations
from vla_pipeline.envs.vector import make_chunk_vector_env
from vla_pipeline.errors import PipelineError
from vla_pipeline.parallel import acting_threads
from vla_pipeline.policies.vla import VLAPolicy
from vla_pipeline.training.behaviour_cloning import batch_to_tensors, bc_loss_on_batch
from vla_pipeline.training.ppo.bc_weight import BCWeight
from vla_pipeline.training.ppo.curriculum import TaskCurriculum
from vla_pipeline.training.ppo.loss import chunk_log_prob, explained_variance, ppo_loss, step_log_probs
from vla_pipeline.training.ppo.rollout import ChunkCollector
from vla_pipeline.training.ppo.rollout_batch import RolloutBatch
from vla_pipeline.training.rounds import round_seed
from vla_pipeline.training.success_buffer import SelfBCBuffer

HEAD_MODULES = ("action_head", "estimate_to_action")
VALUE_MODULES = ("value_head",)


def parameter_groups(policy: VLAPolicy, params: Params) -> list[dict]:
    """Trunk / action head / critic (/ log-std, with `ppo.log_std_lr`) get their own learning
    rates; a frozen trunk gets none."""
    cfg = params.ppo
    groups = {"trunk": [], "head": [], "log_std": [], "value": []}
    for name, param in policy.named_parameters():
        top = name.split(".")[0]
        if name == "action_log_std" and cfg.log_std_lr is not None:
            groups["log_std"].append(param)
        elif top in HEAD_MODULES or name == "action_log_std":
            groups["head"].append(param)
        elif top in VALUE_MODULES:
            groups["value"].append(param)
        else:
            groups["trunk"].append(param)
    if cfg.freeze_backbone:
        for param in groups.pop("trunk"):
            param.requires_grad_(False)
    lrs = {"trunk": cfg.lr, "head": cfg.head_lr, "log_std": cfg.log_std_lr, "value": cfg.value_lr}
    return [{"params": [p for p in ps if p.requires_grad], "lr": lrs[g], "name": g}
            for g, ps in groups.items() if ps]


@dataclass
class RoundResult:
    curve: list[dict]
    successes: list[Episode]  # every successful training episode, in collection order
    buffer: SelfBCBuffer
    counters: dict


class PPOTrainer:
    def __init__(self, policy: VLAPolicy, buffer: SelfBCBuffer, params: Params, round_name: str):
        self.policy, self.buffer, self.params, self.round_name = policy, buffer, params, round_name
        self.cfg = params.ppo
        self.seed = round_seed(params, round_name)
        self.rng = np.random.default_rng([self.seed, 1])
        self.generator = torch.Generator().manual_seed(self.seed)
        self.optimizer = torch.optim.AdamW(parameter_groups(policy, params), weight_decay=0.0, eps=1e-5)
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        bc = params.bc
        self.weight = BCWeight(bc.weight_rule, bc.weight, lr=bc.dual_lr, w_min=bc.weight_min, w_max=bc.weight_max)
        self.layout = FrameLayout.of_env(params.env)  # of the frames the BC buffer decodes
        self._windows: ChunkWindows | None = None
        self._windows_version = -1
        self.skipped = 0

    # ------------------------------------------------------------------ BC data
    def bc_windows(self) -> ChunkWindows | None:
        if not self.weight.active or len(self.buffer) == 0:
            return None
        if self._windows is None or self._windows_version != self.buffer.version:
            table = self.buffer.step_table(*self.layout)
            self._windows = ChunkWindows(table, self.policy.config.chunk_len, self.policy.config.task_names,
                                         balance_tasks=self.params.bc.task_balance)
            self._windows_version = self.buffer.version
        return self._windows

    def bc_loss(self, windows: ChunkWindows) -> torch.Tensor:
        rows = windows.sample(self.rng, self.params.bc.batch_size)
        part = distributed.block(len(rows))  # this rank's block (all of it on one rank)
        batch = batch_to_tensors(windows.batch(rows[part]), self.cfg.device)
        return bc_loss_on_batch(self.policy, batch, self.params.bc.loss, 0, self.generator,
                                self.params.policy.aux_state_weight,
                                (part, len(rows)) if distributed.world_size() > 1 else None)

    @torch.no_grad()
    def measure_bc_loss(self, batches: int = 4) -> float | None:
        windows = self.bc_windows()
        if windows is None:
            return None
        return float(np.mean([distributed.mean_value(self.bc_loss(windows).item()) for _ in range(batches)]))

    # ------------------------------------------------------------------ update
    def update(self, batch: RolloutBatch, value_only: bool) -> dict:
        """Minibatch epochs over one iteration's decisions.

        The policy stays in eval mode: BatchNorm uses its running statistics, so the new
        policy equals the behaviour policy at the first minibatch (ratio exactly 1). Under
        torchrun each rank takes its block of every minibatch and the logged and tested
        scalars are means over ranks, so all ranks stop and weight alike.
        """
        cfg, policy = self.cfg, self.policy
        policy.eval()
        windows = None if value_only else self.bc_windows()
        logs: dict[str, list] = {k: [] for k in ("policy_loss", "value_loss", "bc_loss", "approx_kl",
                                                  "clip_fraction", "ratio_mean", "weight", "entropy")}
        first_minibatch: dict = {}
        n = len(batch)
        stop = False
        for epoch in range(cfg.epochs):
            order = self.rng.permutation(n)
            for start in range(0, n, cfg.minibatch_size):
                idx = order[start:start + cfg.minibatch_size]
                if len(idx) < 2:
                    continue
                terms, bc_loss, loss = self.minibatch_loss(batch, idx, windows, value_only)
                self._step(loss)
                scalars = {key: distributed.mean_value(getattr(terms, key).item())
                           for key in ("policy_loss", "value_loss", "approx_kl", "clip_fraction", "ratio_mean",
                                       "entropy")}
                if not first_minibatch:
                    first_minibatch = {"ratio": scalars["ratio_mean"], "clip_fraction": scalars["clip_fraction"]}
                if bc_loss is not None:
                    bc_value = distributed.mean_value(bc_loss.item())
                    logs["bc_loss"].append(bc_value)
                    self.weight.update(bc_value)
                logs["weight"].append(self.weight.weight)
                for key, value in scalars.items():
                    logs[key].append(value)
                if not value_only and cfg.target_kl is not None and scalars["approx_kl"] > cfg.target_kl:
                    stop = True
                    break
            if stop:
                break
        out = {key: float(np.mean(v)) if v else None for key, v in logs.items()}
        out.update(epochs_run=epoch + 1, early_stop=stop, first_ratio=first_minibatch.get("ratio"),
                   first_clip_fraction=first_minibatch.get("clip_fraction"), weight=self.weight.weight,
                   explained_variance=explained_variance(batch.values, batch.returns))
        return out

    def minibatch_loss(self, batch: RolloutBatch, idx: np.ndarray, windows, value_only: bool) -> tuple:
        """(PPO terms, BC loss or None, the loss to minimise) of this rank's block of minibatch idx."""
        terms, bc_loss = self._ppo_and_bc_losses(batch, idx[distributed.block(len(idx))], windows)
        loss = terms.value_loss * self.cfg.value_coef if value_only else terms.loss
        if bc_loss is not None:
            loss = loss + self.weight.weight * bc_loss
        return terms, bc_loss, loss

    def _ppo_and_bc_losses(self, batch: RolloutBatch, idx: np.ndarray, windows):
        cfg, policy = self.cfg, self.policy
        t = lambda a: torch.as_tensor(a[idx], device=cfg.device)  # noqa: E731
        out = policy(images=t(batch.images), proprio=t(batch.proprio), state=t(batch.state),
                     task_index=t(batch.task_index))
        actions, mask, old_step_lp = t(batch.actions), t(batch.step_mask), t(batch.log_probs)
        advantages = t(batch.advantages)
        if cfg.logprob == "chunk":
            new_lp = chunk_log_prob(out.action_mean, out.action_log_std, actions, mask)
            old_lp = (old_step_lp * mask).sum(-1)
            adv = advantages
        else:  # one ratio per executed step, each with its chunk's advantage
            executed = mask.bool()
            new_lp = step_log_probs(out.action_mean, out.action_log_std, actions)[executed]
            old_lp = old_step_lp[executed]
            adv = advantages[:, None].expand_as(mask)[executed]
        terms = ppo_loss(new_lp, old_lp, adv, out.value, t(batch.values), t(batch.returns), out.action_log_std,
                         cfg.clip, cfg.value_clip, cfg.value_coef, cfg.entropy_coef, cfg.normalize_advantages,
                         policy_coef=cfg.policy_coef)
        bc_loss = self.bc_loss(windows) if windows is not None else None
        return terms, bc_loss

    def gradient(self, loss: torch.Tensor) -> bool:
        """Backward, then the mean gradient over ranks; False for a non-finite loss (the mean
        over ranks is tested, so every rank skips alike)."""
        self.optimizer.zero_grad(set_to_none=True)
        if not np.isfinite(distributed.mean_value(loss.item())):
            return False
        loss.backward()
        distributed.average_gradients(self.trainable)
        return True

    def _step(self, loss: torch.Tensor) -> None:
        if self.gradient(loss):
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.max_grad_norm)
            if torch.isfinite(grad_norm):
                self.optimizer.step()
                return
        self.skipped += 1
        if self.skipped > self.cfg.max_skipped_batches:
            raise PipelineError(
                f"ppo round {self.round_name}: non-finite loss or gradient (loss={loss.item()}); stopping "
                f"without writing a checkpoint (ppo.max_skipped_batches={self.cfg.max_skipped_batches})")


def training_queues(params: Params, n_envs: int, seed: int) -> list[EpisodeQueue]:
    """Training episodes draw from the train configurations only (never validation or test)."""
    tasks, configurations = resolve_tasks(params.env), split_configurations(params.env, "train")
    return [EpisodeQueue(cycle_seed=seed * 1000 + i, tasks=tasks, configurations=configurations,
                         offset=(i * len(tasks)) // n_envs) for i in range(n_envs)]


def training_env_config(params: Params) -> EnvConfig:
    """The env for training episodes: `ppo.max_episode_steps` may shorten the horizon and
    `ppo.step_cost` replace the reward's cost per step (evaluation keeps `env`'s)."""
    update = {"max_episode_steps": params.ppo.max_episode_steps, "step_cost": params.ppo.step_cost}
    update = {key: value for key, value in update.items() if value is not None}
    return params.env.model_copy(update=update) if update else params.env


def run_round(policy: VLAPolicy, buffer: SelfBCBuffer, params: Params, round_name: str) -> RoundResult:
    """Under torchrun, rank 0 steps the envs and sends each iteration's rollouts to every rank,
    so all ranks keep the same buffer and curriculum and update on blocks of the same batch."""
    cfg = params.ppo
    torch.manual_seed(round_seed(params, round_name))
    policy.to(cfg.device)
    distributed.broadcast_parameters(policy)
    trainer = PPOTrainer(policy, buffer, params, round_name)
    start_bc = trainer.measure_bc_loss()
    if params.bc.weight_rule == "dual" and start_bc is not None:
        trainer.weight.set_target(start_bc, params.bc.target_slack)
    n_envs = params.env.num_envs
    lockstep = -(-cfg.decisions_per_iteration // n_envs)
    main = distributed.is_main()
    envs = make_chunk_vector_env(training_env_config(params), policy.config.chunk_len, cfg.gamma,
                                 training_queues(params, n_envs, trainer.seed), params.env.vector) if main else None
    curriculum = TaskCurriculum(resolve_tasks(params.env), cfg.task_sampling, cfg.task_floor, cfg.task_window)
    curve, successes = [], []
    timing = {"collect_seconds": 0.0, "update_seconds": 0.0}  # printed, never stored in outputs
    started = time.perf_counter()
    collector = None
    try:
        if main:
            collector = ChunkCollector(envs, cfg.gamma, cfg.gae_lambda, round_name, trainer.generator)
        for it in tqdm(range(1, cfg.iterations + 1), desc=f"ppo {round_name}", unit="iter", mininterval=1.0,
                       **distributed.progress_options()):
            t0 = time.perf_counter()
            policy.eval()
            if main:
                with acting_threads():
                    rollout = collector.collect(policy, lockstep)
            batch, finished, stats = distributed.broadcast(rollout if main else None)
            t_collect = time.perf_counter() - t0
            admitted = 0
            for ep in finished:
                curriculum.record(ep.task, ep.steps_to_success > 0)
                if ep.steps_to_success > 0:
                    successes.append(ep)
                    admitted += buffer.offer(ep)
            value_only = it <= cfg.critic_warmup_iterations
            t1 = time.perf_counter()
            update = trainer.update(batch, value_only)
            solved = [ep for ep in finished if ep.steps_to_success > 0]
            curve.append({
                "round": round_name, "iteration": it, "value_only": value_only, **stats,
                "success_rate": stats["successes"] / stats["episodes"] if stats["episodes"] else None,
                "steps_to_success": float(np.mean([ep.steps_to_success for ep in solved])) if solved else None,
                "buffer_admitted": admitted, **{f"buffer_{k}": v for k, v in buffer.stats().items()},
                "bc_target": trainer.weight.target, "action_std": float(policy.action_log_std.detach().exp().mean()),
                **update})
            weights = curriculum.weights()
            if weights is not None:  # for the episodes that start from now on
                if main:
                    envs.call("set_task_weights", weights)
                curve[-1]["task_weights"] = dict(zip(curriculum.tasks, weights))
            timing["collect_seconds"] += t_collect
            timing["update_seconds"] += time.perf_counter() - t1
    finally:
        if envs is not None:
            envs.close()
    policy.eval()
    counters = {"seconds": time.perf_counter() - started, **timing,
                "env_steps": collector.env_steps if collector else None,
                "skipped_batches": trainer.skipped, "bc_loss_at_start": start_bc}
    return RoundResult(curve, successes, buffer, counters)
