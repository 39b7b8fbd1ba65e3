"""Task names, instructions, and the fixed train / held-out split of the 50 variations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vla_pipeline.constants import SPLITS
from vla_pipeline.errors import PipelineError
from vla_pipeline.metaworld_names import check_task_names

if TYPE_CHECKING:
    from vla_pipeline.config import EnvConfig

NUM_VARIATIONS = 50  # MetaWorld pre-samples 50 object/goal configurations per task

MT10 = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)

# Short, one verb each; the colour names the goal marker where it is only a coloured dot.
NATURAL_INSTRUCTIONS = {
    "reach-v3": "reach the red goal",
    "push-v3": "push the puck to the green goal",
    "pick-place-v3": "pick up the puck and place it at the blue goal",
    "door-open-v3": "open the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "peg-insert-side-v3": "insert the peg into the side hole",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}

def instruction_for(task: str, style: str = "natural") -> str:
    if style == "natural" and task in NATURAL_INSTRUCTIONS:
        return NATURAL_INSTRUCTIONS[task]
    return task.removesuffix("-v3").replace("-", " ")


def resolve_tasks(cfg: "EnvConfig") -> list[str]:
    tasks = list(MT10) if cfg.suite == "mt10" else list(cfg.tasks)
    try:
        check_task_names(tasks)
    except ValueError as exc:
        raise PipelineError(str(exc)) from None
    return tasks




@dataclass(frozen=True, order=True)
class Configuration:
    """One object/goal placement: entry `index` of `metaworld.MT1(task, seed=seed).train_tasks`."""

    seed: int
    index: int


def split_configurations(cfg: "EnvConfig", split: str) -> list[Configuration]:
    """Every configuration of a split (per task; the same seeds serve every task)."""
    if split == "train":
        seeds = list(cfg.train_seeds)
    elif split == "validation":
        seeds = [cfg.validation_seed]
    elif split == "test":
        seeds = [cfg.test_seed]
    else:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return [Configuration(seed, i) for seed in seeds for i in range(NUM_VARIATIONS)]


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to run: which task, which configuration, which noise seed, which split."""

    task: str
    variation_seed: int  # MT1 seed of the configuration
    variation: int  # index of the configuration among that seed's 50
    seed: int
    split: str = "train"

    @property
    def configuration(self) -> Configuration:
        return Configuration(self.variation_seed, self.variation)
