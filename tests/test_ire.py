"""iRe-VLA rounds: a frozen-trunk RL round, D_RL, the supervised round's mix, and the chain's checks."""

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from tests.conftest import invoke as invoke_stage, tiny_data_root, tiny_raw
from vla_pipeline.config import parse_params
from vla_pipeline.data.snapshot import load_snapshot, read_manifest
from vla_pipeline.data.windows import ChunkWindows
from vla_pipeline.errors import PipelineError
from vla_pipeline.evaluation import demo_configurations
from vla_pipeline.training.ire import MixedWindows


PPO = {"decisions_per_iteration": 16, "epochs": 2, "minibatch_size": 8, "target_kl": None}
IRE = {"rl_iterations": 2, "critic_warmup_iterations": 1, "sl_steps": 6, "sl_batch_size": 8, "sl_warmup_steps": 1,
       "sl_rl_fraction": 0.25, "episodes_per_group": 1}


def ire(kind: str, policy_in: str, buffer_in: str, base: str = "sft", demos: str = "demos", **more) -> dict:
    """An `ire_rounds` item of a chain from `base` (and its `demos`)."""
    return {"kind": kind, "policy_in": policy_in, "buffer_in": buffer_in, "base": base, "demos": demos, **more}


CHAIN = {"rl1": ire("rl", "sft", "demos"), "sl1": ire("sl", "rl1", "rl1", test=True),
         "base1": ire("ppo", "sft", "demos")}
TRUNK_EXCLUDED = ("action_head.", "value_head.", "action_log_std")


def invoke(*args):
    return invoke_stage(args)


@pytest.fixture(scope="module")
def ire_dir(tmp_path_factory, tiny_demos, tiny_checkpoint):
    root = tmp_path_factory.mktemp("ire")
    data, params = tiny_data_root(root, tiny_demos, tiny_checkpoint, tiny_raw(ppo=PPO, ire=IRE, ire_rounds=CHAIN))
    for name in ("rl1", "base1"):
        result = invoke("ire-round", "--round", name, "--data", data, "--demos", data / "buffers" / "demos",
                        "--params", params)
        assert result.exit_code == 0, result.output
    return root, data, params


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_rl_round_changes_only_the_head_and_critic_bitwise(ire_dir):
    _, data, _ = ire_dir
    before, after = weights(data / "checkpoints" / "sft"), weights(data / "checkpoints" / "rl1")
    assert before.keys() == after.keys()
    trunk = [k for k in before if not k.startswith(TRUNK_EXCLUDED)]
    assert len(trunk) > 20
    changed_trunk = [k for k in trunk if not np.array_equal(before[k], after[k])]
    assert changed_trunk == []
    heads = [k for k in before if k.startswith(("action_head.", "value_head."))]
    assert any(not np.array_equal(before[k], after[k]) for k in heads if k.startswith("action_head."))
    assert any(not np.array_equal(before[k], after[k]) for k in heads if k.startswith("value_head."))


def test_unfrozen_ppo_baseline_trains_the_trunk(ire_dir):
    _, data, _ = ire_dir
    before, after = weights(data / "checkpoints" / "sft"), weights(data / "checkpoints" / "base1")
    trunk = [k for k in before if not k.startswith(TRUNK_EXCLUDED)]
    assert any(not np.array_equal(before[k], after[k]) for k in trunk)


def test_rl_round_writes_d_rl_of_its_successes_only(ire_dir):
    _, data, _ = ire_dir
    manifest = read_manifest(data / "buffers" / "rl1")
    assert manifest["provenance"]["kind"] == "rl" and manifest["provenance"]["d_rl"]["capacity"] == 2
    curve = json.loads((data / "metrics" / "train-rl1.json").read_text())
    assert [row["iteration"] for row in curve] == [1, 2] and curve[0]["value_only"]
    # No demo enters D_RL: only the round's own successes (capped per configuration).
    successes = sum(row["successes"] for row in curve)
    assert manifest["total_episodes"] <= successes
    if manifest["total_episodes"]:
        table, _ = load_snapshot(data / "buffers" / "rl1")
        assert set(table.source) == {"rl1"}


def test_sl_round_trains_the_whole_model_and_passes_d_rl_on(ire_dir):
    _, data, params = ire_dir
    # Give D_RL content whatever the tiny round found: the demos stand in for RL successes.
    fake = data / "buffers" / "rl1"
    shutil.rmtree(fake)
    shutil.copytree(data / "buffers" / "demos", fake)
    result = invoke("ire-round", "--round", "sl1", "--data", data, "--demos", data / "buffers" / "demos",
                    "--params", params)
    assert result.exit_code == 0, result.output
    assert '"rl_fraction": 0.25' in result.output
    before, after = weights(data / "checkpoints" / "rl1"), weights(data / "checkpoints" / "sl1")
    trunk = [k for k in before if not k.startswith(TRUNK_EXCLUDED)]
    assert any(not np.array_equal(before[k], after[k]) for k in trunk)
    # The critic is not part of the cloning loss; the normalisation stays the warm start's.
    value = [k for k in before if k.startswith("value_head.")]
    assert all(np.array_equal(before[k], after[k]) for k in value)
    norm = [k for k in before if k.split("_")[0] in ("action", "proprio", "aux") and k.endswith(("_mean", "_std"))]
    assert len(norm) >= 4 and all(np.array_equal(before[k], after[k]) for k in norm)
    src, out = read_manifest(fake), read_manifest(data / "buffers" / "sl1")
    assert out["shards"] == src["shards"]


def test_mixed_windows_draw_the_configured_share(tiny_demos, tiny_params):
    table, _ = load_snapshot(tiny_demos)
    names = sorted(set(table.task))
    base, extra = ChunkWindows(table, 4, names), ChunkWindows(table, 4, names)
    mixed = MixedWindows(base, extra, 0.25)
    rng = np.random.default_rng(0)
    for _ in range(5):
        rows = mixed.sample(rng, 64)
        assert (rows >= mixed.offset).sum() == 16 and len(rows) == 64
    batch = mixed.batch(rows)
    assert batch["image"].shape[0] == 64
    # Extra rows map back to the extra table's rows.
    np.testing.assert_array_equal(batch["proprio"][48:], table.proprio[rows[48:] - mixed.offset])
    only_demos = MixedWindows(base, None, 0.25)
    assert only_demos.fraction == 0.0 and (only_demos.sample(rng, 64) < only_demos.offset).all()


def test_groups_split_train_configurations_by_demo(tiny_demos, tiny_params):
    from vla_pipeline.evaluation import group_episodes

    with_demo = demo_configurations(tiny_demos)
    episodes = group_episodes(tiny_params.env, tiny_params.evaluate, with_demo, 2)
    assert {e.split for e in episodes} == {"expert", "new"}
    for ep in episodes:
        assert (ep.configuration in with_demo[ep.task]) == (ep.split == "expert")
    assert episodes == group_episodes(tiny_params.env, tiny_params.evaluate, with_demo, 2)
    # More expert episodes than placements with a demo (a small set): each of them once.
    capped = group_episodes(tiny_params.env, tiny_params.evaluate, with_demo, 3)
    counts = Counter((e.task, e.split) for e in capped)
    assert all(counts[task, "expert"] == len(with_demo[task]) == 2 and counts[task, "new"] == 3 for task in with_demo)
    assert len({(e.task, e.configuration) for e in capped if e.split == "expert"}) == 2 * len(with_demo)
    with pytest.raises(ValueError, match="with a demo"):  # a task without a single demo
        group_episodes(tiny_params.env, tiny_params.evaluate, {task: set() for task in with_demo}, 1)


SMALL = {"base": "sft-small", "demos": "demos-small"}


@pytest.mark.parametrize("rounds, message", [
    ({"s": ire("sl", "sft", "demos")}, "buffer_in must name an iRe-VLA round"),
    ({"a": ire("rl", "b", "demos"), "b": ire("rl", "sft", "demos")}, "listed before it"),
    ({"a": ire("rl", "sft", "nowhere")}, "neither demos .an empty D_RL. nor"),
    ({"r01": ire("rl", "sft", "demos")}, "not sft/sft-small/sft-offline/demos/demos-small/demos-offline/expert nor an ACPPO"),
    ({"a": ire("rlx", "sft", "demos")}, "kind"),
    # base and demos name the SFT the chain starts from: DVC pairs and finds the demos by them
    ({"a": {"kind": "rl", "policy_in": "sft", "buffer_in": "demos"}}, r"a.base: missing, .* set base: sft"),
    ({"a": ire("rl", "sft-small", "demos-small")}, r"a.base: 'sft', but its chain starts from 'sft-small'"),
    ({"a": ire("rl", "sft-small", "demos-small", base="sft-small")}, r"a.demos: 'demos', .* set demos: demos-small"),
    ({"a": ire("rl", "sft-small", "demos", **SMALL)}, "neither demos-small .an empty D_RL. nor"),
    ({"a": ire("rl", "sft", "demos"), "b": ire("rl", "sft-small", "a", **SMALL)}, "of the same chain"),
])
def test_bad_chains_are_refused(rounds, message):
    with pytest.raises(PipelineError, match=message):
        parse_params(tiny_raw(ire_rounds=rounds))


@pytest.mark.parametrize("baselines, message", [
    ({"sft": "demos", "r09": "demos"}, "'r09' is neither"),
    ({"sft-small": "demos"}, r"ire.baselines.sft-small: 'demos', but sft-small comes from 'demos-small'"),
])
def test_bad_baselines_are_refused(baselines, message):
    with pytest.raises(PipelineError, match=message):
        parse_params(tiny_raw(ire={"baselines": baselines}))


def test_a_chain_from_the_small_set_learns_only_from_its_demos(tmp_path, tiny_demos, tiny_checkpoint):
    """An iRe-VLA chain from sft-small: its RL round starts an empty D_RL from demos-small and
    its SL round reads demos-small by default; the main demos are not even there to be read."""
    rounds = {"srl": ire("rl", "sft-small", "demos-small", **SMALL), "ssl": ire("sl", "srl", "srl", **SMALL)}
    raw = tiny_raw(ppo=PPO, ire={**IRE, "baselines": {"sft": "demos", "sft-small": "demos-small"}}, ire_rounds=rounds)
    data, params = tiny_data_root(tmp_path, tiny_demos, tiny_checkpoint, raw)
    (data / "checkpoints" / "sft").rename(data / "checkpoints" / "sft-small")
    (data / "buffers" / "demos").rename(data / "buffers" / "demos-small")
    for name in rounds:
        result = invoke("ire-round", "--round", name, "--data", data, "--params", params)
        assert result.exit_code == 0, result.output
    assert read_manifest(data / "buffers" / "ssl")["provenance"]["policy_in"] == "srl"
    from vla_pipeline.report.collect import planned_methods
    methods = {m.name: m for m in planned_methods(parse_params(raw))}
    assert (methods["ssl"].base, methods["ssl"].family) == ("sft-small", "iRe-VLA")


def test_a_round_of_the_other_family_names_its_command(ire_dir):
    _, data, params = ire_dir
    result = invoke("ppo", "--round", "rl1", "--data", data, "--params", params)
    assert result.exit_code == 1 and "iRe-VLA round" in result.output and "ire-round" in result.output
    raw = yaml.safe_load(params.read_text())
    raw["rounds"] = {"r01": {"policy_in": "sft", "buffer_in": "demos", "base": "sft"}}
    other = params.parent / "with-acppo.yaml"
    other.write_text(yaml.safe_dump(raw))
    result = invoke("ire-round", "--round", "r01", "--data", data, "--params", other)
    assert result.exit_code == 1 and "ACPPO round" in result.output and "stages ppo" in result.output
    result = invoke("ire-round", "--round", "nope", "--data", data, "--params", other)
    assert result.exit_code == 1 and "no round named 'nope'" in result.output


def test_missing_predecessor_checkpoint_is_a_clear_error(ire_dir, tmp_path):
    _, data, params = ire_dir
    empty = tmp_path / "data"
    shutil.copytree(data / "buffers" / "demos", empty / "buffers" / "demos")
    result = invoke("ire-round", "--round", "rl1", "--data", empty, "--params", params)
    assert result.exit_code == 1 and "error:" in result.output and "Traceback" not in result.output


def _rec(variation, success, split):
    return {"task": "reach-v3", "variation_seed": 0, "variation": variation, "split": split, "seed": 7,
            "success": success, "steps_to_success": 60 if success else -1}


def test_compare_joins_base_files_and_pairs_the_groups(tmp_path):
    sft_splits = tmp_path / "sft.json"
    sft_groups = tmp_path / "sft-groups.json"
    new = tmp_path / "new.json"
    sft_splits.write_text(json.dumps([_rec(0, True, "test"), _rec(1, False, "validation")]))
    sft_groups.write_text(json.dumps([_rec(2, True, "expert"), _rec(3, False, "new"), _rec(4, False, "new")]))
    new.write_text(json.dumps([_rec(0, True, "test"), _rec(2, False, "expert"), _rec(3, True, "new"),
                               _rec(4, True, "new")]))
    out = tmp_path / "paired.json"
    result = invoke("compare", "--base", sft_splits, "--base", sft_groups, "--new", new, "--out", out)
    assert result.exit_code == 0, result.output
    paired = json.loads(out.read_text())
    assert paired["splits"] == ["test", "expert", "new"] and paired["skipped_splits"] == ["validation"]
    assert paired["new"]["only_new"] == 2 and paired["expert"]["only_base"] == 1


def test_seeds_table_on_a_group_reads_sft_group_metrics(tmp_path):
    def metrics(**sections):
        return json.dumps({k: {"success": v, "steps_to_success": 70.0, "success_ci95": [0, 1]}
                           for k, v in sections.items()})

    runs = []
    for seed, (sft_new, final_new) in enumerate([(0.5, 0.7), (0.6, 0.65)]):
        folder = tmp_path / f"s{seed}"
        folder.mkdir()
        (folder / "eval-sft.json").write_text(metrics(test=0.8))
        (folder / "groups-sft.json").write_text(metrics(expert=0.9, new=sft_new))
        (folder / "eval-ire-sl2.json").write_text(metrics(test=0.85, new=final_new))
        (folder / "paired-ire-sl2.json").write_text(json.dumps({"new": {
            "only_new": 3, "only_base": 1, "mcnemar_p": 0.6, "steps_diff_both_solved": -1.0}}))
        runs += ["--run", f"{seed}={folder}"]
    out = tmp_path / "seeds.json"
    result = invoke("seeds", *runs, "--final", "ire-sl2", "--split", "new", "--out", out)
    assert result.exit_code == 0, result.output
    table = json.loads(out.read_text())
    assert table["split"] == "new" and table["gain_positive_on_every_seed"]
    assert table["seeds"]["0"]["sft_success"] == 0.5 and table["mean_success_gain"] == pytest.approx(0.125)
    assert invoke("seeds", *runs, "--final", "ire-sl2", "--split", "newest").exit_code == 1
