"""CO-RFT: the chunk TD target, the conservative term, TD3+BC, cached readouts, the offline stage."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from tests.conftest import invoke as invoke_stage, tiny_data_root, tiny_raw
from vla_pipeline.checkpoint import load_policy
from vla_pipeline.config import OfflineConfig, parse_params
from vla_pipeline.data.snapshot import load_snapshot
from vla_pipeline.data.windows import ChunkWindows
from vla_pipeline.errors import PipelineError
from vla_pipeline.training.corft.critic import ChunkCritic
from vla_pipeline.training.corft.losses import conservative_penalty, td3_bc_actor_loss
from vla_pipeline.training.corft.loop import train_offline
from vla_pipeline.training.corft.readouts import cache_readouts
from vla_pipeline.training.corft.targets import chunk_targets, step_rewards
from vla_pipeline.stats import offline_summary, paired_relative_changes

TINY_OFFLINE = {"steps": 8, "batch_size": 16, "log_every": 2, "validate_every": 4, "validation_episodes": 1,
                "critic_hidden": 16, "cql_samples": 2, "policy_delay": 2, "feature_batch_size": 7}


# ---------------------------------------------------------------------------- chunk TD target


def test_chunk_targets_on_a_hand_computed_pair_of_episodes():
    # Episode A: 3 steps, success (termination) at its last step. Episode B: 2 steps, cut (truncated).
    step = np.array([0, 1, 2, 0, 1])
    length = np.array([3, 3, 3, 2, 2])
    success = np.array([False, False, True, False, False])
    terminated = np.array([False, False, True, False, False])
    reward = step_rewards(success, success_reward=1.0, step_cost=0.1)
    np.testing.assert_allclose(reward, [-0.1, -0.1, 0.9, -0.1, -0.1])
    t = chunk_targets(step, length, reward, terminated, td_chunk=4, gamma=0.5)
    # Row 0 (t=0 of A): prefixes of 1, 2, 3 real actions; the 4th is padding after the success.
    np.testing.assert_allclose(t.prefix_return[0], [-0.1, -0.15, 0.075, 0.075], atol=1e-7)
    np.testing.assert_array_equal(t.done[0], [0, 0, 1, 1])  # terminated inside the chunk (at j = 3)
    np.testing.assert_array_equal(t.bootstrap[0], [1, 1, 0, 0])
    np.testing.assert_array_equal(t.next_row[0], [1, 2, 2, 2])
    np.testing.assert_array_equal(t.valid[0], [1, 1, 1, 1])
    # Row 1: the success is the 2nd action.
    np.testing.assert_allclose(t.prefix_return[1], [-0.1, 0.35, 0.35, 0.35], atol=1e-7)
    np.testing.assert_array_equal(t.done[1], [0, 1, 1, 1])
    # Row 2: the last step itself.
    np.testing.assert_allclose(t.prefix_return[2], [0.9] * 4, atol=1e-7)
    np.testing.assert_array_equal(t.done[2], [1, 1, 1, 1])
    # Monte-Carlo return-to-go (Cal-QL's floor), per episode.
    np.testing.assert_allclose(t.return_to_go, [0.075, 0.35, 0.9, -0.15, -0.1], atol=1e-7)
    # Episode B was cut: no o_{t+j} past its end and no termination, so those prefixes have no target.
    np.testing.assert_array_equal(t.valid[3], [1, 0, 0, 0])
    np.testing.assert_array_equal(t.bootstrap[3], [1, 0, 0, 0])
    np.testing.assert_array_equal(t.done[3], [0, 0, 0, 0])
    np.testing.assert_array_equal(t.next_row[3], [4, 4, 4, 4])
    np.testing.assert_array_equal(t.valid[4], [0, 0, 0, 0])


def test_one_step_td_is_the_first_column():
    step, length = np.array([0, 1, 2]), np.array([3, 3, 3])
    reward = np.array([0.0, 0.0, 1.0])
    terminated = np.array([False, False, True])
    four = chunk_targets(step, length, reward, terminated, 4, 0.9)
    one = chunk_targets(step, length, reward, terminated, 1, 0.9)
    for name in ("prefix_return", "done", "bootstrap", "valid", "next_row"):
        np.testing.assert_array_equal(getattr(one, name)[:, 0], getattr(four, name)[:, 0])


# ---------------------------------------------------------------------------- losses


def test_conservative_term_equals_T_log_N_when_every_chunk_scores_the_same():
    q_data = torch.full((1, 1, 1), 0.5)
    q_random = torch.full((1, 1, 3, 1), 0.5)
    q_policy = torch.full((1, 1, 4, 1), 0.5)
    for temperature in (1.0, 2.0):
        term = conservative_penalty(q_data, q_random, q_policy, None, temperature)
        assert term.item() == pytest.approx(temperature * math.log(8), rel=1e-6)


def test_conservative_term_pushes_sampled_chunks_down_and_data_up():
    q_data = torch.tensor([[[0.2]]], requires_grad=True)
    q_random = torch.tensor([[[[1.0], [0.0]]]], requires_grad=True)
    q_policy = torch.tensor([[[[0.5], [-0.5]]]], requires_grad=True)
    term = conservative_penalty(q_data, q_random, q_policy, None, 1.0)
    expected = math.log(math.exp(1.0) + math.exp(0.0) + math.exp(0.2) + math.exp(0.5) + math.exp(-0.5)) - 0.2
    assert term.item() == pytest.approx(expected, rel=1e-6)
    assert term.item() > 0
    term.sum().backward()
    assert (q_random.grad > 0).all() and (q_policy.grad > 0).all()  # minimising lowers them
    assert q_data.grad.item() < 0  # ... and raises the data chunk's value


def test_calql_floor_lifts_policy_values_to_the_return_to_go():
    q_data = torch.tensor([[[0.0]]])
    q_random = torch.tensor([[[[0.0]]]])
    q_policy = torch.tensor([[[[-2.0], [0.3]]]], requires_grad=True)
    floor = torch.tensor([0.1])
    term = conservative_penalty(q_data, q_random, q_policy, floor, 1.0)
    expected = math.log(math.exp(0.0) + math.exp(0.0) + math.exp(0.1) + math.exp(0.3))
    assert term.item() == pytest.approx(expected, rel=1e-6)
    term.sum().backward()
    assert q_policy.grad[0, 0, 0, 0].item() == 0.0  # floored: not pushed further down
    assert q_policy.grad[0, 0, 1, 0].item() > 0.0
    plain = conservative_penalty(q_data, q_random, q_policy.detach(), None, 1.0)
    assert plain.item() < term.item()


def test_td3_bc_actor_loss_by_hand():
    q = torch.tensor([1.0, -3.0])
    policy_chunk = torch.zeros(2, 2, 1)
    data_chunk = torch.tensor([[[1.0], [2.0]], [[3.0], [100.0]]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # row 2's second action is padding: ignored
    loss, stats = td3_bc_actor_loss(q, policy_chunk, data_chunk, mask, bc_alpha=2.5)
    bc = (1 + 4 + 9) / 3
    assert stats["bc_loss"] == pytest.approx(bc)
    assert stats["q_scale"] == pytest.approx(2.5 / 2.0)
    assert loss.item() == pytest.approx(-(2.5 / 2.0) * (-1.0) + bc)


def test_critic_scores_a_cut_chunk_whatever_its_padding_holds():
    torch.manual_seed(0)
    critic = ChunkCritic(feature_dim=6, td_chunk=3, action_dim=2, hidden=8, ensemble=2, prefix_heads=True)
    features = torch.randn(4, 6)
    chunks = torch.randn(4, 5, 3, 2)
    mask = torch.ones(4, 5, 3)
    mask[:, :, 2] = 0
    q = critic(features, chunks, mask)
    assert q.shape == (2, 4, 5, 3)
    other = chunks.clone()
    other[:, :, 2] = 99.0
    torch.testing.assert_close(critic(features, other, mask), q)
    assert not torch.allclose(critic(features, chunks, torch.ones(4, 5, 3)), q)


# ---------------------------------------------------------------------------- features and training


@pytest.fixture(scope="module")
def tiny_world(tiny_demos, tiny_checkpoint):
    params = parse_params(tiny_raw())
    table, _ = load_snapshot(tiny_demos)
    return params, table


def test_cached_readouts_equal_the_trunks_output(tiny_world, tiny_checkpoint):
    params, table = tiny_world
    policy = load_policy(tiny_checkpoint)
    windows = ChunkWindows(table, policy.config.chunk_len, policy.config.task_names)
    cache = cache_readouts(policy, table, windows.task_index, batch_size=7, device="cpu")
    assert cache.shape == (len(table), policy.readouts.shape[1], policy.config.d_model)
    rows = np.array([0, 5, len(table) - 1])
    with torch.no_grad():
        inputs = {"images": torch.as_tensor(table.images[rows]), "proprio": torch.as_tensor(table.proprio[rows]),
                  "task_index": torch.as_tensor(windows.task_index[rows])}
        direct = policy.readout_tokens(**inputs)
        out = policy(**inputs)
    torch.testing.assert_close(cache[rows], direct, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(policy.action_chunk_mean(cache[rows, 0]), out.action_mean, atol=1e-5, rtol=1e-5)


TRUNK = ("action_head.", "value_head.", "action_log_std", "aux_head.")


def _offline(policy, table, **overrides):
    cfg = OfflineConfig.model_validate({**TINY_OFFLINE, **overrides})
    return train_offline(policy, table, cfg)


def test_heads_run_moves_only_the_action_head_and_repeats_bitwise(tiny_world, tiny_checkpoint):
    _, table = tiny_world
    before = load_policy(tiny_checkpoint).state_dict()
    results = []
    for _ in range(2):
        policy = load_policy(tiny_checkpoint)
        result = _offline(policy, table)
        results.append((policy.state_dict(), result))
    after, result = results[0]
    assert [k for k in before if not k.startswith(TRUNK) and not torch.equal(before[k], after[k])] == []
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("action_head."))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("value_head."))
    for k in after:
        assert torch.equal(after[k], results[1][0][k]), k
    assert [r["step"] for r in result.curve] == [2, 4, 6, 8]
    assert {"td_loss", "cql_term", "q_data", "actor_q", "bc_loss"} <= set(result.curve[-1])
    assert result.transitions == len(table)


def test_all_run_trains_the_trunk_but_not_the_value_head(tiny_world, tiny_checkpoint):
    _, table = tiny_world
    before = load_policy(tiny_checkpoint).state_dict()
    policy = load_policy(tiny_checkpoint)
    _offline(policy, table, trainable="all", steps=4, conservative="cql", prefix_heads=False)
    after = policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("fusion."))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("value_head."))


def test_offline_refuses_snapshots_without_a_frame_at_every_step(tiny_world, tiny_checkpoint):
    _, table = tiny_world
    table.has_frame = table.has_frame.copy()
    saved = table.has_frame[1]
    table.has_frame[1] = False
    try:
        with pytest.raises(PipelineError, match="frame at every step"):
            _offline(load_policy(tiny_checkpoint), table)
    finally:
        table.has_frame[1] = saved


# ---------------------------------------------------------------------------- config


def test_offline_runs_are_checked_at_load():
    with pytest.raises(PipelineError, match=r"offline_runs.bad.set: unknown offline keys \['prefix_head'\]"):
        parse_params(tiny_raw(offline_runs={"bad": {"set": {"prefix_head": False}}}))
    with pytest.raises(PipelineError, match=r"offline_runs.bad.set.cql_alpha"):
        parse_params(tiny_raw(offline_runs={"bad": {"set": {"cql_alpha": -1}}}))
    with pytest.raises(PipelineError, match="longer than the policy's chunk"):
        parse_params(tiny_raw(offline_runs={"bad": {"set": {"td_chunk": 5}}}))
    with pytest.raises(PipelineError, match="bad run name"):
        parse_params(tiny_raw(offline_runs={"r01": {}}))
    params = parse_params(tiny_raw(offline_runs={"k1": {"set": {"td_chunk": 1}}}))
    assert params.offline_run("k1").td_chunk == 1 and params.offline.td_chunk == 4
    with pytest.raises(PipelineError, match="unknown CO-RFT run 'nope'"):
        params.offline_run("nope")


# ---------------------------------------------------------------------------- CLI


def invoke(*args):
    return invoke_stage(args)


def test_offline_command_writes_policy_critic_and_curve(tmp_path, tiny_demos, tiny_checkpoint):
    raw = tiny_raw(offline=TINY_OFFLINE, offline_runs={"co": {"test": True}})
    data, params = tiny_data_root(tmp_path, tiny_demos, tiny_checkpoint, raw)
    result = invoke("offline", "--run", "co", "--policy", data / "checkpoints" / "sft",
                    "--demos", data / "buffers" / "demos", "--data", data, "--params", params)
    assert result.exit_code == 0, result.output
    out = data / "checkpoints" / "co"
    policy = load_policy(out)
    critic = json.loads((out / "critic.json").read_text())
    assert critic["class"] == "ChunkCritic" and critic["td_chunk"] == 4 and critic["ensemble"] == 2
    saved = load_file(str(out / "critic.safetensors"))
    assert {k.split(".")[0] for k in saved} == {"critic", "critic_target", "actor_target"}
    state = json.loads((out / "training_state.json").read_text())
    assert state["best_step"] in (4, 8) and state["offline"]["conservative"] == "calql"
    curve = json.loads((data / "metrics" / "train-co.json").read_text())
    assert [r["step"] for r in curve if "validation_success" in r] == [4, 8]
    assert policy.config.chunk_len == 4

    missing = invoke("offline", "--run", "nope", "--policy", data / "checkpoints" / "sft",
                     "--demos", data / "buffers" / "demos", "--data", data, "--params", params)
    assert missing.exit_code != 0 and "unknown CO-RFT run 'nope'" in missing.output


def _records(successes, steps, task="reach-v3"):
    return [{"task": task, "variation_seed": 4242, "variation": i, "split": "test", "seed": i,
             "success": ok, "steps_to_success": s if ok else -1} for i, (ok, s) in enumerate(zip(successes, steps))]


def test_relative_changes_by_hand():
    base = _records([1, 1, 0, 0], [100, 80, 0, 0])
    new = _records([1, 1, 1, 0], [60, 60, 60, 0])
    out = paired_relative_changes(base, new, resamples=200)
    assert out["success_gain_relative"] == pytest.approx(0.75 / 0.5 - 1)
    assert out["steps_change_relative"] == pytest.approx(60 / 90 - 1)
    low, high = out["success_gain_relative_ci95"]
    assert low <= out["success_gain_relative"] <= high


def test_steps_are_averaged_per_task_first_like_the_headline():
    base = _records([1, 0], [100, 0], "reach-v3") + _records([1, 1], [50, 50], "push-v3")
    new = _records([1, 0], [80, 0], "reach-v3") + _records([1, 1], [50, 50], "push-v3")
    out = paired_relative_changes(base, new, resamples=100)
    assert out["base_steps_to_success"] == pytest.approx(75.0)  # (100 + 50) / 2, not 200 / 3
    assert out["steps_change_relative"] == pytest.approx(65 / 75 - 1)
    assert out["base_success"] == pytest.approx(0.75)


def test_offline_summary_command(tmp_path):
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    base.write_text(json.dumps(_records([1, 0, 1, 0], [50, 0, 70, 0])))
    new.write_text(json.dumps(_records([1, 1, 1, 0], [40, 45, 50, 0])))
    out = tmp_path / "summary.json"
    result = invoke("offline-summary", "--base", base, "--run", f"co={new}", "--out", out, "--resamples", 200)
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    row = summary["runs"]["co"]["test"]
    assert row["success_gain_relative"] == pytest.approx(0.5) and row["only_new"] == 1 and row["only_base"] == 0
    assert summary["paper"]["success_gain_relative"] == 0.57
    bad = invoke("offline-summary", "--base", base, "--run", "co")
    assert bad.exit_code != 0 and "NAME=FILE" in bad.output
    with pytest.raises(ValueError, match="different test episodes"):
        offline_summary(_records([1], [5]), {"x": _records([1, 1], [5, 5])})
