"""One pydantic model per `params.yaml` section.

Unknown keys, wrong types and impossible values fail before any work starts, with one
message naming the file and the dotted key. Stages read only their own sections; the CLI
carries paths and names, never hyper-parameters.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vla_pipeline.errors import PipelineError

DEFAULT_PARAMS_FILE = "params.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RenderConfig(Section):
    """MuJoCo visual options. The defaults are the fast CPU settings (env-probe.md 1)."""

    multisampling: bool = False  # 4x MSAA costs ~5x render time on Mesa's CPU EGL
    shadows: bool = False
    reflections: bool = False
    skybox: bool = False


class RayConfig(Section):
    """Env workers as Ray actors (`env.vector: ray`); the policy acts in the stage's process."""

    address: Optional[str] = None  # null: start Ray here (or join RAY_ADDRESS); "auto" / "host:port": a cluster
    envs_per_worker: int = Field(1, ge=1, le=256)  # consecutive envs per actor; num_envs / this = actors
    worker_cpus: float = Field(1.0, gt=0.0, le=256.0)  # CPUs Ray reserves per actor (placement only)


class EnvConfig(Section):
    """What the policy sees and how episodes run (shared by every stage that steps envs).

    Configurations (object/goal placements) come from `metaworld.MT1(task, seed=S)`, 50 per
    seed: `train_seeds` feed demos and RL, `validation_seed` is for choosing settings, and
    `test_seed` is touched only for reported numbers.
    """

    suite: Literal["mt10", "custom"] = "mt10"
    tasks: list[str] = Field(default_factory=list)  # used when suite == custom
    instruction_style: Literal["natural", "env_name"] = "natural"
    cameras: list[str] = Field(default_factory=lambda: ["corner4"], min_length=1)  # one image column each
    image_size: int = Field(84, ge=16, le=512)
    # Vertical field of view per camera, degrees (absent: MuJoCo's; corner4 has 60). A narrower
    # view spends the same pixels on the workspace: at 45 the goal marker covers ~2x the pixels.
    camera_fovy: dict[str, float] = Field(default_factory=dict)
    max_episode_steps: int = Field(300, ge=1, le=500)  # MetaWorld refuses steps past 500
    reward: Literal["sparse", "dense"] = "sparse"
    step_cost: float = Field(0.0, ge=0.0)  # subtracted every step (sparse reward option)
    terminate_on_success: bool = True
    train_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # 50 configurations each
    validation_seed: int = Field(1234, ge=0)
    test_seed: int = Field(4242, ge=0)
    num_envs: int = Field(2, ge=1, le=256)  # envs stepped in lockstep, one policy batch
    vector: Literal["sync", "async", "ray"] = "async"  # async = one spawned process per env; ray: actors
    ray: RayConfig = RayConfig()
    render: RenderConfig = RenderConfig()

    @field_validator("tasks", "cameras")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("entries must not repeat")
        return values

    @field_validator("train_seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError("train seeds must be distinct and >= 0")
        return seeds

    @model_validator(mode="after")
    def _check_tasks_cameras_splits(self) -> "EnvConfig":
        from vla_pipeline.envs.tasks import check_camera_name, check_task_names

        if self.suite == "custom":
            if not self.tasks:
                raise ValueError("suite 'custom' needs a non-empty 'tasks' list")
            check_task_names(self.tasks)
        elif self.tasks:
            raise ValueError("'tasks' is only read when suite is 'custom'")
        for camera in self.cameras:
            check_camera_name(camera)
        for camera, fovy in self.camera_fovy.items():
            if camera not in self.cameras:
                raise ValueError(f"camera_fovy names {camera!r}, which is not in env.cameras {self.cameras}")
            if not 5.0 <= fovy <= 150.0:
                raise ValueError(f"camera_fovy.{camera} = {fovy}: a field of view must lie in 5..150 degrees")
        # The three splits must not share a seed: a shared seed shares all 50 configurations.
        if self.validation_seed == self.test_seed:
            raise ValueError("env.validation_seed and env.test_seed must differ")
        for name in ("validation_seed", "test_seed"):
            if getattr(self, name) in self.train_seeds:
                raise ValueError(f"env.{name} {getattr(self, name)} is also a train seed")
        return self


class DemosConfig(Section):
    """Scripted-expert demonstrations (collect_demos stage), spread over the train configurations."""

    episodes_per_task: int = Field(20, ge=1)
    task_episodes: dict[str, int] = Field(default_factory=dict)  # per-task overrides of episodes_per_task
    frame_every: int = Field(1, ge=1)  # render a frame every N steps (each frame is one SFT sample)
    action_noise: float = Field(0.1, ge=0.0, le=1.0)  # Gaussian std, clipped to [-1, 1]
    seed: int = Field(0, ge=0)
    # metaworld: MetaWorld's scripts | direct: the same with shorter approach paths (envs/experts.py)
    expert: Literal["metaworld", "direct"] = "metaworld"
    only_successes: bool = True  # keep only episodes the expert solved
    rows_per_row_group: int = Field(2048, ge=1)

    @field_validator("task_episodes")
    @classmethod
    def _counts(cls, counts: dict[str, int]) -> dict[str, int]:
        from vla_pipeline.envs.tasks import check_task_names

        check_task_names(list(counts))
        if any(n < 1 for n in counts.values()):
            raise ValueError("episode counts must be >= 1")
        return counts

    def episodes_for(self, task: str) -> int:
        return self.task_episodes.get(task, self.episodes_per_task)


class VisionConfig(Section):
    pretrained: Optional[str] = None  # local path or hub id of a transformers vision model
    embedding_size: int = Field(32, ge=1)
    hidden_sizes: list[int] = Field(default_factory=lambda: [32, 64, 128, 256], min_length=1)
    depths: list[int] = Field(default_factory=lambda: [1, 1, 1, 1], min_length=1)
    coord_channels: bool = False  # append x/y coordinate planes to the pixels (CoordConv)
    # What the fusion gets per camera: the last feature map as a grid of tokens, or
    # spatial-softmax keypoints (expected x/y of `keypoints` learned feature maps, robomimic-style).
    tokens: Literal["grid", "keypoints"] = "grid"
    keypoints: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _same_length(self) -> "VisionConfig":
        if len(self.hidden_sizes) != len(self.depths):
            raise ValueError("hidden_sizes and depths must have the same length")
        if min(self.hidden_sizes) < 1 or min(self.depths) < 1:
            raise ValueError("hidden_sizes and depths must be positive")
        return self


class TextConfig(Section):
    pretrained: Optional[str] = None  # local path or hub id of a T5-style encoder
    d_model: int = Field(64, ge=8)
    num_layers: int = Field(1, ge=1)
    num_heads: int = Field(4, ge=1)
    max_length: int = Field(48, ge=4)
    tokens: Literal["pooled", "all"] = "pooled"  # fuse one pooled token or every byte token
    freeze: bool = False


class PolicyConfig(Section):
    """The VLA's shape: what `VLAConfig` is built from."""

    chunk_len: int = Field(4, ge=1, le=64)
    d_model: int = Field(128, ge=8)
    fusion_layers: int = Field(2, ge=1)
    fusion_heads: int = Field(4, ge=1)
    fusion_ff: int = Field(256, ge=8)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    init_log_std: float = Field(math.log(0.25), ge=-10, le=2)
    value_stop_gradient: bool = True  # critic does not train the shared trunk
    # Diagnosis only, never a default: append the object and goal xyz from MetaWorld's state
    # to the proprio input (PRIVILEGED). Separates "cannot see the goal" from "cannot act".
    privileged_state: bool = False
    # Auxiliary target (not an input): weight of an MSE loss on the object and goal xyz, predicted
    # from the fused tokens by an extra readout, in every cloning loss (SFT, self-BC). 0 = no head.
    aux_state_weight: float = Field(0.0, ge=0.0)
    # The action readout also gets the aux head's object/goal estimate and the proprio (a small
    # MLP added to the action token). Still pixels only at run time; needs aux_state_weight > 0.
    act_on_estimate: bool = False
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()

    @model_validator(mode="after")
    def _heads_divide(self) -> "PolicyConfig":
        if self.d_model % self.fusion_heads:
            raise ValueError("d_model must be divisible by fusion_heads")
        if self.text.d_model % self.text.num_heads:
            raise ValueError("text.d_model must be divisible by text.num_heads")
        if self.act_on_estimate and self.aux_state_weight <= 0:
            raise ValueError("act_on_estimate acts on the aux head's estimate: set aux_state_weight > 0")
        return self


class SFTConfig(Section):
    """Supervised warm start on the demo snapshot."""

    steps: int = Field(3000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-4, gt=0.0)
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
    # place of the last iterate; its decay warms up over the first steps (vla_pipeline.sft).
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        import re

        if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
            raise ValueError("device must be 'cpu', 'cuda' or 'cuda:N'")
        return device

    @field_validator("task_weights")
    @classmethod
    def _task_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        from vla_pipeline.envs.tasks import check_task_names

        check_task_names(list(weights))
        if any(not math.isfinite(w) or w <= 0 for w in weights.values()):
            raise ValueError("task weights must be positive")
        return weights

    @model_validator(mode="after")
    def _validation_on_log_steps(self) -> "SFTConfig":
        if self.validate_every and self.validate_every % self.log_every:
            raise ValueError("sft.validate_every must be a multiple of sft.log_every (one curve row per check)")
        return self


class EvaluateConfig(Section):
    """The fixed evaluation protocol (ARCHITECTURE section 7): one list of episodes per split.

    Each split draws distinct configurations of its seed (`env.test_seed`, `env.validation_seed`,
    and the train seeds), so at most 50 per task for test and validation.
    """

    episodes_test: int = Field(30, ge=1, le=50)  # per task, MT1(task, env.test_seed)
    episodes_validation: int = Field(20, ge=1, le=50)  # per task, MT1(task, env.validation_seed)
    episodes_train: int = Field(5, ge=1)  # per task, configurations the demos and RL drew from
    seed: int = Field(1000, ge=0)
    deterministic: bool = True  # act with the mean of the action head
    # Videos of the first evaluated split: per task, this many successes and this many failures.
    videos_per_outcome: int = Field(1, ge=0)
    video_scale: int = Field(3, ge=1, le=8)
    num_threads: int = Field(2, ge=1)
    device: str = "cpu"

    _device = field_validator("device")(SFTConfig._device.__func__)


class PPOConfig(Section):
    """Action-chunked PPO: one decision = one chunk of K actions (ARCHITECTURE section 6)."""

    iterations: int = Field(8, ge=1)  # PPO iterations per DVC round
    decisions_per_iteration: int = Field(256, ge=1)  # across all envs
    epochs: int = Field(4, ge=1)
    minibatch_size: int = Field(64, ge=2)
    lr: float = Field(1e-5, gt=0.0)  # trunk (vision, text, fusion)
    head_lr: float = Field(3e-5, gt=0.0)  # action head (and the log-std when log_std_lr is null)
    # The exploration spread's own rate: at head_lr it moves < 0.01 in a round, i.e. stays fixed.
    log_std_lr: Optional[float] = Field(None, gt=0.0)
    value_lr: float = Field(1e-3, gt=0.0)
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
    freeze_backbone: bool = False  # iRe-VLA's RL phase: only heads (and critic) train
    # Weight of the clipped PPO policy term; 0 keeps the same rollouts and self-BC but drops PPO
    # (the ablation that shows what PPO itself adds).
    policy_coef: float = Field(1.0, ge=0.0)
    seed: int = Field(0, ge=0)  # each round draws its own streams from (seed, round name)
    device: str = "cpu"
    num_threads: int = Field(2, ge=1)
    max_skipped_batches: int = Field(0, ge=0)

    _device = field_validator("device")(SFTConfig._device.__func__)

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


class RoundConfig(Section):
    policy_in: str  # "sft" or an earlier round
    buffer_in: str  # "demos" or an earlier round
    test: bool = False  # also evaluate on the test split (the final round); else validation only


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
    sl_lr: float = Field(1e-4, gt=0.0)
    sl_warmup_steps: int = Field(50, ge=0)
    sl_batch_size: int = Field(64, ge=2)
    sl_rl_fraction: float = Field(0.5, ge=0.0, le=1.0)
    seed: int = Field(0, ge=0)  # each round draws its own streams from (seed, round name)
    # The paper's groups, on train configurations: `expert` (with a demo: the forgetting check)
    # and `new` (without one: seen only by RL), this many episodes per task each.
    episodes_per_group: int = Field(10, ge=1)
    # Other checkpoints evaluated on the same groups (the comparison rows): sft and ACPPO rounds.
    baselines: list[str] = Field(default_factory=lambda: ["sft"])


IRE_KINDS = ("rl", "sl", "ppo")


class IreRoundConfig(Section):
    # rl: PPO with the trunk frozen, no BC; sl: supervised on demos + D_RL; ppo: the unfrozen baseline
    kind: Literal["rl", "sl", "ppo"]
    policy_in: str  # "sft" or an earlier iRe-VLA round
    buffer_in: str  # an earlier iRe-VLA round's D_RL; "demos" starts an empty D_RL (rl / ppo only)
    test: bool = False  # also evaluate on the test split (a chain's final round)


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
    critic_lr: float = Field(3e-4, gt=0.0)
    actor_lr: float = Field(1e-4, gt=0.0)
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

    _device = field_validator("device")(SFTConfig._device.__func__)

    @model_validator(mode="after")
    def _checks_on_log_steps(self) -> "OfflineConfig":
        if self.validate_every % self.log_every:
            raise ValueError("offline.validate_every must be a multiple of offline.log_every")
        return self


class OfflineRunConfig(Section):
    """One CO-RFT run: the `offline` settings with `set` overriding some (an ablation)."""

    set: dict[str, Any] = Field(default_factory=dict)
    test: bool = False  # also evaluated on the test split


SECTIONS: dict[str, type[Section]] = {
    "env": EnvConfig,
    "demos": DemosConfig,
    "policy": PolicyConfig,
    "sft": SFTConfig,
    "evaluate": EvaluateConfig,
    "ppo": PPOConfig,
    "bc": BCConfig,
    "buffer": BufferConfig,
    "rounds": RoundConfig,  # a mapping of round name -> RoundConfig
    "ire": IreConfig,
    "ire_rounds": IreRoundConfig,  # a mapping of round name -> IreRoundConfig
    "offline_demos": DemosConfig,  # CO-RFT's small demo set
    "offline": OfflineConfig,
    "offline_runs": OfflineRunConfig,  # a mapping of run name -> OfflineRunConfig
    "sft_offline": SFTConfig,  # keys of `sft` replaced for CO-RFT's imitation step
}

ROUND_NAME = r"^[a-z0-9][a-z0-9_-]*$"


class Params(BaseModel):
    """The whole params file, validated at once so a typo anywhere is caught early."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    env: EnvConfig = EnvConfig()
    demos: DemosConfig = DemosConfig()
    policy: PolicyConfig = PolicyConfig()
    sft: SFTConfig = SFTConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    ppo: PPOConfig = PPOConfig()
    bc: BCConfig = BCConfig()
    buffer: BufferConfig = BufferConfig()
    rounds: dict[str, RoundConfig] = Field(default_factory=dict)
    ire: IreConfig = IreConfig()
    ire_rounds: dict[str, IreRoundConfig] = Field(default_factory=dict)
    offline_demos: DemosConfig = DemosConfig(episodes_per_task=50, frame_every=1, seed=1)
    offline: OfflineConfig = OfflineConfig()
    offline_runs: dict[str, OfflineRunConfig] = Field(default_factory=dict)
    # CO-RFT's imitation step: keys of `sft` it sets otherwise (a small demo set wants other
    # regularisation than the main one); {} = the `sft` recipe unchanged.
    sft_offline: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _rounds_chain(self) -> "Params":
        import re

        for name, item in self.rounds.items():
            if not re.match(ROUND_NAME, name) or name in ("sft", "demos", "expert"):
                raise ValueError(f"rounds: bad round name {name!r} (lowercase letters, digits, - and _; "
                                 "not sft/demos/expert)")
            if item.policy_in in self.ire_rounds or item.buffer_in in self.ire_rounds:
                raise ValueError(f"rounds.{name}: an ACPPO round starts from sft / demos or an ACPPO round, "
                                 "not from an iRe-VLA round")
            if item.policy_in != "sft" and item.policy_in not in self.rounds:
                raise ValueError(f"rounds.{name}.policy_in: no round or checkpoint named {item.policy_in!r}")
            if item.buffer_in != "demos" and item.buffer_in not in self.rounds:
                raise ValueError(f"rounds.{name}.buffer_in: no round or snapshot named {item.buffer_in!r}")
        for name in self.rounds:  # follow predecessors: a cycle never reaches sft/demos
            seen, current = set(), name
            while current in self.rounds:
                if current in seen:
                    raise ValueError(f"rounds: round {name!r} is part of a predecessor cycle")
                seen.add(current)
                current = self.rounds[current].policy_in
        self._ire_chain()
        self._offline_runs()
        _with_overrides(self.sft, self.sft_offline, "sft_offline", "sft")
        return self

    def offline_run(self, name: str) -> OfflineConfig:
        """The `offline` settings of run `name` (its `set` applied)."""
        if name not in self.offline_runs:
            raise PipelineError(f"unknown CO-RFT run {name!r}; params.yaml offline_runs has {sorted(self.offline_runs)}")
        return _with_overrides(self.offline, self.offline_runs[name].set, f"offline_runs.{name}.set", "offline")

    def sft_recipe(self, name: str = "sft") -> SFTConfig:
        """The SFT settings of recipe `name`: `sft`, or `sft_offline` (CO-RFT's imitation step on
        its small demo set: `sft` with the keys `sft_offline` names replaced)."""
        if name == "sft":
            return self.sft
        if name == "sft_offline":
            return _with_overrides(self.sft, self.sft_offline, "sft_offline", "sft")
        raise PipelineError(f"unknown SFT recipe {name!r}; expected 'sft' or 'sft_offline'")

    def _offline_runs(self) -> None:
        import re

        if self.offline.td_chunk > self.policy.chunk_len:
            raise ValueError(f"offline.td_chunk ({self.offline.td_chunk}) is longer than the policy's chunk "
                             f"(policy.chunk_len {self.policy.chunk_len})")
        for name, item in self.offline_runs.items():
            if not re.match(ROUND_NAME, name) or name in ("sft", "demos", "expert") \
                    or name in self.rounds or name in self.ire_rounds:
                raise ValueError(f"offline_runs: bad run name {name!r} (lowercase letters, digits, - and _; "
                                 "not sft/demos/expert nor a round's name)")
            merged = _with_overrides(self.offline, item.set, f"offline_runs.{name}.set", "offline")
            if merged.td_chunk > self.policy.chunk_len:
                raise ValueError(f"offline_runs.{name}.set.td_chunk ({merged.td_chunk}) is longer than the "
                                 f"policy's chunk (policy.chunk_len {self.policy.chunk_len})")

    def _ire_chain(self) -> None:
        """iRe-VLA rounds: names apart from ACPPO's, predecessors earlier in the list, kinds that fit."""
        import re

        names = list(self.ire_rounds)
        for i, (name, item) in enumerate(self.ire_rounds.items()):
            where = f"ire_rounds.{name}"
            if not re.match(ROUND_NAME, name) or name in ("sft", "demos", "expert") or name in self.rounds:
                raise ValueError(f"ire_rounds: bad round name {name!r} (lowercase letters, digits, - and _; "
                                 "not sft/demos/expert nor an ACPPO round's name)")
            if item.policy_in != "sft" and item.policy_in not in names[:i]:
                raise ValueError(f"{where}.policy_in: {item.policy_in!r} is neither sft nor an iRe-VLA round "
                                 "listed before it")
            if item.buffer_in != "demos" and item.buffer_in not in names[:i]:
                raise ValueError(f"{where}.buffer_in: {item.buffer_in!r} is neither demos nor an iRe-VLA round "
                                 "listed before it")
            if item.kind == "sl" and item.buffer_in == "demos":
                raise ValueError(f"{where}: an sl round learns from the demos plus an RL round's successes; "
                                 "buffer_in must name an iRe-VLA round (its D_RL), not 'demos'")
        unknown = [b for b in self.ire.baselines if b != "sft" and b not in self.rounds]
        if unknown:
            raise ValueError(f"ire.baselines: {unknown} are neither sft nor ACPPO rounds")


def _with_overrides(base: Section, overrides: dict[str, Any], where: str, kind: str) -> Section:
    """`base` with the keys of `overrides` replaced, validated as a whole; errors name `where`.<key>."""
    model = type(base)
    unknown = sorted(set(overrides) - set(model.model_fields))
    if unknown:
        raise ValueError(f"{where}: unknown {kind} keys {unknown}")
    try:
        return model.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}.{key}: {first['msg']} (got {first.get('input')!r})") from None


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at `loc` (for 'did you mean' hints)."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}))


def _format_error(err: dict, source: str) -> str:
    loc = tuple(p for p in err["loc"] if isinstance(p, (str, int)))
    key = ".".join(str(p) for p in loc) or "<top level>"
    if err["type"] == "extra_forbidden":
        hint = difflib.get_close_matches(str(loc[-1]), _known_keys(Params, loc), n=1)
        extra = f" (did you mean '{'.'.join(map(str, loc[:-1] + (hint[0],)))}'?)" if hint else ""
        return f"{source}: unknown key '{key}'{extra}"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # a check across sections: the message names its keys itself
        return f"{source}: {msg}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{source}: {key}: {msg}{shown}"


def parse_params(raw: Any, source: str = DEFAULT_PARAMS_FILE) -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PipelineError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(e, source) for e in exc.errors()]
        raise PipelineError("invalid parameters:\n  " + "\n  ".join(lines)) from None


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(f"params file not found: {path}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, source=str(path))
