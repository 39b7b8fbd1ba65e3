import math

import mujoco
import numpy as np
import pytest

from vla_pipeline.config import EnvConfig
from vla_pipeline.config import EvaluateConfig
from vla_pipeline.envs.chunk_env import ChunkEnv, EpisodeQueue, execute_chunk
from vla_pipeline.envs.experts import make_expert
from vla_pipeline.envs.rendering import BlackFrameError
from vla_pipeline.envs.sim import TaskSim
from vla_pipeline.envs.tasks import EpisodeSpec, split_configurations
from vla_pipeline.evaluation import evaluation_episodes
from vla_pipeline.metaworld_names import CAMERAS, METAWORLD_TASKS

ENV = EnvConfig(suite="custom", tasks=["reach-v3", "drawer-close-v3"], image_size=64, max_episode_steps=150,
                vector="sync", num_envs=1)


def expert_steps_until_success(task: str, variation: int) -> list[np.ndarray]:
    """Expert actions of one episode up to and including its first success."""
    sim = TaskSim(task, ENV, render=False)
    expert, state, actions = make_expert(task), sim.reset(0, variation), []
    while True:
        actions.append(np.clip(expert.get_action(state), -1, 1))
        out = sim.step(actions[-1])
        state = out.state
        if out.success or out.truncated:
            sim.close()
            assert out.success
            return actions


def world_up_reference(sim: TaskSim, camera: str) -> np.ndarray:
    """The same view from MuJoCo's free camera, which is always upright (its up axis is world z).

    Placed at the fixed camera's position, looking along its axis, with its field of view.
    Straight-down cameras (topview, gripperPOV) have no world up: there the convention is
    "away from the robot (+y) is up, +x is right", i.e. the robot base at the bottom of
    topview (checked by eye on saved frames).
    """
    model, data = sim.env.model, sim.env.data
    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    forward = -data.cam_xmat[cam].reshape(3, 3)[:, 2]
    horizontal = math.hypot(forward[0], forward[1])
    free = mujoco.MjvCamera()
    free.type = mujoco.mjtCamera.mjCAMERA_FREE
    free.azimuth = math.degrees(math.atan2(forward[1], forward[0])) if horizontal > 1e-3 else 90.0
    free.elevation = math.degrees(math.atan2(forward[2], horizontal))
    free.distance = 1.0
    free.lookat[:] = data.cam_xpos[cam] + forward
    fovy = model.vis.global_.fovy
    model.vis.global_.fovy = model.cam_fovy[cam]
    renderer = mujoco.Renderer(model, ENV.image_size, ENV.image_size)
    try:
        flags = mujoco.mjtRndFlag
        for flag in (flags.mjRND_SHADOW, flags.mjRND_REFLECTION, flags.mjRND_SKYBOX):  # as FrameRenderer
            renderer.scene.flags[flag] = 0
        renderer._gl_context.make_current()
        renderer.update_scene(data, camera=free)
        return renderer.render().copy()
    finally:
        renderer.close()
        model.vis.global_.fovy = fovy


def test_the_plain_task_list_is_metaworlds_own():
    """`metaworld_names` spells out MetaWorld's task list so that validating params does not
    import MetaWorld; it must stay the installed MetaWorld's list, in its order."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    assert list(METAWORLD_TASKS) == list(ALL_V3_ENVIRONMENTS)


@pytest.mark.parametrize("camera", CAMERAS)
def test_camera_frames_are_right_way_up_and_not_mirrored(camera):
    """The env's frame must match the upright reference better than any flip or rotation of it.

    Compared on 8x8-pixel block means: the corner cameras are rolled a few degrees off world
    up (corner3 ~8), which the reference cannot reproduce; flips and rotations still lose by far.
    """
    sim = TaskSim("reach-v3", ENV.model_copy(update={"cameras": [camera]}))
    sim.reset(0, 0)
    frame = sim.render()[0].astype(np.float64)
    reference = world_up_reference(sim, camera).astype(np.float64)
    sim.close()
    assert frame.mean() > 10  # not black
    n = ENV.image_size // 8
    blocks = lambda image: image.reshape(n, 8, n, 8, 3).mean((1, 3))  # noqa: E731
    error = lambda image: float(((blocks(image) - blocks(reference)) ** 2).mean())  # noqa: E731
    wrong = {"vertical mirror": frame[::-1], "horizontal mirror": frame[:, ::-1],
             "rotated 180": frame[::-1, ::-1], "rotated 90": np.rot90(frame), "rotated 270": np.rot90(frame, 3)}
    worst_wrong = min(wrong, key=lambda name: error(wrong[name]))
    assert error(frame) < 0.5 * error(wrong[worst_wrong]), (
        f"{camera}: frame error {error(frame):.0f} vs {worst_wrong} {error(wrong[worst_wrong]):.0f}")


def test_two_envs_in_one_process_both_render_non_black_frames():
    first = TaskSim("reach-v3", ENV)
    first.reset(0, 0)
    second = TaskSim("drawer-close-v3", ENV)
    second.reset(0, 0)
    a = second.render()
    first.close()  # freeing one renderer must not blank the other (env-probe 2b)
    del first
    b = second.render()
    second.close()
    assert a.mean() > 10 and b.mean() > 10


def test_black_frames_are_refused(monkeypatch):
    sim = TaskSim("reach-v3", ENV)
    sim.reset(0, 0)
    monkeypatch.setattr(sim.renderer._renderer, "render", lambda: np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(BlackFrameError):
        sim.render()
    sim.close()


def test_variation_fixes_the_initial_state_and_reset_seed_does_not_matter():
    sim = TaskSim("reach-v3", ENV, render=False)
    a, b, c, d = sim.reset(0, 3), sim.reset(0, 3), sim.reset(0, 4), sim.reset(1, 3)
    sim.close()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, d)  # another index or another MT1 seed


def test_chunk_stops_early_on_success_and_discounts_reward():
    actions = expert_steps_until_success("reach-v3", 0)
    k, n_before = 8, len(actions) - 3  # success lands on the 3rd action of the last chunk
    sim = TaskSim("reach-v3", ENV, render=False)
    sim.reset(0, 0)
    for action in actions[:n_before]:
        assert not sim.step(action).success
    chunk = np.stack(actions[n_before:] + [np.zeros(4)] * (k - 3))
    result = execute_chunk(sim, chunk, gamma=0.9)
    sim.close()
    assert result.steps == 3 and result.terminated and not result.truncated and result.success
    assert result.reward == pytest.approx(0.9**2)  # sparse reward 1 on the 3rd executed step
    assert sim.success_step == len(actions)


def test_chunk_stops_at_the_time_limit():
    cfg = ENV.model_copy(update={"max_episode_steps": 10})
    sim = TaskSim("reach-v3", cfg, render=False)
    sim.reset(0, 0)
    execute_chunk(sim, np.zeros((8, 4)), 0.99)
    result = execute_chunk(sim, np.zeros((8, 4)), 0.99)
    sim.close()
    assert result.steps == 2 and result.truncated and not result.terminated and result.reward == 0.0


def test_dense_reward_and_step_cost_options():
    cfg = ENV.model_copy(update={"reward": "dense", "step_cost": 0.5})
    sim = TaskSim("reach-v3", cfg, render=False)
    sim.reset(0, 0)
    out = sim.step(np.zeros(4))
    sim.close()
    assert out.reward != -0.5 and out.reward > -0.5  # MetaWorld's dense reward is >= 0


def test_chunk_env_renders_only_at_decision_points():
    env = ChunkEnv(ENV.model_dump(), 4, 0.99, EpisodeQueue([EpisodeSpec("reach-v3", 0, 0, 0)]))
    obs, info = env.reset()
    assert obs["image"].shape == (1, 64, 64, 3) and obs["proprio"].shape == (4,) and obs["state"].shape == (39,)
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(np.zeros((4, 4)))
    assert env.counters() == {"renders": 4, "env_steps": 12}
    obs, _ = env.reset()  # queue exhausted: the env idles
    assert obs["image"].sum() == 0
    _, _, _, _, info = env.step(np.zeros((4, 4)))
    assert info["idle"] and info["steps"] == 0
    env.close()


def test_evaluation_list_is_fixed_and_split():
    cfg = EvaluateConfig(episodes_test=3, episodes_validation=2, episodes_train=2, seed=7)
    episodes = evaluation_episodes(ENV, cfg)
    assert episodes == evaluation_episodes(ENV, cfg)
    by_split = {split: [e for e in episodes if e.split == split] for split in ("test", "validation", "train")}
    assert [len(v) for v in by_split.values()] == [6, 4, 4]
    assert {e.variation_seed for e in by_split["test"]} == {ENV.test_seed}
    assert {e.variation_seed for e in by_split["validation"]} == {ENV.validation_seed}
    assert {e.variation_seed for e in by_split["train"]} <= set(ENV.train_seeds)
    # Asking for one split gives the same episodes as asking for all of them (pairing relies on it).
    assert evaluation_episodes(ENV, cfg, ["validation"]) == by_split["validation"]


def test_test_split_shares_no_configuration_with_train_or_validation():
    """Placements, not only seeds: no object/goal vector of the default test split occurs in
    the train or validation splits, and demos and PPO draw from train configurations only."""
    from vla_pipeline.config import load_params
    from vla_pipeline.demos import demo_episodes
    from vla_pipeline.envs.sim import configuration_vector
    from vla_pipeline.training.ppo.trainer import training_queues
    from tests.conftest import ROOT

    params = load_params(ROOT / "params.yaml")
    for task in ("reach-v3", "pick-place-v3"):
        placements = {split: {tuple(configuration_vector(task, c.seed, c.index).round(6))
                              for c in split_configurations(params.env, split)}
                      for split in ("train", "validation", "test")}
        assert len(placements["test"]) == 50 and len(placements["validation"]) == 50
        assert not placements["test"] & (placements["train"] | placements["validation"])
        assert not placements["validation"] & placements["train"]
    train = set(split_configurations(params.env, "train"))
    assert {spec.configuration for specs in demo_episodes(params).values() for spec in specs} <= train
    for queue in training_queues(params, 2, seed=0):
        assert set(queue.configurations) == train


def test_camera_fovy_zooms_about_the_image_centre():
    """`env.camera_fovy` narrows a camera's view: the frame at 45 degrees must be the centre
    crop of the 60-degree frame (MuJoCo's corner4), of relative size tan(22.5) / tan(30),
    scaled back up; a field of view that is ignored or applied to the wrong camera fails."""
    from PIL import Image

    size = 128
    frames = {}
    for fovy in ({}, {"corner4": 45.0}):
        env = EnvConfig(suite="custom", tasks=["reach-v3"], image_size=size, camera_fovy=fovy, vector="sync",
                        num_envs=1)
        sim = TaskSim("reach-v3", env)
        sim.reset(0, 3)
        frames[bool(fovy)] = sim.render()[0].astype(np.float64)
        sim.close()
    wide, narrow = frames[False], frames[True]
    side = size * math.tan(math.radians(22.5)) / math.tan(math.radians(30.0))
    lo = (size - side) / 2
    crop = Image.fromarray(wide.astype(np.uint8)).resize((size, size), Image.BILINEAR, box=(lo, lo, lo + side, lo + side))
    as_cropped = np.abs(np.asarray(crop, np.float64) - narrow).mean()
    unzoomed = np.abs(wide - narrow).mean()
    assert unzoomed > 10  # the view changed
    assert as_cropped < 0.3 * unzoomed, (as_cropped, unzoomed)


def test_camera_fovy_is_checked():
    with pytest.raises(ValueError, match="not in env.cameras"):
        EnvConfig(cameras=["corner4"], camera_fovy={"topview": 40.0})
    with pytest.raises(ValueError, match="5..150 degrees"):
        EnvConfig(cameras=["corner4"], camera_fovy={"corner4": 200.0})


MT10_TASKS = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
              "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3")


def expert_episode_steps(task: str, kind: str, variations=(0, 1, 2)) -> list[int]:
    """Steps to success of the `kind` expert on validation placements (0: unsolved), no noise."""
    env = EnvConfig(suite="custom", tasks=[task], image_size=64, max_episode_steps=200, vector="sync", num_envs=1)
    sim, steps = TaskSim(task, env, render=False), []
    try:
        for variation in variations:
            expert, state = make_expert(task, kind), sim.reset(env.validation_seed, variation)
            while True:
                out = sim.step(np.clip(expert.get_action(state), -1, 1).astype(np.float32))
                state = out.state
                if out.success or out.truncated:
                    steps.append(sim.t if out.success else 0)
                    break
    finally:
        sim.close()
    return steps


@pytest.mark.parametrize("task", MT10_TASKS)
def test_direct_expert_solves_each_task_in_fewer_steps_than_metaworlds(task):
    """`demos.expert: direct` must keep every MT10 task solved and cut the steps where it has a
    plan; door-open has none and must equal MetaWorld's script step for step."""
    metaworld, direct = expert_episode_steps(task, "metaworld"), expert_episode_steps(task, "direct")
    assert all(direct), f"direct expert failed {task}: {direct}"
    if task == "door-open-v3":
        assert direct == metaworld
    else:
        assert sum(direct) < 0.95 * sum(metaworld), (task, direct, metaworld)


def test_unknown_expert_is_refused():
    with pytest.raises(ValueError, match="unknown expert 'fast'"):
        make_expert("reach-v3", "fast")
