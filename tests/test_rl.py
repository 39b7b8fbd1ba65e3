"""Hand-computable checks of the RL pieces: chunk GAE, PPO ratio/clip, buffer, weight rule."""

import math

import numpy as np
import pytest
import torch

from tests.test_data import CAMERAS, fake_episode
from vla_pipeline.data.snapshot import decode_steps, episodes_to_table
from vla_pipeline.envs.chunk_env import EpisodeQueue
from vla_pipeline.envs.tasks import Configuration
from vla_pipeline.training.success_buffer import SelfBCBuffer
from vla_pipeline.training.ppo.curriculum import TaskCurriculum
from vla_pipeline.training.ppo.loss import chunk_log_prob, ppo_loss
from vla_pipeline.training.ppo.rollout_batch import chunk_gae
from vla_pipeline.training.ppo.bc_weight import BCWeight

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


def test_chunk_log_prob_by_hand_counts_only_executed_steps():
    # Unit Gaussian: log N(a | 0, 1) = -0.5 a^2 - 0.5 log(2 pi) per action dim.
    mean, actions = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)
    actions[0, 0, 0], actions[0, 1, 1] = 1.0, 2.0
    actions[0, 3] = 100.0  # a wild 4th action that the time limit kept from running
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    lp = chunk_log_prob(mean, torch.zeros(4, 4), actions, mask)
    assert lp.item() == pytest.approx(-12 * half_log_2pi - 0.5 * (1.0 + 4.0))
    # std 2: every executed dim pays log 2, and the squares are divided by 4.
    lp2 = chunk_log_prob(mean, torch.full((4, 4), math.log(2.0)), actions, mask)
    assert lp2.item() == pytest.approx(-12 * (half_log_2pi + math.log(2.0)) - 0.5 * 5.0 / 4.0)


def test_ppo_ratio_of_a_shifted_mean_is_known_and_clipped_pessimistically():
    """Actions at the old mean; the new mean moves by d on one executed step: log r = -d^2 / 2 sigma^2."""
    torch.manual_seed(0)
    log_std = torch.full((4, 4), -1.0)
    var = math.exp(-2.0)
    old_mean = torch.randn(2, 4, 4)
    actions = old_mean.clone()
    actions[1, 2:] += 50.0  # row 1 was cut after 2 steps: its tail never ran
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    new_mean = old_mean.clone()
    new_mean[:, 0, 0] += 0.2  # executed in both rows
    new_mean[:, 3, 1] += 0.3  # executed in row 0 only
    old_lp = chunk_log_prob(old_mean, log_std, actions, mask)
    new_lp = chunk_log_prob(new_mean, log_std, actions, mask)
    log_r = np.array([-(0.2**2 + 0.3**2) / (2 * var), -(0.2**2) / (2 * var)])
    r = np.exp(log_r)  # [0.619, 0.863]: row 0 leaves the band [0.8, 1.2]
    np.testing.assert_allclose((new_lp - old_lp).numpy(), log_r, rtol=1e-5)
    advantages = torch.tensor([-1.0, 1.0])
    terms = ppo_loss(new_lp, old_lp, advantages, torch.zeros(2), torch.zeros(2), torch.zeros(2), log_std,
                     clip=0.2, value_clip=None, value_coef=0.5, entropy_coef=0.0, normalize_advantages=False)
    assert terms.ratio_mean.item() == pytest.approx(r.mean(), rel=1e-5)
    assert terms.approx_kl.item() == pytest.approx(np.mean((r - 1) - log_r), rel=1e-4)
    assert terms.clip_fraction.item() == 0.5
    # Row 0 (A < 0): min(r A, clip(r) A) = 0.8 * -1, the pessimistic clipped term; row 1: r * 1.
    assert terms.policy_loss.item() == pytest.approx(-(-0.8 + r[1]) / 2, rel=1e-5)


def test_value_clipping_by_hand():
    # old 0, return 1. New 0.5 moved too far toward the return: clipped to 0.2, loss max(0.25, 0.64);
    # new -0.5 moved away: the unclipped loss (2.25) is the larger one and is kept.
    new = torch.tensor([0.5, -0.5], requires_grad=True)
    old, returns = torch.zeros(2), torch.ones(2)
    zeros = torch.zeros(2)
    terms = ppo_loss(zeros, zeros, zeros, new, old, returns, torch.zeros(1), clip=0.2, value_clip=0.2,
                     value_coef=0.5, entropy_coef=0.0, normalize_advantages=False)
    assert terms.value_loss.item() == pytest.approx(0.5 * (0.64 + 2.25) / 2)
    terms.value_loss.backward()
    # The clipped branch is flat in the new value: no gradient pushes row 0 further.
    assert new.grad.tolist() == pytest.approx([0.0, 0.5 * 2 * (-0.5 - 1.0) / 2])
    unclipped = ppo_loss(zeros, zeros, zeros, new.detach(), old, returns, torch.zeros(1), clip=0.2,
                         value_clip=None, value_coef=0.5, entropy_coef=0.0, normalize_advantages=False)
    assert unclipped.value_loss.item() == pytest.approx(0.5 * (0.25 + 2.25) / 2)


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


def test_dual_weight_update_by_hand():
    # log w += lr * (L_BC - eps) / eps, with eps = (1 + slack) * start loss = 1.25 * 4 = 5.
    w = BCWeight("dual", 0.2, lr=0.1)
    w.set_target(4.0, slack=0.25)
    assert w.target == pytest.approx(5.0)
    assert w.update(7.5) == pytest.approx(0.2 * math.exp(0.1 * 2.5 / 5.0), rel=1e-12)
    assert w.update(0.0) == pytest.approx(0.2 * math.exp(0.05 - 0.1), rel=1e-12)
    assert w.update(5.0) == pytest.approx(0.2 * math.exp(-0.05), rel=1e-12)  # at the target: no change
    fixed = BCWeight("fixed", 0.2)
    assert fixed.update(100.0) == 0.2
    assert BCWeight("none", 0.2).weight == 0.0 and not BCWeight("none", 0.2).active


def test_dual_weight_stays_in_bounds():
    w = BCWeight("dual", 1.0, lr=5.0, w_min=0.01, w_max=2.0)
    w.set_target(10.0, 0.0)
    assert w.update(1e6) == 2.0
    assert w.update(0.0) == pytest.approx(2.0 * math.exp(-5.0), rel=1e-12)  # one step down, inside
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


def test_uncertain_curriculum_weights_are_p_times_one_minus_p_floored():
    curriculum = TaskCurriculum(["never", "half", "always"], "uncertain", floor=0.05, window=4)
    for _ in range(4):
        curriculum.record("never", False)  # p = 1/6
        curriculum.record("always", True)  # p = 5/6
    for success in (True, False, True, False):
        curriculum.record("half", success)  # p = 3/6
    raw = np.array([max(5 / 36, 0.05), 0.25, max(5 / 36, 0.05)])
    assert curriculum.weights() == pytest.approx((raw / raw.sum()).tolist())
    floored = TaskCurriculum(["a", "b"], "uncertain", floor=0.2, window=2)
    for _ in range(2):
        floored.record("a", True)  # p = 3/4 -> p(1-p) = 3/16 < floor 0.2
    assert floored.weights() == pytest.approx([0.2 / 0.45, 0.25 / 0.45])


def test_every_round_draws_its_own_random_streams():
    from tests.conftest import tiny_raw
    from vla_pipeline.config import parse_params
    from vla_pipeline.training.rounds import round_seed

    params = parse_params(tiny_raw(rounds={"r01": {"policy_in": "sft", "buffer_in": "demos", "base": "sft"},
                                           "r02": {"policy_in": "r01", "buffer_in": "r01", "base": "sft"}}))
    seeds = {round_seed(params, name) for name in ("r01", "r02", "r03")}
    assert len(seeds) == 3 and round_seed(params, "r01") == round_seed(params, "r01")
    other = parse_params(tiny_raw(ppo={"seed": 1}))
    assert round_seed(other, "r01") != round_seed(params, "r01")


def test_random_shift_is_a_crop_of_the_replicate_padded_image():
    from vla_pipeline.training.behaviour_cloning import random_shift

    image = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 1, 3, 4)  # (B, V, C, H, W)
    generator = torch.Generator().manual_seed(0)
    shifted = random_shift(image, 1, generator)
    offsets = torch.randint(0, 3, (2, 2), generator=torch.Generator().manual_seed(0)).tolist()
    for view, (dy, dx) in enumerate(offsets):
        padded = torch.nn.functional.pad(image[0, view], (1, 1, 1, 1), mode="replicate")
        assert torch.equal(shifted[0, view], padded[:, dy:dy + 3, dx:dx + 4])
    assert torch.equal(random_shift(image, 0, generator), image)


def test_a_free_slot_takes_only_a_fast_success_when_admission_has_a_margin():
    """Seeded with 50 / 60 / 70 steps (median 60): at margin 1.0 a 65-step success of a new
    placement is refused and a 55-step one admitted; seeding itself is never filtered."""
    buf = SelfBCBuffer("task_variation", capacity=1, admit_margin=1.0)
    assert buf.seed([fake_episode("a-v3", n, seed=s) for n, s in ((50, 1), (70, 2), (60, 3))]) == set()
    assert not buf.offer(fake_episode("a-v3", 65, seed=4))
    assert buf.offer(fake_episode("a-v3", 55, seed=5))  # median now 57.5
    assert not buf.offer(fake_episode("a-v3", 58, seed=6))
    assert buf.offer(fake_episode("b-v3", 99, seed=7))  # no episode of its task yet: nothing to beat
    assert buf.offer(fake_episode("a-v3", 40, seed=2))  # an occupied slot: strictly shorter still wins
    assert sorted(ep.length for ep in buf.episodes() if ep.task == "a-v3") == [40, 50, 55, 60]
    plain = SelfBCBuffer("task_variation", capacity=1)
    plain.seed([fake_episode("a-v3", n, seed=s) for n, s in ((50, 1), (70, 2), (60, 3))])
    assert plain.offer(fake_episode("a-v3", 65, seed=4))  # today's rule: any success into a free slot


def test_the_buffer_prefers_the_shorter_of_two_successes_of_one_placement():
    """Whatever the order they arrive in, a slot ends up holding the shorter success."""
    for lengths in ((30, 20), (20, 30)):
        buf = SelfBCBuffer("task_variation", capacity=1)
        for n in lengths:
            buf.offer(fake_episode("a-v3", n, seed=1))
        assert [ep.length for ep in buf.episodes()] == [20]
