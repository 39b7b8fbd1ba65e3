"""A real (tiny) PPO round and buffer snapshot through the CLI, on MetaWorld."""

import json
import math
import shutil

import numpy as np
import pytest
import yaml

from tests.conftest import invoke, tiny_data_root, tiny_raw
from vla_pipeline.config import parse_params
from vla_pipeline.data.snapshot import load_episodes, read_manifest, sha256_file
from vla_pipeline.errors import PipelineError


PPO = {"iterations": 2, "decisions_per_iteration": 16, "epochs": 2, "minibatch_size": 8,
       "critic_warmup_iterations": 1, "target_kl": None}
ROUNDS = {"r01": {"policy_in": "sft", "buffer_in": "demos", "base": "sft"},
          "r02": {"policy_in": "r01", "buffer_in": "r01", "base": "sft"}}


@pytest.fixture(scope="module")
def round_dir(tmp_path_factory, tiny_demos, tiny_checkpoint):
    root = tmp_path_factory.mktemp("rounds")
    data, params = tiny_data_root(root, tiny_demos, tiny_checkpoint, tiny_raw(ppo=PPO, rounds=ROUNDS))
    for command in ("ppo", "snapshot"):
        result = invoke([command, "--round", "r01", "--data", str(data), "--params", str(params)])
        assert result.exit_code == 0, result.output
    return root, data, params


def test_round_writes_checkpoint_rollouts_curve_and_buffer(round_dir):
    _, data, _ = round_dir
    assert (data / "checkpoints" / "r01" / "model.safetensors").is_file()
    curve = json.loads((data / "metrics" / "train-r01.json").read_text())
    assert [row["iteration"] for row in curve] == [1, 2]
    assert curve[0]["value_only"] and not curve[1]["value_only"]
    # The first minibatch of an update scores the behaviour policy itself.
    assert curve[1]["first_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert curve[1]["first_clip_fraction"] == 0.0
    assert curve[1]["decisions"] == 16
    # Dual rule, once per minibatch: 16 decisions / 8 per minibatch x 2 epochs = 4 updates of
    # log w += lr (L_BC - eps) / eps; the logged bc_loss is their mean. The warm-up has no BC term.
    assert curve[0]["weight"] == 0.2 and curve[0]["bc_loss"] is None
    eps = curve[1]["bc_target"]
    assert curve[1]["weight"] == pytest.approx(0.2 * math.exp(0.02 * 4 * (curve[1]["bc_loss"] - eps) / eps), rel=1e-9)
    assert curve[1]["weight"] != pytest.approx(0.2, rel=1e-6)
    assert read_manifest(data / "buffers" / "r01")["schema_version"] == 2


def test_snapshot_reuses_unchanged_shards(round_dir):
    _, data, _ = round_dir
    successes, _ = load_episodes(data / "rollouts" / "r01")
    demos, r01 = data / "buffers" / "demos", data / "buffers" / "r01"
    for shard in read_manifest(r01)["shards"]:
        task = shard.removesuffix(".parquet")
        same = sha256_file(demos / shard) == sha256_file(r01 / shard)
        if task not in successes:
            assert same, f"{shard} should be reused byte-for-byte"


def test_snapshot_is_deterministic(round_dir, tmp_path):
    root, data, params = round_dir
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    shutil.rmtree(copy / "buffers" / "r01")
    result = invoke(["snapshot", "--round", "r01", "--data", str(copy), "--params", str(params)])
    assert result.exit_code == 0, result.output
    for path in (data / "buffers" / "r01").iterdir():
        assert path.read_bytes() == (copy / "buffers" / "r01" / path.name).read_bytes()


def test_unknown_round_is_a_clear_error(round_dir):
    _, data, params = round_dir
    result = invoke(["ppo", "--round", "r09", "--data", str(data), "--params", str(params)])
    assert result.exit_code == 1 and "no round named 'r09'" in result.output


def test_round_with_missing_predecessor_is_refused():
    with pytest.raises(PipelineError, match="rounds.r02.policy_in: no round or checkpoint named 'r00'"):
        parse_params(tiny_raw(rounds={"r02": {"policy_in": "r00", "buffer_in": "demos", "base": "sft"}}))
    with pytest.raises(PipelineError, match="predecessor cycle"):
        parse_params(tiny_raw(rounds={"a": {"policy_in": "b", "buffer_in": "demos", "base": "sft"},
                                      "b": {"policy_in": "a", "buffer_in": "demos", "base": "sft"}}))


def test_diverging_ppo_writes_no_checkpoint(round_dir, tmp_path, monkeypatch):
    """check_params refuses a learning rate above 1; a run that diverges all the same (here: the
    bound bypassed, as `model_copy` does not validate) stops without writing its outputs."""
    import stages.ppo
    from vla_pipeline.config import load_params

    _, data, _ = round_dir
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_raw(ppo={**PPO, "critic_warmup_iterations": 0}, rounds=ROUNDS)))

    def diverging(path):
        valid = load_params(path)
        return valid.model_copy(update={"ppo": valid.ppo.model_copy(update={"lr": 1.0e12, "head_lr": 1.0e12})})

    monkeypatch.setattr(stages.ppo, "load_params", diverging)
    copy = tmp_path / "data"
    for sub in ("checkpoints/sft", "buffers/demos"):
        shutil.copytree(data / sub, copy / sub)
    result = invoke(["ppo", "--round", "r01", "--data", str(copy), "--params", str(params)])
    assert result.exit_code == 1, result.output
    assert "non-finite loss or gradient" in result.output
    assert not (copy / "checkpoints" / "r01").exists() and not (copy / "rollouts" / "r01").exists()


def test_failure_curriculum_short_horizon_and_step_cost(round_dir, tmp_path, monkeypatch):
    """A round with tasks drawn by failure rate, a 6-step training horizon and a training step
    cost: with K=4 every episode's second chunk is cut by the time limit after 2 steps (sync
    envs), and every step of these unsuccessful episodes earns exactly -step_cost."""
    from vla_pipeline.training.ppo import trainer

    built = []

    def keep_envs(*args, **kwargs):  # the real vector env, kept for a look after the round
        built.append(trainer_make_envs(*args, **kwargs))
        return built[-1]

    trainer_make_envs = trainer.make_chunk_vector_env
    monkeypatch.setattr(trainer, "make_chunk_vector_env", keep_envs)
    _, data, _ = round_dir
    params = tmp_path / "params.yaml"
    ppo = {**PPO, "iterations": 3, "task_sampling": "failures", "task_floor": 0.5, "max_episode_steps": 6,
           "step_cost": 0.05}
    raw = tiny_raw(ppo=ppo, rounds=ROUNDS)
    raw["env"]["vector"] = "sync"
    params.write_text(yaml.safe_dump(raw))
    copy = tmp_path / "data"
    for sub in ("checkpoints/sft", "buffers/demos"):
        shutil.copytree(data / sub, copy / sub)
    result = invoke(["ppo", "--round", "r01", "--data", str(copy), "--params", str(params),
                                 "--curve", str(tmp_path / "curve.json")])
    assert result.exit_code == 0, result.output
    curve = json.loads((tmp_path / "curve.json").read_text())
    # No success fits in 6 steps (the hand moves <= 1 cm per axis per step; reach needs >= 15 cm
    # of travel, drawer-close >= 9.5 cm of drawer travel), so every episode is 4 + 2 steps:
    # 16 decisions over 2 envs = 8 episodes and 48 env steps per iteration.
    for row in curve:
        assert (row["decisions"], row["episodes"], row["successes"], row["env_steps"]) == (16, 8, 0, 48), row
        assert row["value_only"] or row["first_ratio"] == pytest.approx(1.0, abs=1e-5)
    # The curriculum's weights reached every env's episode queue (in the env's task order; the
    # curve's JSON keys are sorted).
    [envs] = built
    for env in envs.envs:
        assert env.queue.task_weights == pytest.approx([curve[-1]["task_weights"][task] for task in env.tasks])
    # The cost is the training env's only (evaluation keeps env.step_cost, 0 here).
    assert parse_params(raw).env.step_cost == 0.0
    env = envs.envs[0]
    assert (env.cfg.step_cost, env.cfg.max_episode_steps) == (0.05, 6)
    env.reset(seed=0)
    *_, info = env.step(np.zeros(env.action_space.shape, np.float32))
    assert list(info["chunk_rewards"]) == pytest.approx([-0.05] * 4)
    env.close()


def test_a_rounds_set_reaches_its_ppo_and_its_snapshot(tmp_path, tiny_demos, tiny_checkpoint):
    """`set` is how a chain differs (self-BC only, another buffer rule, another seed): the PPO
    round runs with it, the snapshot admits with it, and the rest of params is untouched."""
    rounds = {"b01": {"policy_in": "sft", "buffer_in": "demos", "base": "sft", "chain": "self-BC",
                      "set": {"ppo": {"iterations": 1, "policy_coef": 0.0}, "buffer": {"capacity": 3}}}}
    data, params = tiny_data_root(tmp_path, tiny_demos, tiny_checkpoint, tiny_raw(ppo=PPO, rounds=rounds))
    for command in ("ppo", "snapshot"):
        result = invoke([command, "--round", "b01", "--data", str(data), "--params", str(params)])
        assert result.exit_code == 0, result.output
    curve = json.loads((data / "metrics" / "train-b01.json").read_text())
    assert [row["iteration"] for row in curve] == [1]  # set.ppo.iterations, not ppo.iterations (2)
    buffer = read_manifest(data / "buffers" / "b01")["provenance"]["buffer"]
    assert buffer["capacity"] == 3 and parse_params(yaml.safe_load(params.read_text())).buffer.capacity == 1
