"""params.yaml sections of the environment, the demonstrations and the evaluation protocol."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from vla_pipeline.config.base import Section, check_device
from vla_pipeline.metaworld_names import check_camera_name, check_task_names


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


class DemoSubsetConfig(Section):
    """The small demonstration set (subset_demos stage): the first N episodes per task of the
    main demo snapshot. Every method of the small-demo comparison starts from its SFT."""

    episodes_per_task: int = Field(10, ge=1)


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
        check_task_names(list(counts))
        if any(n < 1 for n in counts.values()):
            raise ValueError("episode counts must be >= 1")
        return counts

    def episodes_for(self, task: str) -> int:
        return self.task_episodes.get(task, self.episodes_per_task)



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

    _device = field_validator("device")(check_device)
