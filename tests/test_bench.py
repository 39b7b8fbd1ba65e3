"""The benchmark: structure and arithmetic of its JSON, never a speed (timings vary by machine)."""

import json
import statistics

import numpy as np
import pytest

from tests.conftest import tiny_raw
from vla_pipeline.bench.jobs import _sft_job
from vla_pipeline.bench.measure import _run_in_child
from vla_pipeline.bench.throughput import (
    CHUNK_LENS, NUM_ENVS, VECTOR_MODES, BenchSizes, collector_name, compute_ratios, measurement_names, run_bench,
)
from vla_pipeline.config import parse_params
from vla_pipeline.errors import PipelineError


def test_sizes_refuse_nothing_to_measure():
    with pytest.raises(PipelineError, match="repeats must be an integer >= 1"):
        BenchSizes(repeats=0)
    with pytest.raises(PipelineError, match="ppo_decisions"):
        BenchSizes(ppo_decisions=1)


def test_ratios_are_ratios_of_medians():
    medians = {name: 10.0 + i for i, name in enumerate(measurement_names())}
    ratios = compute_ratios({name: {"median": m} for name, m in medians.items()})
    assert ratios["collector_over_raw_k4"]["async-n2"] == pytest.approx(
        medians["collector-async-n2-k4"] / medians["raw-k4"], rel=1e-3)
    assert ratios["k8_over_k1"]["raw"] == pytest.approx(medians["raw-k8"] / medians["raw-k1"], rel=1e-3)
    assert ratios["n2_over_n1"]["sync-k8"] == pytest.approx(
        medians["collector-sync-n2-k8"] / medians["collector-sync-n1-k8"], rel=1e-3)


def test_a_failing_measurement_is_one_error_naming_it(tmp_path, tiny_params):
    """The child's error comes back as a PipelineError; a missing demo snapshot is refused before
    anything runs, and nothing is written."""
    out = tmp_path / "bench.json"
    with pytest.raises(PipelineError, match="buffer snapshot not found"):
        run_bench(tiny_params, out, BenchSizes(), demos=tmp_path / "missing")
    assert not out.exists()
    with pytest.raises(PipelineError, match="^bench sft: buffer snapshot not found"):
        _run_in_child("sft", _sft_job, params_raw=tiny_params.model_dump(), demos=str(tmp_path / "missing"), steps=1,
                      batch_size=2, repeats=1, seed=0)


@pytest.mark.slow
def test_bench_runs_every_measurement_and_writes_consistent_json(tmp_path):
    """The whole bench on tiny sizes (one task, 32 px, a few steps): every figure is there,
    positive, the median of its repeats, with its peak memory; ratios follow the medians."""
    params = parse_params(tiny_raw(env={"tasks": ["reach-v3"]}), "tiny_params.yaml")
    sizes = BenchSizes(repeats=3, raw_steps=24, collector_steps=16, sft_steps=2, sft_batch_size=8, ppo_decisions=8,
                       demo_episodes=1)
    out = tmp_path / "metrics" / "bench.json"
    result = run_bench(params, out, sizes)

    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))  # the file holds what was returned
    assert not list(out.parent.glob(".*"))  # atomic write: no temporary left beside it
    assert list(written["measurements"]) == sorted(measurement_names())
    for name, entry in written["measurements"].items():
        assert len(entry["repeats"]) == sizes.repeats, name
        assert all(r > 0 for r in entry["repeats"]), name
        assert entry["median"] == pytest.approx(statistics.median(entry["repeats"]), rel=1e-3), name
        assert entry["unit"] == ("samples/s" if name in ("sft", "ppo-update") else "env_steps/s")
        assert entry["peak_rss_mib"] > 0 and entry["rss_detail"]["process_peak_mib"] > 0, name
        assert len(entry["config"]["work_per_repeat"]) == sizes.repeats, name
    for vector in VECTOR_MODES:
        for n in NUM_ENVS:
            for k in CHUNK_LENS:
                config = written["measurements"][collector_name(vector, n, k)]["config"]
                assert (config["vector"], config["num_envs"], config["chunk_len"]) == (vector, n, k)
                assert config["decisions_per_env"] == -(-sizes.collector_steps // (n * k))
    assert written["measurements"]["raw-k4"]["config"]["work_per_repeat"] == [sizes.raw_steps] * sizes.repeats
    assert written["measurements"]["sft"]["config"]["work_per_repeat"] == [2 * 8] * sizes.repeats
    # tiny ppo: 2 epochs of one minibatch of 8 decisions, every repeat (target_kl is off)
    assert written["measurements"]["ppo-update"]["config"]["work_per_repeat"] == [16] * sizes.repeats

    medians = {name: {"median": e["median"]} for name, e in written["measurements"].items()}
    expected = compute_ratios(medians)
    assert written["ratios"] == expected
    assert set(written["ratios"]["collector_over_raw_k4"]) == {f"{v}-n{n}" for v in VECTOR_MODES for n in NUM_ENVS}
    assert all(r > 0 for group in written["ratios"].values() for r in group.values())

    machine = written["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch_threads"]["default"] >= 1
    assert {"torch", "metaworld", "mujoco"} <= set(machine["versions"])
    assert written["env"]["tasks"] == ["reach-v3"] and written["env"]["image_size"] == 32
    assert written["env"]["cameras"] == ["corner4"]
    assert written["settings"]["repeats"] == sizes.repeats and written["settings"]["raw_steps"] == 24


# ------------------------------------------------ stage times of one `dvc repro` (timed-repro)

def test_a_stage_lasts_from_its_running_line_to_the_next_one():
    from vla_pipeline.bench.timings import stage_seconds

    lines = [(0.0, "Verifying data sources\n"), (1.0, "Running stage 'collect_demos':\n"), (5.0, "> python -m ...\n"),
             (61.0, "Stage 'check_params' didn't change, skipping\n"), (100.0, "Running stage 'sft':\n"),
             (400.0, "Updating lock file 'dvc.lock'\n")]
    assert stage_seconds(lines, end=460.0) == {"collect_demos": 99.0, "sft": 360.0}
    assert stage_seconds([(0.0, "Data and pipelines are up to date.\n")], end=3.0) == {}


def test_minutes_add_up_over_the_main_chain_and_the_whole_run():
    from vla_pipeline.bench.timings import summarize

    result = summarize({"collect_demos": 60.0, "sft": 540.0, "ppo@s01": 300.0, "report": 30.0},
                       {"collect_demos", "sft", "report", "ppo@r01"}, {"model": "x", "usable_cpus": 2, "flags": []})
    assert result["main_chain_stages"] == ["collect_demos", "sft", "report"]
    assert result["main_chain_minutes"] == 10.5 and result["whole_default_minutes"] == 15.5


def test_the_main_chain_is_what_the_final_round_from_sft_needs():
    """Read from the project's own dvc.yaml and params.yaml: the final ACPPO round from sft, its
    predecessors, SFT and its evaluation, the demos; no small-set chain, no iRe-VLA round."""
    from tests.conftest import ROOT
    from vla_pipeline.bench.timings import final_round, main_chain_stages
    from vla_pipeline.config import load_params

    params = load_params(ROOT / "params.yaml")
    final = final_round(params)
    assert final is not None and params.chain_root(final) == "sft" and params.rounds[final].test
    stages = main_chain_stages(ROOT, final)
    assert {"collect_demos", "sft", "evaluate@sft", f"ppo@{final}", f"evaluate_round@{final}", "report"} <= stages
    assert not any(s.startswith(("ire_round", "offline", "sft_small", "evaluate@sft-small")) for s in stages)
    assert not any("@s0" in s or "@b0" in s for s in stages)


def test_share_at_limit_counts_steps_whose_largest_hand_command_is_clipped():
    from vla_pipeline.bench.pace import share_at_limit

    actions = [[1.0, 0.2, 0.0, -1.0],    # x at the limit
               [0.3, -0.995, 0.1, 1.0],  # y at the limit (its sign does not matter)
               [0.5, 0.5, 0.5, 1.0],     # none; the gripper (last column) never counts
               [0.0, 0.0, 0.98, -1.0]]   # just under
    assert share_at_limit(np.asarray(actions)) == 0.5
    assert share_at_limit(np.zeros((0, 4))) == 0.0


def test_expert_pace_runs_both_demonstrators_on_real_physics(tmp_path, tiny_params_file):
    """Real MetaWorld, tiny params (reach and drawer-close, 2 validation placements each): the
    `direct` plans finish both tasks sooner than MetaWorld's own scripts, and the table adds up."""
    from tests.conftest import invoke

    out = tmp_path / "pace.json"
    result = invoke(["expert-pace", "--episodes", "2", "--out", out, "--params", tiny_params_file])
    assert result.exit_code == 0, result.output
    table = json.loads(out.read_text())
    assert table["split"] == "validation" and table["episodes_per_task"] == 2
    for task, kinds in table["tasks"].items():
        assert kinds["direct"]["successes"] == kinds["metaworld"]["successes"] == 2, task
        assert kinds["direct"]["steps_to_success"] < kinds["metaworld"]["steps_to_success"], task
        assert 0.0 <= kinds["direct"]["share_at_limit"] <= 1.0 and task in result.output
    mean = statistics.mean(k["direct"]["steps_to_success"] for k in table["tasks"].values())
    assert table["mean"]["direct"]["steps_to_success"] == pytest.approx(mean)
    bad = invoke(["expert-pace", "--split", "expert", "--params", tiny_params_file])
    assert bad.exit_code != 0 and "choose from" in bad.output
