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


class EnvConfig(Section):
    """What the policy sees and how episodes run (shared by every stage that steps envs)."""

    suite: Literal["mt10", "custom"] = "mt10"
    tasks: list[str] = Field(default_factory=list)  # used when suite == custom
    instruction_style: Literal["natural", "env_name"] = "natural"
    camera: str = "corner4"
    image_size: int = Field(84, ge=16, le=512)
    max_episode_steps: int = Field(300, ge=1, le=500)  # MetaWorld refuses steps past 500
    reward: Literal["sparse", "dense"] = "sparse"
    step_cost: float = Field(0.0, ge=0.0)  # subtracted every step (sparse reward option)
    terminate_on_success: bool = True
    variation_seed: int = Field(0, ge=0)  # seed of metaworld.MT1(task, seed).train_tasks
    train_variations: int = Field(40, ge=1, le=49)  # first N of 50 are train, rest held out
    num_envs: int = Field(2, ge=1, le=256)  # envs stepped in lockstep, one policy batch
    vector: Literal["sync", "async"] = "async"  # async = one spawned process per env
    render: RenderConfig = RenderConfig()

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, tasks: list[str]) -> list[str]:
        if len(set(tasks)) != len(tasks):
            raise ValueError("tasks must not repeat")
        return tasks

    @model_validator(mode="after")
    def _check_tasks_and_camera(self) -> "EnvConfig":
        from vla_pipeline.envs.tasks import check_camera_name, check_task_names

        if self.suite == "custom":
            if not self.tasks:
                raise ValueError("suite 'custom' needs a non-empty 'tasks' list")
            check_task_names(self.tasks)
        elif self.tasks:
            raise ValueError("'tasks' is only read when suite is 'custom'")
        check_camera_name(self.camera)
        return self


class DemosConfig(Section):
    """Scripted-expert demonstrations (collect_demos stage)."""

    episodes_per_task: int = Field(20, ge=1)
    action_noise: float = Field(0.1, ge=0.0, le=1.0)  # Gaussian std, clipped to [-1, 1]
    seed: int = Field(0, ge=0)
    only_successes: bool = True  # keep only episodes the expert solved
    rows_per_row_group: int = Field(2048, ge=1)


class VisionConfig(Section):
    pretrained: Optional[str] = None  # local path or hub id of a transformers vision model
    embedding_size: int = Field(32, ge=1)
    hidden_sizes: list[int] = Field(default_factory=lambda: [32, 64, 128, 256], min_length=1)
    depths: list[int] = Field(default_factory=lambda: [1, 1, 1, 1], min_length=1)

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
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()

    @model_validator(mode="after")
    def _heads_divide(self) -> "PolicyConfig":
        if self.d_model % self.fusion_heads:
            raise ValueError("d_model must be divisible by fusion_heads")
        if self.text.d_model % self.text.num_heads:
            raise ValueError("text.d_model must be divisible by text.num_heads")
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

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        import re

        if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
            raise ValueError("device must be 'cpu', 'cuda' or 'cuda:N'")
        return device


class EvaluateConfig(Section):
    """The fixed evaluation protocol (ARCHITECTURE section 7)."""

    # Each split must hold episodes: a split with none would vanish from the metrics.
    episodes_heldout: int = Field(10, ge=1)  # per task, on held-out variations
    episodes_seen: int = Field(5, ge=1)  # per task, on train variations
    seed: int = Field(1000, ge=0)
    deterministic: bool = True  # act with the mean of the action head
    videos: int = Field(3, ge=0)  # rollout videos per checkpoint
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
    head_lr: float = Field(3e-5, gt=0.0)  # action head and log-std
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
    # Training episodes: `uniform` round-robin over tasks, or `failures`: tasks drawn in
    # proportion to their recent failure rate (last `task_window` episodes, at least `task_floor`).
    task_sampling: Literal["uniform", "failures"] = "uniform"
    task_floor: float = Field(0.1, gt=0.0, le=1.0)
    task_window: int = Field(20, ge=1)
    # Training horizon (None: env.max_episode_steps). Shorter = more episodes per iteration;
    # evaluation always uses env.max_episode_steps.
    max_episode_steps: Optional[int] = Field(None, ge=1, le=500)
    freeze_backbone: bool = False  # iRe-VLA's RL phase: only heads (and critic) train
    seed: int = Field(0, ge=0)
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

    @model_validator(mode="after")
    def _rounds_chain(self) -> "Params":
        import re

        for name, item in self.rounds.items():
            if not re.match(ROUND_NAME, name) or name in ("sft", "demos", "expert"):
                raise ValueError(f"rounds: bad round name {name!r} (lowercase letters, digits, - and _; "
                                 "not sft/demos/expert)")
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
        return self


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
