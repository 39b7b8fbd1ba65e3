import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModel

from tests.conftest import tiny_raw
from vla_pipeline.checkpoint import load_policy, save_policy
from vla_pipeline.config import parse_params
from vla_pipeline.errors import PipelineError
from vla_pipeline.policies.factory import build_policy
from vla_pipeline.policies.vla import VLAPolicy


@pytest.fixture
def policy():
    params = parse_params(tiny_raw())
    torch.manual_seed(0)
    return build_policy(params.policy, params.env, ["reach-v3", "drawer-close-v3"]).eval()


def obs(batch=3, size=32, views=1):
    rng = np.random.default_rng(0)
    return {"image": rng.integers(0, 255, (batch, views, size, size, 3), dtype=np.uint8),
            "proprio": rng.normal(size=(batch, 4)).astype(np.float32),
            "state": rng.normal(size=(batch, 39)).astype(np.float32), "task_index": np.array([0, 1, 0][:batch])}


def build(**overrides):
    params = parse_params(tiny_raw(**overrides))
    torch.manual_seed(0)
    return build_policy(params.policy, params.env, ["reach-v3", "drawer-close-v3"]).eval()


@pytest.mark.parametrize("vision", [{}, {"tokens": "keypoints", "keypoints": 5}, {"coord_channels": True}])
def test_every_camera_and_vision_variant_reaches_the_action(vision):
    """Two cameras through one encoder: changing only the second view changes the chunk."""
    tiny_vision = tiny_raw()["policy"]["vision"]
    policy = build(env={"cameras": ["corner4", "topview"]}, policy={"vision": {**tiny_vision, **vision}})
    o = obs(views=2)
    before = policy(**policy.obs_to_tensors(o)).action_mean
    o["image"][:, 1] = 255 - o["image"][:, 1]
    after = policy(**policy.obs_to_tensors(o)).action_mean
    assert before.shape == (3, 4, 4) and not torch.allclose(before, after)
    with pytest.raises(ValueError, match="expected images"):
        policy(**policy.obs_to_tensors(obs(views=1)))


def test_keypoints_are_expected_coordinates_of_the_feature_maps():
    from vla_pipeline.policies.vla.modeling_vla import SpatialSoftmax

    layer = SpatialSoftmax(channels=1, keypoints=1)
    with torch.no_grad():
        layer.maps.weight.fill_(1.0)
        layer.maps.bias.zero_()
        layer.log_temperature.fill_(-5.0)  # a sharp softmax: the arg-max cell
    features = torch.zeros(1, 1, 5, 5)
    features[0, 0, 4, 1] = 1.0  # row 4 (bottom), column 1
    assert layer(features)[0, 0].tolist() == pytest.approx([-0.5, 1.0], abs=1e-3)  # (x, y) in [-1, 1]


def test_only_a_privileged_policy_reads_the_goal_from_the_state():
    o = obs()
    moved = {**o, "state": o["state"].copy()}
    moved["state"][:, 36:39] += 1.0  # the goal position
    for privileged, changes in ((False, False), (True, True)):
        policy = build(policy={"privileged_state": privileged})
        a = policy(**policy.obs_to_tensors(o)).action_mean
        b = policy(**policy.obs_to_tensors(moved)).action_mean
        assert (not torch.allclose(a, b)) == changes
    with pytest.raises(ValueError, match="needs the MetaWorld state"):
        policy(**{k: v for k, v in policy.obs_to_tensors(o).items() if k != "state"})


def test_forward_shapes_and_action_range(policy):
    out = policy.act(obs(), deterministic=False, generator=torch.Generator().manual_seed(0))
    assert out["actions"].shape == (3, 4, 4) and out["value"].shape == (3,)
    assert np.abs(out["actions"]).max() <= 1.0


def test_instruction_changes_the_output(policy):
    o = obs()
    o["image"][:] = o["image"][0]
    o["proprio"][:] = o["proprio"][0]
    means = policy(**policy.obs_to_tensors(o)).action_mean
    assert torch.allclose(means[0], means[2]) and not torch.allclose(means[0], means[1])


def test_instruction_cache_reuses_the_encoding_bit_for_bit_and_only_while_acting(policy):
    """Inside `instruction_cache()` the text encoder runs once per set of instructions, and the
    outputs equal uncached ones exactly; outside it, or with grad, every call encodes afresh."""
    calls = []
    handle = policy.text.register_forward_hook(lambda *_: calls.append(1))
    try:
        mixed, single = obs(), obs(batch=1)
        with torch.no_grad():
            plain = [policy(**policy.obs_to_tensors(o)) for o in (mixed, single, mixed)]
            assert len(calls) == 3
            with policy.instruction_cache():
                cached = [policy(**policy.obs_to_tensors(o)) for o in (mixed, single, mixed, single)]
            assert len(calls) == 3 + 2  # one encoding per distinct set ({0, 1} and {0})
        for a, b in zip(plain + plain[1:2], cached):
            assert torch.equal(a.action_mean, b.action_mean) and torch.equal(a.value, b.value)
        with policy.instruction_cache():  # with grad (training): never cached
            policy(**policy.obs_to_tensors(mixed))
            policy(**policy.obs_to_tensors(mixed))
        assert len(calls) == 7
        assert policy._instruction_cache is None  # left when the block ends
    finally:
        handle.remove()


def test_save_pretrained_from_pretrained_round_trip(policy, tmp_path):
    policy.set_normalization(np.ones((10, 4)) * 3 + np.arange(10)[:, None], np.zeros((10, 4)))
    save_policy(policy, tmp_path / "ck", {"stage": "test"})
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["config.json", "model.safetensors", "training_state.json"]
    # Importing the package registers the model type, so transformers' AutoModel loads the folder too.
    auto = AutoModel.from_pretrained(tmp_path / "ck").eval()
    assert type(auto) is VLAPolicy
    for loaded in (load_policy(tmp_path / "ck"), VLAPolicy.from_pretrained(tmp_path / "ck").eval(), auto):
        assert torch.equal(loaded.proprio_mean, policy.proprio_mean)
        a = policy(**policy.obs_to_tensors(obs())).action_mean
        b = loaded(**loaded.obs_to_tensors(obs())).action_mean
        assert torch.equal(a, b)
        assert loaded.config.task_names == ["reach-v3", "drawer-close-v3"]


def test_truncated_weights_are_refused(policy, tmp_path):
    save_policy(policy, tmp_path / "ck", {})
    weights = tmp_path / "ck" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(PipelineError, match="model.safetensors: unreadable safetensors"):
        load_policy(tmp_path / "ck")


def test_missing_weights_and_foreign_config_are_refused(policy, tmp_path):
    save_policy(policy, tmp_path / "ck", {})
    shutil.copytree(tmp_path / "ck", tmp_path / "foreign")
    (tmp_path / "ck" / "model.safetensors").unlink()
    with pytest.raises(PipelineError, match="checkpoint weights missing"):
        load_policy(tmp_path / "ck")
    config = json.loads((tmp_path / "foreign" / "config.json").read_text())
    config["model_type"] = "bert"
    (tmp_path / "foreign" / "config.json").write_text(json.dumps(config))
    with pytest.raises(PipelineError, match="model_type 'bert' is not 'vla_pipeline_vla'"):
        load_policy(tmp_path / "foreign")


def test_config_of_another_shape_is_refused(policy, tmp_path):
    save_policy(policy, tmp_path / "ck", {})
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    config["d_model"] = 48
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    with pytest.raises(PipelineError, match="has shape"):
        load_policy(tmp_path / "ck")


def test_diverged_model_is_not_saved(policy, tmp_path):
    with torch.no_grad():
        policy.action_log_std.fill_(float("nan"))
    with pytest.raises(PipelineError, match="diverged"):
        save_policy(policy, tmp_path / "ck", {})


def test_aux_state_head_is_a_target_never_an_input():
    """With policy.aux_state_weight the model predicts object + goal xyz; the state never changes
    its outputs, only the auxiliary loss (which is 0-weighted away without the head)."""
    from vla_pipeline import constants as C
    from vla_pipeline.training.behaviour_cloning import bc_loss_on_batch

    policy = build(policy={"aux_state_weight": 1.0})
    o = obs()
    moved = {**o, "state": o["state"] + 1.0}
    a, b = policy(**policy.obs_to_tensors(o)), policy(**policy.obs_to_tensors(moved))
    assert a.aux_state.shape == (3, 6)
    assert torch.equal(a.action_mean, b.action_mean) and torch.equal(a.aux_state, b.aux_state)
    batch = {C.OBS_IMAGE: torch.as_tensor(o["image"]), C.OBS_PROPRIO: torch.as_tensor(o["proprio"]),
             C.OBS_STATE: torch.as_tensor(o["state"]), C.OBS_TASK_INDEX: torch.as_tensor(o["task_index"]),
             C.ACTION_CHUNK: torch.zeros(3, 4, 4), C.ACTION_MASK: torch.ones(3, 4)}
    gen = torch.Generator()
    plain = bc_loss_on_batch(policy, batch, "mse", 0, gen)
    with_aux = bc_loss_on_batch(policy, batch, "mse", 0, gen, aux_weight=1.0)
    target = policy.privileged_targets(batch[C.OBS_STATE])
    expected = (a.aux_state - (target - policy.aux_mean) / policy.aux_std).pow(2).sum(-1).mean()
    assert with_aux.item() == pytest.approx(plain.item() + expected.item(), rel=1e-5)
    assert build().config.aux_state is False and not hasattr(build(), "aux_head")


def test_act_on_estimate_feeds_the_aux_estimate_to_the_action_and_never_the_state(tmp_path):
    """policy.act_on_estimate: the action chunk depends on the aux head's estimate (change only that
    head and the chunk changes; off, it does not), the MetaWorld state still never enters, the new
    MLP trains with the heads (so iRe-VLA's frozen RL phase trains it), and the flag round-trips."""
    from vla_pipeline.training.ppo.trainer import parameter_groups

    o = obs()
    moved = {**o, "state": o["state"] + 1.0}
    for on in (False, True):
        policy = build(policy={"aux_state_weight": 1.0, "act_on_estimate": on})
        before = policy(**policy.obs_to_tensors(o))
        assert torch.equal(before.action_mean, policy(**policy.obs_to_tensors(moved)).action_mean)
        with torch.no_grad():
            policy.aux_head[-1].bias.add_(1.0)  # only the estimate moves
        after = policy(**policy.obs_to_tensors(o))
        assert torch.equal(before.value, after.value)
        assert (not torch.allclose(before.action_mean, after.action_mean)) == on
    assert hasattr(policy, "estimate_to_action")
    params = parse_params(tiny_raw(policy={"aux_state_weight": 1.0, "act_on_estimate": True},
                                   ppo={"freeze_backbone": True}))
    groups = {g["name"]: g["params"] for g in parameter_groups(policy, params)}
    assert "trunk" not in groups
    assert any(p is policy.estimate_to_action[0].weight for p in groups["head"])
    save_policy(policy, tmp_path / "ck", {})
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["act_on_estimate"] is True
    loaded = load_policy(tmp_path / "ck")
    assert torch.equal(loaded(**loaded.obs_to_tensors(o)).action_mean, after.action_mean)
    # Off, the key stays out of config.json: checkpoints from before the flag are byte-identical.
    save_policy(build(policy={"aux_state_weight": 1.0}), tmp_path / "off", {})
    assert "act_on_estimate" not in json.loads((tmp_path / "off" / "config.json").read_text())
    with pytest.raises(PipelineError, match="act_on_estimate .* aux_state_weight > 0"):
        parse_params(tiny_raw(policy={"act_on_estimate": True, "aux_state_weight": 0.0}))
