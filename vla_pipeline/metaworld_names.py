"""MetaWorld's task and camera names as plain data, and the checks of names in params.yaml.

Validating params.yaml needs only these names, so it does not import MetaWorld (or MuJoCo).
`tests/test_envs.py` checks that `METAWORLD_TASKS` is MetaWorld's own list.
"""

from __future__ import annotations

import difflib
from typing import Sequence

# `metaworld.env_dict.ALL_V3_ENVIRONMENTS`, in its order.
METAWORLD_TASKS = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3", "coffee-button-v3", "coffee-pull-v3",
    "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-lock-v3", "door-open-v3",
    "door-unlock-v3", "hand-insert-v3", "drawer-close-v3", "drawer-open-v3", "faucet-open-v3", "faucet-close-v3",
    "hammer-v3", "handle-press-side-v3", "handle-press-v3", "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3",
    "pick-place-wall-v3", "pick-out-of-hole-v3", "pick-place-v3", "plate-slide-v3", "plate-slide-side-v3",
    "plate-slide-back-v3", "plate-slide-back-side-v3", "peg-insert-side-v3", "peg-unplug-side-v3", "soccer-v3",
    "stick-push-v3", "stick-pull-v3", "push-v3", "push-wall-v3", "push-back-v3", "reach-v3", "reach-wall-v3",
    "shelf-place-v3", "sweep-into-v3", "sweep-v3", "window-open-v3", "window-close-v3",
)

CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
# These cameras' "up" axis points down in the world: frames must be rotated by 180 degrees.
ROTATED_CAMERAS = frozenset({"corner", "corner2", "corner3", "corner4"})


def all_task_names() -> list[str]:
    return list(METAWORLD_TASKS)


def check_task_names(tasks: Sequence[str]) -> None:
    known = all_task_names()
    for task in tasks:
        if task not in known:
            hint = difflib.get_close_matches(task, known, n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ValueError(f"unknown MetaWorld task '{task}'{suggestion}")


def check_camera_name(camera: str) -> None:
    # A misspelled name can silently fall back to another camera: refuse it here.
    if camera not in CAMERAS:
        raise ValueError(f"unknown camera '{camera}'; choose one of {', '.join(CAMERAS)}")
