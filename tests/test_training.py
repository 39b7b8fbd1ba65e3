"""Training loops on tiny real inputs, checked against hand-computed values.

The collector runs real MetaWorld envs (sync, 32 px) with a horizon that is not a multiple
of K, so chunks are cut by the time limit; the trainer gets hand-built batches whose
ratios, losses and weights are known in closed form.
"""

import math

import numpy as np
import pytest
import torch
from gymnasium.vector import VectorWrapper

from tests.conftest import tiny_raw
from vla_pipeline.config import parse_params
from vla_pipeline.data.episode import Episode, decode_png, encode_png
from vla_pipeline.data.snapshot import decode_steps, episodes_to_table
from vla_pipeline.envs.tasks import resolve_tasks
from vla_pipeline.envs.vector import make_chunk_vector_env
from vla_pipeline.policies.factory import build_policy
from vla_pipeline.training.success_buffer import SelfBCBuffer
from vla_pipeline.training.ppo.loss import step_log_probs
from vla_pipeline.training.ppo.rollout import ChunkCollector
from vla_pipeline.training.ppo.rollout_batch import RolloutBatch
from vla_pipeline.training.ppo.trainer import PPOTrainer, training_queues
from vla_pipeline.training.behaviour_cloning import batch_to_tensors, bc_loss_on_batch
from vla_pipeline.training.supervised import train_sft

SIZE, K, A = 32, 4, 4  # tiny profile: 32 px frames, chunks of 4 actions of 4 dims
FULL, CUT = [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]  # a cut chunk ran 2 of its 4 steps


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one thread is faster, and ~20x faster when other jobs share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_params(**sections):
    return parse_params(tiny_raw(**sections))


def make_policy(params, seed=0):
    torch.manual_seed(seed)
    return build_policy(params.policy, params.env, resolve_tasks(params.env)).eval()


def random_obs(rng, n):
    return {"image": rng.integers(0, 255, (n, 1, SIZE, SIZE, 3), dtype=np.uint8),
            "proprio": rng.normal(size=(n, 4)).astype(np.float32), "state": rng.normal(size=(n, 39)).astype(np.float32),
            "task_index": np.arange(n) % 2}


def hand_batch(policy, masks, advantages, value_offsets, return_offsets, noise=0.0, seed=0):
    """Decisions the current policy took: actions = mean + noise * std on executed steps.

    Unexecuted steps hold wild actions (+50): they never ran, so they must not count.
    Stored values / returns are the policy's value plus the given offsets.
    """
    rng = np.random.default_rng(seed)
    mask = np.asarray(masks, np.float32)
    obs = random_obs(rng, len(mask))
    with torch.no_grad():
        out = policy(**policy.obs_to_tensors(obs))
    mean, log_std, value = out.action_mean.numpy(), out.action_log_std, out.value.numpy()
    actions = mean + noise * np.exp(log_std.numpy()) * rng.normal(size=mean.shape).astype(np.float32)
    actions[mask == 0] += 50.0
    log_probs = step_log_probs(out.action_mean, log_std, torch.from_numpy(actions)).numpy()
    return RolloutBatch(images=obs["image"], proprio=obs["proprio"], state=obs["state"], task_index=obs["task_index"],
                        actions=actions.astype(np.float32), step_mask=mask, log_probs=log_probs,
                        values=(value + np.asarray(value_offsets, np.float32)).astype(np.float32),
                        advantages=np.asarray(advantages, np.float32),
                        returns=(value + np.asarray(return_offsets, np.float32)).astype(np.float32))


def solved_episode(task, variation, length, seed):
    rng = np.random.default_rng(seed)
    episode = Episode(task, 0, variation, task, "expert")
    for t in range(length):
        episode.add_step((encode_png(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)),), rng.normal(size=4),
                         rng.normal(size=39), rng.uniform(-1, 1, 4), float(t == length - 1), t == length - 1)
    return episode.finish(True, False)


# --------------------------------------------------------------------------- collector


class StepRecorder(VectorWrapper):
    """Pass-through that keeps a copy of every observation the real envs return from step."""

    def __init__(self, env):
        super().__init__(env)
        self.next_obs = []

    def step(self, actions):
        out = self.env.step(actions)
        self.next_obs.append({key: np.array(value, copy=True) for key, value in out[0].items()})
        return out


def test_collector_bootstraps_a_time_limit_cut_from_the_final_observation():
    """Horizon 6 with K=4: chunk 0 runs 4 steps, chunk 1 is cut after 2, chunk 2 starts a new episode.

    Per env, by hand (sparse reward; no reach success fits in 6 steps: >= 15 cm to go at <= 1 cm a step):
      A_2 = g^4 V(o_3) - V(o_2)                  (last row: chain cut, V of the current observation)
      A_1 = g^2 V(final obs of the cut episode) - V(o_1)   (bootstrap, no chaining into A_2)
      A_0 = g^4 V(o_1) - V(o_0) + g^4 lam A_1
    """
    gamma, lam = 0.9, 0.8
    params = make_params(env={"max_episode_steps": 6, "tasks": ["reach-v3"]})  # one sim per env
    policy = make_policy(params)
    with torch.no_grad():
        policy.value_head[-1].weight.mul_(3000.0)  # values that clearly differ between observations
    envs = StepRecorder(make_chunk_vector_env(params.env, K, gamma, training_queues(params, 2, seed=0), "sync"))
    try:
        collector = ChunkCollector(envs, gamma, lam, "test", torch.Generator().manual_seed(0))
        batch, finished, stats = collector.collect(policy, lockstep_steps=3)
        last_obs = collector.obs
    finally:
        envs.close()

    def values(obs):
        with torch.no_grad():
            return policy(**policy.obs_to_tensors(obs)).value.numpy().astype(np.float64)

    n = 2
    v = batch.values.reshape(3, n).astype(np.float64)  # V(o_0), V(o_1), V(o_2) per env
    v_final, v_last = values(envs.next_obs[1]), values(last_obs)
    assert np.abs(v_final - v[2]).min() > 0.01  # the final and the reset observation are told apart
    np.testing.assert_array_equal(batch.step_mask.reshape(3, n, K)[1], [CUT, CUT])
    assert stats == {"decisions": 6, "env_steps": 20, "episodes": 2, "successes": 0}
    assert [(ep.length, ep.truncated, ep.terminated) for ep in finished] == [(6, True, False)] * 2
    a2 = gamma**4 * v_last - v[2]
    a1 = gamma**2 * v_final - v[1]
    a0 = gamma**4 * v[1] - v[0] + gamma**4 * lam * a1
    advantages = batch.advantages.reshape(3, n)
    np.testing.assert_allclose(advantages, np.stack([a0, a1, a2]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(batch.returns, batch.advantages + batch.values, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- trainer


def trainer_for(policy, params, buffer=None):
    return PPOTrainer(policy, buffer if buffer is not None else SelfBCBuffer("task_variation", 1), params, "test")


@pytest.mark.parametrize("logprob,value_clip", [("chunk", 0.2), ("step", None)])
def test_update_scores_cut_chunks_and_clips_values_by_hand(logprob, value_clip):
    """Move the action mean by d = 0.1 on step 0 (dim 0) and step 3 (dim 1): actions sit at the old mean,
    so each moved, executed step has log-ratio -d^2 / 2 sigma^2; step 3 of a cut chunk never ran."""
    params = make_params(ppo={"epochs": 1, "minibatch_size": 4, "target_kl": None, "logprob": logprob,
                              "value_clip": value_clip, "normalize_advantages": False, "clip": 0.2})
    policy = make_policy(params)
    advantages = np.array([1.0, -2.0, 0.5, 1.5])
    batch = hand_batch(policy, [FULL, CUT, FULL, CUT], advantages, value_offsets=[-0.5, -0.5, 0.5, 0.5],
                       return_offsets=[1.0] * 4)
    d = 0.1
    with torch.no_grad():
        policy.action_head[-1].bias[0 * A + 0] += d
        policy.action_head[-1].bias[3 * A + 1] += d
    log_std = policy.action_log_std.detach()
    s0 = -(d**2) / (2 * math.exp(2 * log_std[0, 0].item()))
    s3 = -(d**2) / (2 * math.exp(2 * log_std[3, 1].item()))
    if logprob == "chunk":  # one ratio per decision
        log_r = np.array([s0 + s3, s0, s0 + s3, s0])
        adv = advantages
    else:  # one ratio per executed step, each with its chunk's advantage
        log_r = np.array([s0, 0, 0, s3, s0, 0, s0, 0, 0, s3, s0, 0])
        adv = np.repeat(advantages, [4, 2, 4, 2])
    r = np.exp(log_r)
    assert r.min() > 0.8  # inside the clip band: the surrogate is r * A
    # Old values V -/+ 0.5, returns V + 1, new values V: clipped to V -/+ 0.3, the max is kept.
    value_loss = 0.5 * np.mean([1.69, 1.69, 1.0, 1.0]) if value_clip else 0.5
    out = trainer_for(policy, params).update(batch, value_only=False)
    assert out["ratio_mean"] == pytest.approx(r.mean(), rel=1e-5)
    assert out["approx_kl"] == pytest.approx(np.mean((r - 1) - log_r), rel=1e-3, abs=1e-7)
    assert out["policy_loss"] == pytest.approx(-np.mean(r * adv), rel=1e-5)
    assert out["clip_fraction"] == 0.0
    assert out["value_loss"] == pytest.approx(value_loss, rel=1e-5)


def optimizer_steps(trainer) -> int:
    head = trainer.policy.action_head[-1].weight
    return int(trainer.optimizer.state[head]["step"])


def test_target_kl_stops_the_epoch_loop_early():
    """12 decisions, minibatches of 4, 3 epochs = 9 steps. The first minibatch scores the behaviour
    policy itself (approx KL exactly 0, never above the target); after one step the second is above
    it, and the loop stops there, mid-epoch."""
    rows = 12
    for target_kl, steps, epochs, stopped in ((None, 9, 3, False), (1e-6, 2, 1, True), (1e6, 9, 3, False)):
        params = make_params(ppo={"epochs": 3, "minibatch_size": 4, "target_kl": target_kl, "head_lr": 1e-2})
        policy = make_policy(params)
        batch = hand_batch(policy, [FULL] * rows, np.linspace(-1, 1, rows), [0.0] * rows, [0.0] * rows, noise=1.0)
        trainer = trainer_for(policy, params)
        out = trainer.update(batch, value_only=False)
        assert (optimizer_steps(trainer), out["epochs_run"], out["early_stop"]) == (steps, epochs, stopped), target_kl
        assert out["first_ratio"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("log_std_lr", [None, 1e-2])
def test_log_std_moves_at_its_own_rate_only_when_given_one(log_std_lr):
    """One Adam step moves a parameter by about its group's rate: the log-std by head_lr (1e-5,
    effectively fixed) by default, by `ppo.log_std_lr` when set, while the head keeps head_lr."""
    params = make_params(ppo={"epochs": 1, "minibatch_size": 8, "target_kl": None, "head_lr": 1e-5,
                              "log_std_lr": log_std_lr}, bc={"weight_rule": "none"})
    policy = make_policy(params)
    trainer = trainer_for(policy, params)
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    before = policy.action_log_std.detach().clone()
    trainer.update(hand_batch(policy, [FULL] * 8, [1.0, -1.0] * 4, [0.0] * 8, [0.0] * 8, noise=1.5),
                   value_only=False)
    step = (policy.action_log_std.detach() - before).abs().max().item()
    if log_std_lr is None:
        assert "log_std" not in lrs and step == pytest.approx(1e-5, rel=0.05)
    else:
        assert lrs["log_std"] == log_std_lr and lrs["head"] == 1e-5
        assert step == pytest.approx(log_std_lr, rel=0.05)


def bc_loss_on_whole_buffer(trainer) -> float:
    windows = trainer.bc_windows()
    batch = batch_to_tensors(windows.batch(windows.sample_rows), "cpu")
    with torch.no_grad():
        return bc_loss_on_batch(trainer.policy, batch, "mse", 0, torch.Generator()).item()


@pytest.mark.parametrize("rule", ["none", "fixed"])
def test_bc_term_is_what_moves_the_actor_when_advantages_are_zero(rule):
    """With A = 0 the PPO term has zero gradient and the critic is behind a stop-gradient, so the
    actor moves only if the self-BC term reaches the loss, and then toward the buffer's actions."""
    params = make_params(ppo={"epochs": 3, "minibatch_size": 4, "target_kl": None, "head_lr": 3e-3, "lr": 3e-3},
                         bc={"weight_rule": rule, "weight": 1.0, "batch_size": 8})
    policy = make_policy(params)
    buffer = SelfBCBuffer("task_variation", 1)
    for i, task in enumerate(resolve_tasks(params.env)):
        buffer.offer(solved_episode(task, i, 6, seed=i))
    actor = {name: p.detach().clone() for name, p in policy.named_parameters() if not name.startswith("value_head")}
    trainer = trainer_for(policy, params, buffer)
    before = bc_loss_on_whole_buffer(trainer) if rule == "fixed" else None
    out = trainer.update(hand_batch(policy, [FULL] * 8, [0.0] * 8, [0.0] * 8, [0.5] * 8, noise=1.0), value_only=False)
    moved = [name for name, p in policy.named_parameters() if name in actor and not torch.equal(p, actor[name])]
    if rule == "none":
        assert moved == [] and out["bc_loss"] is None
    else:
        assert "action_head.2.weight" in moved and out["bc_loss"] is not None
        assert bc_loss_on_whole_buffer(trainer) < 0.97 * before  # 1.46 -> 1.33; sign flipped: 2.28


# --------------------------------------------------------------------------- SFT


def test_sft_overfits_one_small_batch():
    """Six windows (two 3-step episodes), batches of 8 drawn from them, no augmentation: the loss
    must fall to a small fraction of its start (3.7 -> 0.002 in 100 steps)."""
    params = make_params(sft={"steps": 100, "batch_size": 8, "lr": 3e-3, "warmup_steps": 0, "augment_shift": 0,
                              "weight_decay": 0.0, "log_every": 1})
    policy = make_policy(params)
    episodes = [solved_episode(task, 0, 3, seed=10 + i) for i, task in enumerate(resolve_tasks(params.env))]
    cameras = ("corner4",)
    table = decode_steps(episodes_to_table(episodes, cameras, (SIZE, SIZE, 3)), cameras, (SIZE, SIZE, 3), "test")
    result = train_sft(policy, table, params)
    first, last = result.curve[0]["loss"], result.final_loss
    assert last < 0.02 * first, (first, last)


def test_policy_coef_zero_keeps_bc_but_drops_the_ppo_term():
    """Same batch, large advantages, no BC: with policy_coef 0 the actor must not move."""
    moved = {}
    for coef in (1.0, 0.0):
        params = make_params(ppo={"epochs": 1, "minibatch_size": 8, "target_kl": None, "policy_coef": coef},
                             bc={"weight_rule": "none"})
        policy = make_policy(params)
        trainer = PPOTrainer(policy, SelfBCBuffer("task_variation", 1), params, "r01")
        actor = {k: v.clone() for k, v in policy.named_parameters() if k.startswith("action_head")}
        trainer.update(hand_batch(policy, [FULL] * 8, [5.0, -5.0] * 4, [0.0] * 8, [0.0] * 8, noise=1.0),
                       value_only=False)
        moved[coef] = any(not torch.equal(p, actor[k]) for k, p in policy.named_parameters() if k in actor)
    assert moved == {1.0: True, 0.0: False}


def test_sft_early_stopping_keeps_the_best_validation_weights():
    """Scripted validation scores 0.2, 0.6, 0.4, 0.3 with patience 2: stop at the 4th check and
    restore the weights of the 2nd."""
    params = make_params(sft={"steps": 100, "batch_size": 4, "log_every": 5, "validate_every": 10,
                              "patience": 2, "augment_shift": 0})
    policy = make_policy(params)
    episodes = [solved_episode(task, 0, 4, seed=i) for i, task in enumerate(resolve_tasks(params.env))]
    cameras = ("corner4",)
    table = decode_steps(episodes_to_table(episodes, cameras, (SIZE, SIZE, 3)), cameras, (SIZE, SIZE, 3), "test")
    scores, kept = iter([0.2, 0.6, 0.4, 0.3]), {}

    def validate(p):
        score = next(scores)
        kept[score] = {k: v.clone() for k, v in p.state_dict().items()}
        return {"success": score, "steps_to_success": None}

    result = train_sft(policy, table, params, validate)
    assert result.best_step == 20 and result.validation["success"] == 0.6
    assert [row["step"] for row in result.curve if "validation_success" in row] == [10, 20, 30, 40]
    assert result.curve[-1]["step"] == 40  # stopped, not run to 100
    for name, value in policy.state_dict().items():
        assert torch.equal(value, kept[0.6][name]), name


# --------------------------------------------------------------------------- SFT weight averaging


def test_ema_average_warms_its_decay_up_and_copies_integer_buffers():
    """After n updates the decay is min(decay, (1 + n) / (10 + n)): 2/11 at n = 1, then the cap."""
    from vla_pipeline.training.supervised import ema_average

    average = ema_average(0.9)
    kept, new = [torch.tensor([1.0])], [torch.tensor([3.0])]
    average(kept, new, torch.tensor(1))
    assert kept[0].item() == pytest.approx(1.0 + (1 - 2 / 11) * 2.0)
    kept = [torch.tensor([1.0])]
    average(kept, new, torch.tensor(100))
    assert kept[0].item() == pytest.approx(1.0 + 0.1 * 2.0)
    counts = [torch.tensor(4)]
    average(counts, [torch.tensor(9)], torch.tensor(100))
    assert counts[0].item() == 9


def test_sft_keeps_and_validates_the_moving_average_of_its_weights():
    """Two steps with sft.ema_decay 0.9: the average starts as the first iterate W1, then moves
    (1 - 2/11) of the way to W2. W1 and W2 come from runs without averaging (same seed and
    batches; with no warmup a 1-step and a 2-step schedule take the same first step). The
    validation check at step 2 must see the average, and it is what training keeps."""
    base = {"batch_size": 4, "lr": 1e-2, "warmup_steps": 0, "augment_shift": 0, "log_every": 1}
    episodes = None

    def run(steps, ema_decay, validate=None):
        nonlocal episodes
        params = make_params(sft={**base, "steps": steps, "ema_decay": ema_decay,
                                  "validate_every": 2 if validate else 0})
        policy = make_policy(params)
        episodes = episodes or [solved_episode(t, 0, 4, seed=i) for i, t in enumerate(resolve_tasks(params.env))]
        cameras = ("corner4",)
        table = decode_steps(episodes_to_table(episodes, cameras, (SIZE, SIZE, 3)), cameras, (SIZE, SIZE, 3), "test")
        train_sft(policy, table, params, validate)
        return {k: v.clone() for k, v in policy.state_dict().items()}

    first, second = run(1, 0.0), run(2, 0.0)
    seen = {}

    def validate(p):
        seen.update({k: v.clone() for k, v in p.state_dict().items()})
        return {"success": 0.5, "steps_to_success": None}

    kept = run(2, 0.9, validate)
    moved = 0
    for name, value in kept.items():
        if not value.is_floating_point():
            continue
        expected = first[name] + (1 - 2 / 11) * (second[name] - first[name])
        assert torch.allclose(value, expected, atol=1e-6), name
        assert torch.equal(seen[name], value), name
        moved += not torch.allclose(value, second[name], atol=1e-6)
    assert moved > 0  # the average is not simply the last iterate


@pytest.mark.parametrize("vector", ["sync", "async"])
def test_episodes_store_each_decision_frame_the_policy_acted_on(vector):
    """The collector PNG-encodes decision frames while async workers step; whatever the backend,
    an episode's frame at each decision must be the observation the batch row acted on (not the
    next one), and only decision steps carry a frame."""
    params = make_params(env={"max_episode_steps": 40, "tasks": ["drawer-close-v3"]})
    policy = make_policy(params)
    envs = make_chunk_vector_env(params.env, K, 0.99, training_queues(params, 2, seed=0), vector)
    try:
        collector = ChunkCollector(envs, 0.99, 0.95, "test", torch.Generator().manual_seed(0))
        batch, finished, _ = collector.collect(policy, lockstep_steps=3)
    finally:
        envs.close()
    assert not finished  # 12 steps: no episode ended, so both are still open
    images = batch.images.reshape(3, 2, *batch.images.shape[1:])
    for i, episode in enumerate(collector.open):
        assert [j for j, f in enumerate(episode.frames) if f] == [0, 4, 8]
        for t in range(3):
            stored = np.stack([decode_png(png) for png in episode.frames[4 * t]])  # (V, H, W, 3)
            np.testing.assert_array_equal(stored, images[t, i])
        assert not np.array_equal(images[0, i], images[1, i])  # the arm moved between decisions
