"""Hand-computable checks of the RL pieces: chunk GAE, PPO ratio/clip, buffer, weight rule."""

import numpy as np
import pytest
import torch

from tests.test_data import CAMERAS, fake_episode
from vla_pipeline.data.snapshot import decode_steps, episodes_to_table
from vla_pipeline.envs.chunk_env import EpisodeQueue
from vla_pipeline.envs.tasks import Configuration
from vla_pipeline.rl.buffer import SelfBCBuffer
from vla_pipeline.rl.curriculum import TaskCurriculum
from vla_pipeline.rl.ppo import chunk_log_prob, ppo_loss
from vla_pipeline.rl.storage import chunk_gae
from vla_pipeline.rl.weighting import BCWeight

G, L = 0.9, 0.5


def col(*values):
    return np.array(values, dtype=np.float64)[:, None]  # (T, N=1)


def test_gae_with_an_early_success_inside_a_chunk():
    # Decision 0 ran a full chunk of 4 steps, decision 1 succeeded on its 2nd step
    # (n=2, reward gamma^1 * 1 already discounted inside the chunk): no bootstrap after it.
    rewards, values = col(0.0, G), col(0.5, 0.8)
    next_values = col(0.8, 123.0)  # the value after a success must be ignored
    adv, ret = chunk_gae(rewards, values, next_values, col(4, 2), col(0, 1), col(0, 0), G, L)
    delta1 = G - 0.8
    delta0 = 0 + G**4 * 0.8 - 0.5
    assert adv[1, 0] == pytest.approx(delta1)
    assert adv[0, 0] == pytest.approx(delta0 + G**4 * L * delta1)
    assert ret[0, 0] == pytest.approx(adv[0, 0] + 0.5)


def test_gae_bootstraps_on_time_limit_but_does_not_chain_across_it():
    # Decision 0 (3 steps) was cut by the time limit; decision 1 belongs to a new episode.
    rewards, values = col(0.0, 0.0), col(0.2, 0.7)
    next_values = col(0.6, 0.9)  # V(final obs of the cut episode), V(next obs)
    adv, _ = chunk_gae(rewards, values, next_values, col(3, 4), col(0, 0), col(1, 0), G, L)
    assert adv[0, 0] == pytest.approx(G**3 * 0.6 - 0.2)  # bootstrapped, no A_1 term
    assert adv[1, 0] == pytest.approx(G**4 * 0.9 - 0.7)


def test_gae_discount_uses_executed_steps_not_chunk_length():
    adv_short, _ = chunk_gae(col(0.0), col(0.0), col(1.0), col(1), col(0), col(0), G, L)
    adv_long, _ = chunk_gae(col(0.0), col(0.0), col(1.0), col(4), col(0), col(0), G, L)
    assert adv_short[0, 0] == pytest.approx(G) and adv_long[0, 0] == pytest.approx(G**4)


def test_ratio_is_one_and_nothing_clipped_for_the_behaviour_policy():
    torch.manual_seed(0)
    mean, log_std = torch.randn(6, 4, 4), torch.full((4, 4), -1.0)
    actions = mean + 0.3 * torch.randn(6, 4, 4)
    mask = torch.tensor([[1, 1, 1, 1]] * 5 + [[1, 1, 0, 0]], dtype=torch.float32)
    lp = chunk_log_prob(mean, log_std, actions, mask)
    terms = ppo_loss(lp, lp.detach(), torch.randn(6), torch.zeros(6), torch.zeros(6), torch.zeros(6), log_std,
                     clip=0.2, value_clip=0.2, value_coef=0.5, entropy_coef=0.0)
    assert terms.ratio_mean.item() == 1.0 and terms.clip_fraction.item() == 0.0 and terms.approx_kl.item() == 0.0


def test_unexecuted_steps_do_not_change_the_chunk_log_prob():
    mean, log_std = torch.zeros(1, 4, 4), torch.zeros(4, 4)
    a, b = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)
    b[0, 3] = 100.0  # wildly different 4th action, never executed
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert torch.equal(chunk_log_prob(mean, log_std, a, mask), chunk_log_prob(mean, log_std, b, mask))


def test_clip_fraction_counts_ratios_outside_the_band():
    new = torch.log(torch.tensor([1.0, 1.5, 0.5, 1.1]))
    terms = ppo_loss(new, torch.zeros(4), torch.ones(4), torch.zeros(4), torch.zeros(4), torch.zeros(4),
                     torch.zeros(1), clip=0.2, value_clip=None, value_coef=0.5, entropy_coef=0.0,
                     normalize_advantages=False)
    assert terms.clip_fraction.item() == 0.5
    # min(r*A, clip(r)*A) with A=1: [1.0, 1.2, 0.5, 1.1]
    assert terms.policy_loss.item() == pytest.approx(-(1.0 + 1.2 + 0.5 + 1.1) / 4)


def test_buffer_admission_and_eviction_per_variation():
    buf = SelfBCBuffer("task_variation", capacity=1)
    long = fake_episode("a-v3", 9, seed=1)  # variation 1
    assert buf.offer(long)
    assert not buf.offer(fake_episode("a-v3", 9, seed=51))  # same slot, same length: keep older
    assert not buf.offer(fake_episode("a-v3", 12, seed=101))  # longer: rejected
    assert not buf.offer(fake_episode("a-v3", 3, seed=151, solved=False))  # failures never enter
    short = fake_episode("a-v3", 4, seed=201)
    assert buf.offer(short)  # strictly shorter: replaces
    assert buf.offer(fake_episode("a-v3", 20, seed=2))  # another variation has room
    assert [ep.length for ep in buf.episodes()] == [4, 20]
    assert buf.changed_tasks == {"a-v3"}


def test_buffer_keyed_by_task_keeps_the_b_shortest():
    buf = SelfBCBuffer("task", capacity=2)
    for length, seed in ((10, 1), (8, 2), (12, 3), (5, 4), (9, 5)):
        buf.offer(fake_episode("a-v3", length, seed))
    assert sorted(ep.length for ep in buf.episodes()) == [5, 8]


def test_buffer_step_table_reuses_decoded_frames_and_matches_a_fresh_decode():
    buf = SelfBCBuffer("task_variation", capacity=1)
    buf.offer(fake_episode("a-v3", 6, seed=1))
    buf.offer(fake_episode("b-v3", 4, seed=2))
    buf.step_table(CAMERAS, (8, 8, 3))
    buf.offer(fake_episode("a-v3", 3, seed=51))  # evicts the 6-step episode of variation 1
    buf.offer(fake_episode("a-v3", 5, seed=3))
    cached = buf.step_table(CAMERAS, (8, 8, 3))
    fresh = decode_steps(episodes_to_table(buf.episodes(), CAMERAS, (8, 8, 3)), CAMERAS, (8, 8, 3), "fresh")
    assert len(buf._decoded) == 3  # the evicted episode's frames were dropped
    for name in ("images", "episode", "step", "action", "proprio", "state", "has_frame"):
        assert np.array_equal(getattr(cached, name), getattr(fresh, name)), name


def test_dual_weight_rises_when_bc_loss_exceeds_target_and_falls_below():
    w = BCWeight("dual", 0.2, lr=0.1)
    w.set_target(1.0, slack=0.1)
    assert w.target == pytest.approx(1.1)
    up = w.update(2.0)
    assert up > 0.2
    down = [w.update(0.1) for _ in range(3)][-1]
    assert down < up
    fixed = BCWeight("fixed", 0.2)
    assert fixed.update(100.0) == 0.2
    assert BCWeight("none", 0.2).weight == 0.0 and not BCWeight("none", 0.2).active


def test_dual_weight_stays_in_bounds():
    w = BCWeight("dual", 1.0, lr=5.0, w_min=0.01, w_max=2.0)
    w.set_target(1.0, 0.0)
    assert w.update(1e6) == 2.0
    assert [w.update(0.0) for _ in range(50)][-1] == pytest.approx(0.01)


def test_curriculum_weights_follow_recent_failure_rates():
    curriculum = TaskCurriculum(["a", "b", "c"], "failures", floor=0.1, window=4)
    assert curriculum.weights() == pytest.approx([1 / 3] * 3)  # Beta(1, 1) prior: 0.5 each
    for success in (True, True, True, True):
        curriculum.record("a", success)  # 5/6 success -> failure 1/6
    for success in (False, False, False, True):
        curriculum.record("b", success)  # 2/6 -> failure 4/6
    for _ in range(10):
        curriculum.record("c", True)  # window 4: 5/6 -> 1/6
    raw = np.array([1 / 6, 4 / 6, 1 / 6])
    assert curriculum.weights() == pytest.approx((raw / raw.sum()).tolist())
    for _ in range(4):
        curriculum.record("b", False)  # only the last 4 count: 1/6 success
    assert curriculum.success_estimate("b") == pytest.approx(1 / 6)


def test_curriculum_floor_keeps_solved_tasks_and_uniform_defers_to_round_robin():
    curriculum = TaskCurriculum(["a", "b"], "failures", floor=0.2, window=100)
    for _ in range(100):
        curriculum.record("a", True)
        curriculum.record("b", False)
    w = curriculum.weights()
    assert w[0] == pytest.approx(0.2 / (0.2 + 101 / 102))
    assert TaskCurriculum(["a"], "uniform", 0.1, 5).weights() is None


def test_weighted_episode_queue_draws_tasks_by_weight():
    queue = EpisodeQueue(cycle_seed=0, tasks=["a", "b"], configurations=[Configuration(0, 0), Configuration(0, 1)],
                         task_weights=[0.0, 1.0])
    rng = np.random.default_rng(0)
    assert {queue.next(rng).task for _ in range(20)} == {"b"}
    queue.task_weights = None  # back to round-robin
    assert [queue.next(rng).task for _ in range(2)] == ["a", "b"]
