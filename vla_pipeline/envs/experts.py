"""MetaWorld's scripted experts as demonstrators and as the evaluation ceiling.

`demos.expert` picks the demonstrator: `metaworld` (MetaWorld's own scripts) or `direct`:
the same scripts with their approach paths shortened (README, "Steps to success"). MetaWorld's
experts rise 20-50 cm above a handle before dropping onto it and slow down long before
reaching the goal; the hand moves at most ~1 cm per step and axis, so those detours, not
the action limit, set most of their step counts. A `direct` expert keeps each script's
phases and switching thresholds and changes only the hover heights and gains, per task;
tasks without a shortened plan fall back to MetaWorld's script.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from vla_pipeline.data.episode import Episode, encode_views
from vla_pipeline.envs.sim import TaskSim
from vla_pipeline.envs.tasks import EpisodeSpec

EXPERT_KINDS = ("metaworld", "direct")

# A plan maps the parsed observation to (target xyz, proportional gain, gripper effort).
Plan = Callable[[dict], tuple[np.ndarray, float, float]]


def _above(pos, height: float) -> np.ndarray:
    return np.asarray(pos, dtype=np.float64) + np.array([0.0, 0.0, height])


REACH_GAIN = 10.0  # 25 reached sooner (30 steps) but its SFT lost reach (0.60 vs 0.85 on validation)


def _reach(o: dict):
    return o["goal_pos"], REACH_GAIN, 0.0  # MetaWorld: gain 5, which slows down from 20 cm before the goal


def _push(o: dict):
    """MetaWorld's push with the approach at gain 25 (10): over the puck, down, then to the goal."""
    hand, puck = o["hand_pos"], o["puck_pos"] + np.array([-0.005, 0.0, 0.0])
    near = np.linalg.norm(hand[:2] - o["puck_pos"][:2]) <= 0.02 and abs(hand[2] - o["puck_pos"][2]) <= 0.10
    effort = 0.6 if near else 0.0
    if np.linalg.norm(hand[:2] - puck[:2]) > 0.02:
        return _above(puck, 0.2), 25.0, effort
    if abs(hand[2] - puck[2]) > 0.04:
        return _above(puck, 0.03), 10.0, effort
    return o["goal_pos"], 10.0, effort


def _pick_place(o: dict):
    """Over the puck at 6 cm (MetaWorld: 10) and gain 25 (10), down, grasp, carry at gain 25 (10)."""
    hand, puck = o["hand_pos"], o["puck_pos"] + np.array([-0.005, 0.0, 0.0])
    effort = 1.0 if np.linalg.norm(hand - o["puck_pos"]) < 0.07 else 0.0
    if np.linalg.norm(hand[:2] - puck[:2]) > 0.02:
        return _above(puck, 0.06), 25.0, effort
    if abs(hand[2] - puck[2]) > 0.05 and puck[-1] < 0.04:
        return _above(puck, 0.03), 10.0, effort
    if o["gripper_distance_apart"] > 0.73:
        return hand, 10.0, effort  # wait for the fingers to close
    return o["goal_pos"], 25.0, effort


def _window(push_x: float, side: float) -> Plan:
    """window-open / -close: MetaWorld hovers 0.3 / 0.25 m above the handle; 0.06 m clears it."""
    def plan(o: dict):
        hand, handle = o["hand_pos"], o["wndw_pos"] + np.array([side, -0.03, -0.08])
        if np.linalg.norm(hand[:2] - handle[:2]) > 0.04:
            return _above(handle, 0.06), 25.0, 1.0
        if abs(hand[2] - handle[2]) > 0.02:
            return handle, 25.0, 1.0
        return handle + np.array([push_x, 0.0, 0.0]), 25.0, 1.0
    return plan


def _drawer_open(o: dict):
    """MetaWorld hovers 0.3 m above the handle at gain 4; 0.1 m at gain 12 is enough."""
    hand, handle = o["hand_pos"], o["drwr_pos"] + np.array([0.0, 0.0, -0.02])
    if np.linalg.norm(hand[:2] - handle[:2]) > 0.06:
        return _above(handle, 0.1), 12.0, -1.0
    if abs(hand[2] - handle[2]) > 0.04:
        return handle, 12.0, -1.0
    return handle + np.array([0.0, -0.06, 0.0]), 50.0, -1.0


def _drawer_close(o: dict):
    """Straight at the handle at gain 50: the hand lands on it and pushes the drawer shut (frames
    looked at). MetaWorld first rises 0.5 m to come at the handle from the robot's side; straight
    at gain 25 the hand stalls on the handle (2 of 20 validation placements solved)."""
    return o["drwr_pos"] + np.array([0.0, 0.0, -0.02]), 50.0, 1.0


def _button_topdown(o: dict):
    hand, button = o["hand_pos"], o["button_pos"]
    if np.linalg.norm(hand[:2] - button[:2]) > 0.04:
        return _above(button, 0.05), 25.0, 1.0  # MetaWorld: 0.1 m
    return button, 25.0, 1.0


def _peg_insert_side(o: dict):
    hand, peg = o["hand_pos"], o["peg_pos"]
    hole = np.array([-0.35, o["goal_pos"][1], 0.16])
    far = np.linalg.norm(hand[:2] - peg[:2]) > 0.04 or abs(hand[2] - peg[2]) > 0.15
    effort = -1.0 if far else 0.6
    if np.linalg.norm(hand[:2] - peg[:2]) > 0.04:
        return _above(peg, 0.1), 25.0, effort  # MetaWorld: 0.3 m
    if abs(hand[2] - peg[2]) > 0.025:
        return peg, 25.0, effort
    if np.linalg.norm(peg[1:] - hole[1:]) > 0.03:
        return hole + np.array([0.4, 0.0, 0.0]), 25.0, effort
    return hole, 25.0, effort


DIRECT_PLANS: dict[str, Plan] = {
    "reach-v3": _reach,
    "push-v3": _push,
    "pick-place-v3": _pick_place,
    "drawer-open-v3": _drawer_open,
    "drawer-close-v3": _drawer_close,
    "button-press-topdown-v3": _button_topdown,
    "peg-insert-side-v3": _peg_insert_side,
    "window-open-v3": _window(push_x=0.1, side=-0.03),
    "window-close-v3": _window(push_x=-0.1, side=0.03),
}  # door-open-v3: a lower hover catches the door's edge (0.95 at 0.1 m, 0 at 0.06): MetaWorld's


class DirectExpert:
    """A MetaWorld script's observation parsing with a shortened plan (module docstring)."""

    def __init__(self, metaworld_policy, plan: Plan):
        from metaworld.policies.policy import move

        self._parse = metaworld_policy._parse_obs
        self._plan = plan
        self._move = move  # imported once here, not on every step

    def get_action(self, obs: np.ndarray) -> np.ndarray:
        o = self._parse(obs)
        target, gain, effort = self._plan(o)
        return np.append(self._move(o["hand_pos"], np.asarray(target, dtype=np.float64), p=gain), effort)


def make_expert(task: str, kind: str = "metaworld"):
    import warnings

    # MetaWorld warns that its own gains saturate; the env clips actions anyway.
    warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high", category=UserWarning)
    from metaworld.policies import ENV_POLICY_MAP

    if kind not in EXPERT_KINDS:
        raise ValueError(f"unknown expert {kind!r} (known: {', '.join(EXPERT_KINDS)})")
    if task not in ENV_POLICY_MAP:
        raise KeyError(f"MetaWorld has no scripted expert for {task}")
    policy = ENV_POLICY_MAP[task]()
    if kind == "direct" and task in DIRECT_PLANS:
        return DirectExpert(policy, DIRECT_PLANS[task])
    return policy


def run_expert_episode(sim: TaskSim, spec: EpisodeSpec, action_noise: float, frame_every: int | None,
                       instruction: str = "", source: str = "expert", expert: str = "metaworld") -> Episode:
    """One scripted-expert episode; Gaussian action noise (clipped) widens the demo states.

    `frame_every`: render (and PNG-encode) the cameras every N steps, starting at step 0;
    None renders nothing (the evaluation ceiling needs no pixels). `expert`: `demos.expert`.
    """
    policy = make_expert(spec.task, expert)
    rng = np.random.default_rng(spec.seed)
    state = sim.reset(spec.variation_seed, spec.variation)
    episode = Episode(spec.task, spec.variation_seed, spec.variation, instruction, source)
    while True:
        frames = ()
        if frame_every is not None and sim.t % frame_every == 0:
            frames = encode_views(sim.render())
        proprio, state_vector = sim.proprio(), sim.state_vector()
        action = np.asarray(policy.get_action(state), dtype=np.float64)
        if action_noise > 0:
            action = action + rng.normal(0.0, action_noise, size=action.shape)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        out = sim.step(action)
        episode.add_step(frames, proprio, state_vector, action, out.reward, out.success)
        state = out.state
        if out.terminated or out.truncated:
            return episode.finish(out.terminated, out.truncated)
