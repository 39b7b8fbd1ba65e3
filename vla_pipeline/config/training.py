"""params.yaml sections of the training methods: SFT, ACPPO (PPO + self-BC), iRe-VLA and CO-RFT."""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple, Optional

from pydantic import Field, field_validator, model_validator

from vla_pipeline.config.base import Section, check_device
from vla_pipeline.metaworld_names import check_task_names


class ReportRow(NamedTuple):
    """Where a run of a method appears in the report: every run config says it (`report_row`),
    so the report lists a new method's runs without naming it."""

    family: str  # the table's row group
    base: str | None  # paired with this checkpoint's episodes
    chain: str | None  # the training curve it belongs to (None: no RL curve)


# Learning rates: > 0 and at most MAX_LR. Adam's step is about lr per weight whatever the
# gradient's scale, so a rate above 1 can only diverge; refused by `check_params`, before DVC
# deletes any stage's outputs (issue 41).
MAX_LR = 1.0


class SFTConfig(Section):
    """Supervised warm start on the demo snapshot."""

    steps: int = Field(3000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-4, gt=0.0, le=MAX_LR)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = Field(1.0, gt=0.0)
    loss: Literal["mse", "nll"] = "mse"
    augment_shift: int = Field(4, ge=0)  # random-shift augmentation in pixels
    seed: int = Field(0, ge=0)
    device: str = "cpu"
    num_threads: int = Field(2, ge=1)
    log_every: int = Field(50, ge=1)
    max_skipped_batches: int = Field(0, ge=0)  # non-finite batches tolerated before failing
    # Every task equally often in a batch (else rows are drawn uniformly, so tasks with long
    # or many demos dominate and reach, the shortest, is the rarest).
    task_balance: bool = True
    # With task_balance: relative share of a task in the batches (1 for tasks not named), e.g.
    # more updates for the tasks whose goal is a small marker placed at random.
    task_weights: dict[str, float] = Field(default_factory=dict)
    # Early stopping on the validation split: every `validate_every` steps roll the policy out
    # on `validation_episodes` configurations per task; stop after `patience` checks without a
    # new best and keep the best weights (0 = train `steps` and keep the last weights).
    validate_every: int = Field(0, ge=0)
    validation_episodes: int = Field(5, ge=1, le=50)
    patience: int = Field(2, ge=1)
    # Exponential moving average of the weights (0 = off): checked on validation and kept in
    # place of the last iterate; its decay warms up over the first steps (vla_pipeline.training.supervised).
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)

    _device = field_validator("device")(check_device)

    @field_validator("task_weights")
    @classmethod
    def _task_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        check_task_names(list(weights))
        if any(not math.isfinite(w) or w <= 0 for w in weights.values()):
            raise ValueError("task weights must be positive")
        return weights

    @model_validator(mode="after")
    def _validation_on_log_steps(self) -> "SFTConfig":
        if self.validate_every and self.validate_every % self.log_every:
            raise ValueError("sft.validate_every must be a multiple of sft.log_every (one curve row per check)")
        return self



class PPOConfig(Section):
    """Action-chunked PPO: one decision = one chunk of K actions (ARCHITECTURE section 6)."""

    iterations: int = Field(8, ge=1)  # PPO iterations per DVC round
    decisions_per_iteration: int = Field(256, ge=1)  # across all envs
    epochs: int = Field(4, ge=1)
    minibatch_size: int = Field(64, ge=2)
    lr: float = Field(1e-5, gt=0.0, le=MAX_LR)  # trunk (vision, text, fusion)
    head_lr: float = Field(3e-5, gt=0.0, le=MAX_LR)  # action head (and the log-std when log_std_lr is null)
    # The exploration spread's own rate: at head_lr it moves < 0.01 in a round, i.e. stays fixed.
    log_std_lr: Optional[float] = Field(None, gt=0.0, le=MAX_LR)
    value_lr: float = Field(1e-3, gt=0.0, le=MAX_LR)
    gamma: float = Field(0.99, gt=0.0, le=1.0)  # per env step
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)  # per decision
    clip: float = Field(0.2, gt=0.0, lt=1.0)
    value_clip: Optional[float] = Field(0.2, gt=0.0)
    value_coef: float = Field(0.5, ge=0.0)
    entropy_coef: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(0.5, gt=0.0)
    target_kl: Optional[float] = Field(0.05, gt=0.0)  # stop the epoch loop early above it
    critic_warmup_iterations: int = Field(1, ge=0)  # value-only updates at the round's start
    # Per-minibatch advantage normalisation turns the value noise of all-failure batches
    # (sparse reward) into full-size policy steps; off by default.
    normalize_advantages: bool = False
    logprob: Literal["chunk", "step"] = "chunk"  # one ratio per chunk, or per executed step
    # Training episodes: `uniform` round-robin over tasks; `failures`: tasks drawn in proportion
    # to their recent failure rate; `uncertain`: in proportion to p(1-p) of the recent success
    # rate p, where sparse-reward PPO has signal (last `task_window` episodes, at least `task_floor`).
    task_sampling: Literal["uniform", "failures", "uncertain"] = "uniform"
    task_floor: float = Field(0.1, gt=0.0, le=1.0)
    task_window: int = Field(20, ge=1)
    # Training horizon (None: env.max_episode_steps). Shorter = more episodes per iteration;
    # evaluation always uses env.max_episode_steps.
    max_episode_steps: Optional[int] = Field(None, ge=1, le=500)
    # Training reward's cost per env step (None: env.step_cost). A cost makes every step of a
    # slow success pay, where the discount alone separates 50 from 55 steps by only 5 %.
    step_cost: Optional[float] = Field(None, ge=0.0, le=0.1)
    freeze_backbone: bool = False  # iRe-VLA's RL phase: only heads (and critic) train
    # Weight of the clipped PPO policy term; 0 keeps the same rollouts and self-BC but drops PPO
    # (the ablation that shows what PPO itself adds).
    policy_coef: float = Field(1.0, ge=0.0)
    seed: int = Field(0, ge=0)  # each round draws its own streams from (seed, round name)
    device: str = "cpu"
    num_threads: int = Field(2, ge=1)
    max_skipped_batches: int = Field(0, ge=0)

    _device = field_validator("device")(check_device)

    @model_validator(mode="after")
    def _minibatch_fits(self) -> "PPOConfig":
        if self.minibatch_size > self.decisions_per_iteration:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) is larger than decisions_per_iteration "
                             f"({self.decisions_per_iteration}): every epoch would be a single minibatch")
        return self


class BCConfig(Section):
    """Self behaviour cloning term and its weight rule (L = L_PPO + w * L_BC)."""

    weight_rule: Literal["none", "fixed", "dual"] = "dual"
    weight: float = Field(0.2, gt=0.0)  # fixed value, or the starting value for `dual`
    target_slack: float = Field(0.1, ge=0.0)  # dual: eps = (1 + slack) x BC loss at round start
    dual_lr: float = Field(0.02, gt=0.0)
    weight_min: float = Field(1e-3, gt=0.0)
    weight_max: float = Field(10.0, gt=0.0)
    batch_size: int = Field(64, ge=1)
    loss: Literal["mse", "nll"] = "mse"
    task_balance: bool = True  # every task equally often in a BC batch

    @model_validator(mode="after")
    def _bounds(self) -> "BCConfig":
        if not self.weight_min <= self.weight <= self.weight_max:
            raise ValueError("weight must lie in [weight_min, weight_max]")
        return self


class BufferConfig(Section):
    """The self-BC buffer: the shortest successes so far, per slot."""

    key: Literal["task_variation", "task"] = "task_variation"
    capacity: int = Field(1, ge=1)  # episodes per slot
    seed_with_demos: bool = True  # start from the demo snapshot (evicted by shorter successes)
    # A success enters a free slot only if <= admit_margin x the median length of its task's
    # episodes in the buffer; None: any success (the speed of the policy's own successes is cloned).
    admit_margin: float | None = Field(None, gt=0)


# The sections a round's `set` may change: what a chain varies (the PPO term, the BC loss, the buffer).
ROUND_SECTIONS = ("ppo", "bc", "buffer")


class RoundConfig(Section):
    """One ACPPO round. Rounds form chains through `policy_in`; each chain starts from an SFT
    checkpoint (`base`), and its evaluated rounds are paired with that checkpoint's episodes."""

    policy_in: str  # "sft", "sft-small" or an earlier round
    buffer_in: str  # "demos", "demos-small" or an earlier round
    base: Optional[str] = None  # the SFT checkpoint the chain starts from (required): DVC pairs with its episodes
    chain: str = Field("ACPPO", min_length=1)  # the report's row group and curve label, one per chain
    # Settings this round runs with otherwise, per section: {ppo: {policy_coef: 0.0}} is self-BC only.
    set: dict[str, dict[str, Any]] = Field(default_factory=dict)
    test: bool = False  # also evaluate on the test split (the final round); else validation only

    def report_row(self) -> ReportRow:
        return ReportRow(self.chain, self.base, self.chain)


class IreConfig(Section):
    """iRe-VLA: RL rounds with the trunk frozen (action head, log-std and critic train, no BC),
    then supervised rounds of the whole model on the demos plus D_RL, the RL successes.

    RL rounds run the chunked-PPO round with `ppo` settings except those named here; kind `ppo`
    rounds are the same with the trunk trainable (the unstable baseline the method avoids).
    """

    rl_iterations: int = Field(28, ge=1)  # PPO iterations per RL round (ACPPO's env-step budget)
    # `fresh`: re-initialise the critic at every RL round (its inputs moved in the SL round);
    # `keep`: continue from the last one. Either way the first iterations train only the critic.
    critic: Literal["fresh", "keep"] = "keep"
    critic_warmup_iterations: int = Field(1, ge=0)
    # D_RL: every successful RL episode, the shortest `d_rl_capacity` per slot (task, variation).
    d_rl_key: Literal["task_variation", "task"] = "task_variation"
    d_rl_capacity: int = Field(2, ge=1)
    # SL rounds: the SFT loss and loop on demos + D_RL, `sl_rl_fraction` of each batch from D_RL.
    sl_steps: int = Field(1500, ge=1)
    sl_lr: float = Field(1e-4, gt=0.0, le=MAX_LR)
    sl_warmup_steps: int = Field(50, ge=0)
    sl_batch_size: int = Field(64, ge=2)
    sl_rl_fraction: float = Field(0.5, ge=0.0, le=1.0)
    seed: int = Field(0, ge=0)  # each round draws its own streams from (seed, round name)
    # The paper's groups, on train configurations: `expert` (with a demo: the forgetting check)
    # and `new` (without one: seen only by RL), this many episodes per task each.
    episodes_per_group: int = Field(10, ge=1)
    # Other checkpoints evaluated on the same groups (the comparison rows), each with the demos
    # its groups are drawn from: the demos of the SFT its chain starts from ({sft: demos,
    # sft-small: demos-small, <ACPPO round>: its chain's demos}).
    baselines: dict[str, str] = Field(default_factory=lambda: {"sft": "demos"})


IRE_KINDS = ("rl", "sl", "ppo")


class IreRoundConfig(Section):
    # rl: PPO with the trunk frozen, no BC; sl: supervised on demos + D_RL; ppo: the unfrozen baseline
    kind: Literal["rl", "sl", "ppo"]
    policy_in: str  # "sft", "sft-small" or an earlier iRe-VLA round
    buffer_in: str  # an earlier round's D_RL; the chain's demos start an empty D_RL (rl / ppo only)
    base: Optional[str] = None  # the SFT checkpoint the chain starts from (required): paired with its episodes
    demos: Optional[str] = None  # that checkpoint's demos (required): what sl rounds learn, where groups come from
    chain: Optional[str] = None  # the report's row group; None: "iRe-VLA" (rl / sl) or "PPO" (kind ppo)
    test: bool = False  # also evaluate on the test split (a chain's final round)

    def report_row(self) -> ReportRow:
        if self.kind == "ppo":
            return ReportRow(self.chain or "PPO baseline (unfrozen, no BC)", self.base, self.chain or "PPO")
        return ReportRow(self.chain or "iRe-VLA", self.base, self.chain or "iRe-VLA")


class OfflineConfig(Section):
    """CO-RFT's second step: chunked offline RL on the small demo set, from its SFT checkpoint.

    A critic ensemble over action chunks learns chunked TD targets (every prefix j = 1..td_chunk,
    or only the full chunk) with a conservative term (Cal-QL, or plain CQL without the floor);
    the actor is TD3+BC. Defaults follow TD3_BC and Cal-QL (seeds.md section 4) except where a
    comment says why.
    """

    # heads: the trunk is frozen and its readout tokens are cached once per frame (the CPU path);
    # all: the actor's loss also trains the trunk (a trunk pass per batch: the GPU path).
    trainable: Literal["heads", "all"] = "heads"
    success_reward: float = Field(1.0, gt=0.0)  # r_t = success_reward * 1[success at t] - step_cost
    step_cost: float = Field(0.01, ge=0.0)
    gamma: float = Field(0.99, gt=0.0, le=1.0)  # per env step: gamma^j across a chunk prefix
    td_chunk: int = Field(4, ge=1)  # actions the critic scores (<= policy.chunk_len); 1 = one-step TD
    prefix_heads: bool = True  # one Q per prefix j = 1..td_chunk; false: only the full chunk's
    ensemble: int = Field(2, ge=2, le=10)
    critic_hidden: int = Field(256, ge=8)
    critic_lr: float = Field(3e-4, gt=0.0, le=MAX_LR)
    actor_lr: float = Field(1e-4, gt=0.0, le=MAX_LR)
    tau: float = Field(0.005, gt=0.0, le=1.0)  # Polyak rate of the target critic and actor
    policy_delay: int = Field(2, ge=1)  # actor steps once every this many critic steps
    target_noise: float = Field(0.2, ge=0.0)  # TD3 target smoothing, normalised action units
    target_noise_clip: float = Field(0.5, ge=0.0)
    conservative: Literal["calql", "cql", "none"] = "calql"  # calql = CQL with the MC return floor
    cql_alpha: float = Field(5.0, ge=0.0)
    cql_samples: int = Field(4, ge=1)  # random chunks and policy chunks (each) per observation
    cql_temperature: float = Field(1.0, gt=0.0)
    bc_alpha: float = Field(2.5, gt=0.0)  # TD3+BC: weight of Q (normalised by mean |Q|) vs the chunk MSE
    steps: int = Field(6000, ge=1)
    batch_size: int = Field(256, ge=2)
    log_every: int = Field(100, ge=1)
    # The kept weights are the best of validation rollouts every `validate_every` steps (never
    # the critic loss): `validation_episodes` validation configurations per task.
    validate_every: int = Field(1500, ge=1)
    validation_episodes: int = Field(10, ge=1, le=50)
    seed: int = Field(0, ge=0)
    device: str = "cpu"
    num_threads: int = Field(2, ge=1)
    feature_batch_size: int = Field(256, ge=1)  # frames per trunk pass when caching readouts

    _device = field_validator("device")(check_device)

    @model_validator(mode="after")
    def _checks_on_log_steps(self) -> "OfflineConfig":
        if self.validate_every % self.log_every:
            raise ValueError("offline.validate_every must be a multiple of offline.log_every")
        return self


OFFLINE_BASE = "sft-offline"  # the checkpoint every CO-RFT run starts from


class OfflineRunConfig(Section):
    """One CO-RFT run: the `offline` settings with `set` overriding some (an ablation)."""

    set: dict[str, Any] = Field(default_factory=dict)
    test: bool = False  # also evaluated on the test split
    family: str = Field("CO-RFT (offline, chunked TD)", min_length=1)  # the report's row group

    def report_row(self) -> ReportRow:
        # every run starts from CO-RFT's own SFT (dvc.yaml's offline stage) and has no RL curve
        return ReportRow(self.family, OFFLINE_BASE, None)
