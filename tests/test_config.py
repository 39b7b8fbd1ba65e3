import pytest
import yaml

from tests.conftest import ROOT, tiny_raw
from vla_pipeline.config import SECTIONS, load_params, parse_params
from vla_pipeline.errors import PipelineError


def error_of(raw) -> str:
    with pytest.raises(PipelineError) as info:
        parse_params(raw, "params.yaml")
    return str(info.value)


def test_default_params_file_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.policy.chunk_len >= 1
    assert params.env.suite == "mt10"


def test_paper_profile_is_valid():
    params = load_params(ROOT / "params-paper.yaml")
    assert params.sft.device.startswith("cuda")


def test_misspelled_key_is_named_with_a_suggestion():
    msg = error_of(tiny_raw(sft={"lrr": 0.1}))
    assert "params.yaml: unknown key 'sft.lrr'" in msg
    assert "did you mean 'sft.lr'" in msg


def test_unknown_section_is_refused():
    raw = tiny_raw()
    raw["sftt"] = {}
    assert "unknown key 'sftt'" in error_of(raw)


def test_chunk_length_below_one_is_refused():
    msg = error_of(tiny_raw(policy={"chunk_len": 0}))
    assert "policy.chunk_len" in msg and "greater than or equal to 1" in msg


def test_negative_episodes_are_refused():
    assert "demos.episodes_per_task" in error_of(tiny_raw(demos={"episodes_per_task": -3}))


def test_unknown_demonstrator_is_refused():
    msg = error_of(tiny_raw(demos={"expert": "fast"}))
    assert "demos.expert" in msg and "'metaworld' or 'direct'" in msg


def test_wrong_type_is_refused():
    assert "sft.steps" in error_of(tiny_raw(sft={"steps": "many"}))


def test_unknown_task_is_refused_with_a_hint():
    msg = error_of(tiny_raw(env={"tasks": ["reach-v3", "pick-plaec-v3"]}))
    assert "unknown MetaWorld task 'pick-plaec-v3'" in msg and "pick-place-v3" in msg


def test_unknown_or_repeated_camera_and_shared_split_seeds_are_refused():
    assert "unknown camera 'corner9'" in error_of(tiny_raw(env={"cameras": ["corner4", "corner9"]}))
    assert "entries must not repeat" in error_of(tiny_raw(env={"cameras": ["corner4", "corner4"]}))
    assert "unknown key 'env.camera' (did you mean 'env.cameras'?)" in error_of(tiny_raw(env={"camera": "corner4"}))
    assert "env.test_seed 3 is also a train seed" in error_of(tiny_raw(env={"train_seeds": [0, 3], "test_seed": 3}))
    assert "must differ" in error_of(tiny_raw(env={"validation_seed": 5, "test_seed": 5}))
    assert "less than or equal to 50" in error_of(tiny_raw(evaluate={"episodes_test": 51}))


def test_horizon_beyond_metaworld_limit_is_refused():
    assert "env.max_episode_steps" in error_of(tiny_raw(env={"max_episode_steps": 501}))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(PipelineError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [unclosed\n")
    with pytest.raises(PipelineError, match="not valid YAML"):
        load_params(bad)


def test_every_dvc_stage_declares_known_sections():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        for entry in body.get("params", []):
            section = entry.split(".")[0] if isinstance(entry, str) else None
            if section is not None:
                assert section in SECTIONS, f"{name} declares unknown params section {section}"


def test_the_offline_sft_recipe_replaces_only_the_keys_it_names():
    params = parse_params(tiny_raw(sft={"augment_shift": 0, "steps": 7}, sft_offline={"augment_shift": 4}))
    offline = params.sft_recipe("sft_offline")
    assert (offline.augment_shift, offline.steps) == (4, 7)  # steps comes from `sft`
    assert params.sft_recipe("sft") is params.sft and params.sft.augment_shift == 0
    assert parse_params(tiny_raw()).sft_recipe("sft_offline") == parse_params(tiny_raw()).sft  # {}: sft unchanged
    with pytest.raises(PipelineError, match="unknown SFT recipe 'offline'"):
        params.sft_recipe("offline")


def test_the_offline_sft_recipe_is_checked_at_load():
    assert "sft_offline: unknown sft keys ['augment_shfit']" in error_of(tiny_raw(sft_offline={"augment_shfit": 4}))
    assert "sft_offline.augment_shift: Input should be greater than or equal to 0 (got -1)" in \
        error_of(tiny_raw(sft_offline={"augment_shift": -1}))
    assert "sft_offline.steps" in error_of(tiny_raw(sft_offline={"steps": 0}))


def test_the_small_regime_names_its_roots_and_its_recipe():
    """Rounds may start from sft-small / demos-small; sft_small's keys are checked like sft's."""
    s01 = {"policy_in": "sft-small", "buffer_in": "demos-small", "base": "sft-small"}
    params = parse_params(tiny_raw(rounds={"s01": s01},
                                   demos_small={"episodes_per_task": 3}, sft_small={"steps": 7}))
    assert params.sft_recipe("sft_small").steps == 7 and params.demos_small.episodes_per_task == 3
    with pytest.raises(PipelineError, match="sft_small: unknown sft keys"):
        parse_params(tiny_raw(sft_small={"stepz": 7}))
    with pytest.raises(PipelineError, match="bad round name .sft-small."):
        parse_params(tiny_raw(rounds={"sft-small": {"policy_in": "sft", "buffer_in": "demos", "base": "sft"}}))


# ------------------------------------------ chains of rounds: base, chain label, `set`

SMALL = {"policy_in": "sft-small", "buffer_in": "demos-small", "base": "sft-small"}


def test_a_round_names_the_sft_its_chain_starts_from():
    assert "rounds.r01.base: missing; add base: sft" in error_of(
        tiny_raw(rounds={"r01": {"policy_in": "sft", "buffer_in": "demos"}}))
    assert "rounds.s02.base: 'sft', but its chain starts from 'sft-small'" in error_of(
        tiny_raw(rounds={"s01": SMALL, "s02": {"policy_in": "s01", "buffer_in": "s01", "base": "sft"}}))
    params = parse_params(tiny_raw(rounds={"s01": SMALL, "s02": {**SMALL, "policy_in": "s01", "buffer_in": "s01"}}))
    assert params.chain_root("s02") == "sft-small" and params.rounds["s02"].chain == "ACPPO"


def test_a_chain_learns_only_from_the_demos_its_sft_saw():
    """A chain from sft-small seeded with every demo would not be a small-demo result."""
    assert "its buffers go back to 'demos', but a chain from sft-small learns only from 'demos-small'" in \
        error_of(tiny_raw(rounds={"s01": {**SMALL, "buffer_in": "demos"}}))
    assert "buffers form a cycle" in error_of(tiny_raw(rounds={
        "a": {"policy_in": "sft", "buffer_in": "b", "base": "sft"},
        "b": {"policy_in": "sft", "buffer_in": "a", "base": "sft"}}))


def test_a_chain_keeps_one_label():
    assert "rounds.s02.chain: 'other', but s01 before it is in chain 'small'" in error_of(tiny_raw(rounds={
        "s01": {**SMALL, "chain": "small"},
        "s02": {**SMALL, "policy_in": "s01", "buffer_in": "s01", "chain": "other"}}))


def test_set_replaces_only_the_keys_it_names_in_ppo_bc_and_buffer():
    params = parse_params(tiny_raw(rounds={
        "r01": {"policy_in": "sft", "buffer_in": "demos", "base": "sft"},
        "b01": {"policy_in": "sft", "buffer_in": "demos", "base": "sft", "chain": "self-BC",
                "set": {"ppo": {"policy_coef": 0.0}, "buffer": {"admit_margin": 1.0}}}}))
    assert params.round_params("r01") is params  # nothing to replace: the very same settings
    b01 = params.round_params("b01")
    assert b01.ppo.policy_coef == 0.0 and b01.buffer.admit_margin == 1.0
    assert b01.ppo.model_dump(exclude={"policy_coef"}) == params.ppo.model_dump(exclude={"policy_coef"})
    assert b01.bc == params.bc and b01.sft == params.sft and params.ppo.policy_coef == 1.0


@pytest.mark.parametrize("set_, message", [
    ({"sft": {"steps": 3}}, "rounds.b01.set: a round may change ppo / bc / buffer, not 'sft'"),
    ({"ppo": {"polcy_coef": 0.0}}, "rounds.b01.set.ppo: unknown ppo keys ['polcy_coef']"),
    ({"ppo": {"policy_coef": -1.0}}, "rounds.b01.set.ppo.policy_coef: Input should be greater than or equal to 0"),
    ({"buffer": {"capacity": 0}}, "rounds.b01.set.buffer.capacity"),
])
def test_a_bad_set_is_refused_at_load(set_, message):
    assert message in error_of(tiny_raw(rounds={
        "b01": {"policy_in": "sft", "buffer_in": "demos", "base": "sft", "set": set_}}))
