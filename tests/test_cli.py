"""The Typer commands, run in-process with CliRunner on real (tiny) MetaWorld data."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT, invoke, tiny_raw
from vla_pipeline.config import parse_params



def write_params(tmp_path, **overrides):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(**overrides)))
    return path


def test_help_lists_every_stage_and_tool():
    proc = subprocess.run([sys.executable, "-m", "stages", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    for name in ("collect-demos", "sft", "evaluate", "evaluate-expert", "compare", "check-params", "ppo", "report",
                 "bench", "seeds", "docs"):
        assert f"  {name} " in proc.stdout


def test_misspelled_param_exits_non_zero_and_writes_nothing(tmp_path):
    params = tmp_path / "params.yaml"
    raw = tiny_raw()
    raw["demos"]["episodes_per_tsk"] = 3
    params.write_text(yaml.safe_dump(raw))
    out = tmp_path / "demos"
    result = invoke(["collect-demos", "--params", str(params), "--out", str(out),
                                 "--metrics", str(tmp_path / "m.json")])
    assert result.exit_code == 1
    assert "unknown key 'demos.episodes_per_tsk'" in result.output
    assert "did you mean 'demos.episodes_per_task'" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_unknown_task_exits_non_zero(tmp_path):
    params = write_params(tmp_path, env={"tasks": ["reach-v3", "fly-to-moon-v3"]})
    result = invoke(["check-params", "--params", str(params)])
    assert result.exit_code == 1 and "unknown MetaWorld task 'fly-to-moon-v3'" in result.output


def test_collect_demos_writes_snapshot_and_counts(tmp_path):
    params = write_params(tmp_path, demos={"episodes_per_task": 1})
    out, metrics = tmp_path / "demos", tmp_path / "demos.json"
    result = invoke(["collect-demos", "--params", str(params), "--out", str(out), "--metrics", str(metrics)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["drawer-close-v3.parquet", "manifest.json", "reach-v3.parquet"]
    counts = json.loads(metrics.read_text())
    assert counts["expert"]["reach-v3"]["episodes"] == 1 and counts["total_episodes"] >= 1


def test_sft_refuses_a_missing_snapshot(tmp_path):
    params = write_params(tmp_path)
    result = invoke(["sft", "--params", str(params), "--demos", str(tmp_path / "nope"),
                                 "--out", str(tmp_path / "ck"), "--curve", str(tmp_path / "c.json")])
    assert result.exit_code == 1 and "buffer snapshot not found" in result.output
    assert not (tmp_path / "ck").exists()


def test_sft_refuses_demos_of_another_image_size_or_cameras(tmp_path, tiny_demos):
    for env, expected in (({"image_size": 48}, "at 32 px; params.yaml asks for env.cameras ['corner4'] at 48 px"),
                          ({"cameras": ["corner4", "topview"]}, "asks for env.cameras ['corner4', 'topview']")):
        params = write_params(tmp_path, env=env)
        result = invoke(["sft", "--params", str(params), "--demos", str(tiny_demos),
                                     "--out", str(tmp_path / "ck"), "--curve", str(tmp_path / "c.json")])
        assert result.exit_code == 1 and expected in result.output and "rerun collect_demos" in result.output


def test_another_field_of_view_is_refused_for_demos_and_checkpoints(tmp_path, tiny_demos, tiny_checkpoint):
    """Demos and a checkpoint of MuJoCo's views must not meet a zoomed camera (`env.camera_fovy`):
    the pixels would be another input, silently."""
    params = write_params(tmp_path, env={"camera_fovy": {"corner4": 45}})
    result = invoke(["sft", "--params", str(params), "--demos", str(tiny_demos),
                                 "--out", str(tmp_path / "ck"), "--curve", str(tmp_path / "c.json")])
    assert result.exit_code == 1, result.output
    assert "was rendered with env.camera_fovy {} (MuJoCo views); params.yaml asks for {'corner4': 45.0}" in result.output
    assert "rerun collect_demos" in result.output and not (tmp_path / "ck").exists()
    result = invoke(["evaluate", "--params", str(params), "--checkpoint", str(tiny_checkpoint),
                                 "--name", "sft", "--metrics", str(tmp_path / "m.json"), "--table", str(tmp_path / "t.json")])
    assert result.exit_code == 1 and "was trained with env.camera_fovy {} (MuJoCo views)" in result.output
    assert not (tmp_path / "m.json").exists()


def test_sft_trains_with_the_recipe_it_is_given(tmp_path, tiny_demos):
    """`--recipe sft_offline` trains with `sft` plus the keys `sft_offline` replaces (CO-RFT's step 1)."""
    params = write_params(tmp_path, sft={"steps": 4, "log_every": 2}, sft_offline={"steps": 2})
    for recipe, steps in (("sft", [2, 4]), ("sft_offline", [2])):
        curve = tmp_path / f"{recipe}.json"
        result = invoke(["sft", "--params", str(params), "--demos", str(tiny_demos), "--out",
                                     str(tmp_path / recipe), "--curve", str(curve), "--recipe", recipe])
        assert result.exit_code == 0, result.output
        assert [r["step"] for r in json.loads(curve.read_text())] == steps
    result = invoke(["sft", "--params", str(params), "--demos", str(tiny_demos), "--out",
                                 str(tmp_path / "bad"), "--curve", str(tmp_path / "bad.json"), "--recipe", "sft-offline"])
    assert result.exit_code == 1 and "unknown SFT recipe 'sft-offline'" in result.output
    assert not (tmp_path / "bad").exists()


def test_sft_then_evaluate(tmp_path, tiny_demos):
    params = write_params(tmp_path, sft={"steps": 4, "log_every": 2})
    ck = tmp_path / "ck"
    result = invoke(["sft", "--params", str(params), "--demos", str(tiny_demos), "--out", str(ck),
                                 "--curve", str(tmp_path / "curve.json")])
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in json.loads((tmp_path / "curve.json").read_text())] == [2, 4]
    args = ["evaluate", "--params", str(params), "--checkpoint", str(ck), "--name", "sft",
            "--metrics", str(tmp_path / "m.json"), "--table", str(tmp_path / "t.json"), "--videos", str(tmp_path / "v")]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["splits"] == ["test", "validation", "train"]
    assert [metrics[s]["episodes"] for s in metrics["splits"]] == [4, 2, 2]  # 2 tasks x (2, 1, 1)
    assert set(metrics["tasks"]) == {"reach-v3", "drawer-close-v3"}
    assert metrics["protocol"]["horizon"] == 100
    from vla_pipeline.report.figures import VIDEO_NAME

    videos = [VIDEO_NAME.match(p.name) for p in (tmp_path / "v").glob("*.mp4")]
    assert videos and all(v and v["split"] == "test" for v in videos)  # the first evaluated split
    slots = [(v["task"], v["outcome"]) for v in videos]
    assert len(slots) == len(set(slots))  # at most one success and one failure per task
    rows = json.loads((tmp_path / "t.json").read_text())
    assert {r["split"] for r in rows} == {"test", "validation", "train"}


def test_evaluate_refuses_a_truncated_checkpoint_and_keeps_old_metrics(tmp_path, tiny_checkpoint):
    params = write_params(tmp_path)
    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ck)
    weights = ck / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (tmp_path / "m.json").write_text('{"old": true}\n')
    result = invoke(["evaluate", "--params", str(params), "--checkpoint", str(ck), "--name", "sft",
                                 "--metrics", str(tmp_path / "m.json"), "--table", str(tmp_path / "t.json"),
                                 "--videos", str(tmp_path / "v")])
    assert result.exit_code == 1 and "unreadable safetensors" in result.output
    assert (tmp_path / "m.json").read_text() == '{"old": true}\n'
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "v").exists()


def test_evaluate_expert(tmp_path):
    params = write_params(tmp_path)
    result = invoke(["evaluate-expert", "--params", str(params), "--metrics", str(tmp_path / "e.json"),
                                 "--table", str(tmp_path / "t.json"), "--episodes", str(tmp_path / "ep.json")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "e.json").read_text())
    assert metrics["policy"] == "expert" and metrics["test"]["success"] > 0.5
    episodes = json.loads((tmp_path / "ep.json").read_text())
    assert len(episodes) == sum(metrics[s]["episodes"] for s in metrics["splits"]) == 8
    # The expert against itself: every pair concordant, p = 1.
    result = invoke(["compare", "--base", str(tmp_path / "ep.json"), "--new", str(tmp_path / "ep.json"),
                                 "--out", str(tmp_path / "paired.json")])
    assert result.exit_code == 0, result.output
    paired = json.loads((tmp_path / "paired.json").read_text())
    assert paired["splits"] == ["test", "validation", "train"]
    assert paired["test"]["only_base"] == paired["test"]["only_new"] == 0 and paired["test"]["mcnemar_p"] == 1.0
    assert paired["test"]["steps_diff_both_solved"] == 0.0


def test_compare_refuses_other_episode_lists_and_foreign_json(tmp_path):
    record = {"task": "reach-v3", "variation_seed": 4242, "variation": 40, "split": "test", "seed": 1,
              "success": True, "steps_to_success": 30, "length": 30}
    (tmp_path / "a.json").write_text(json.dumps([record]))
    (tmp_path / "b.json").write_text(json.dumps([{**record, "variation": 41}]))
    (tmp_path / "c.json").write_text(json.dumps({"all": {}}))
    result = invoke(["compare", "--base", str(tmp_path / "a.json"), "--new", str(tmp_path / "b.json")])
    assert result.exit_code == 1 and "different test episodes" in result.output
    result = invoke(["compare", "--base", str(tmp_path / "a.json"), "--new", str(tmp_path / "c.json")])
    assert result.exit_code == 1 and "not per-episode results" in result.output
    result = invoke(["compare", "--base", str(tmp_path / "a.json"), "--new", str(tmp_path / "nope.json")])
    assert result.exit_code == 1 and "no such file" in result.output


def test_a_learning_rate_that_can_only_diverge_is_refused_before_training(tmp_path, tiny_demos):
    params = write_params(tmp_path, sft={"steps": 30, "lr": 1.0e12, "weight_decay": 0.0, "warmup_steps": 0})
    ck = tmp_path / "ck"
    result = invoke(["sft", "--params", str(params), "--demos", str(tiny_demos), "--out", str(ck),
                     "--curve", str(tmp_path / "curve.json")])
    assert result.exit_code == 1, result.output
    assert "sft.lr" in result.output
    assert not ck.exists() and not (tmp_path / "curve.json").exists()


def test_diverging_sft_stops_with_a_clear_error(tiny_demos):
    """The guard behind the bound: a run that still diverges stops on its first non-finite loss.
    (`model_copy` skips validation, as a value inside the bound that diverges would.)"""
    from vla_pipeline.data.snapshot import load_snapshot
    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.errors import PipelineError
    from vla_pipeline.policies.factory import build_policy
    from vla_pipeline.training.supervised import train_sft

    params = parse_params(tiny_raw())
    params = params.model_copy(update={"sft": params.sft.model_copy(update={
        "steps": 30, "lr": 1.0e12, "weight_decay": 0.0, "warmup_steps": 0})})
    table, _ = load_snapshot(tiny_demos)
    policy = build_policy(params.policy, params.env, resolve_tasks(params.env))
    with pytest.raises(PipelineError, match="non-finite loss or gradient"):
        train_sft(policy, table, params)


def test_evaluate_splits_option_and_round_default(tmp_path, tiny_checkpoint):
    """A round without `test: true` is evaluated on validation only; --splits overrides; a bad name is refused."""
    params = write_params(tmp_path, rounds={"r01": {"policy_in": "sft", "buffer_in": "demos", "base": "sft"}})
    base = ["evaluate", "--params", str(params), "--checkpoint", str(tiny_checkpoint), "--table",
            str(tmp_path / "t.json"), "--videos", str(tmp_path / "v")]
    result = invoke(base + ["--name", "r01", "--metrics", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["splits"] == ["validation"]
    result = invoke(base + ["--name", "x", "--metrics", str(tmp_path / "x.json"), "--splits", "train,validation"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "x.json").read_text())["splits"] == ["validation", "train"]
    result = invoke(base + ["--name", "x", "--metrics", str(tmp_path / "y.json"), "--splits", "heldout"])
    assert result.exit_code == 1 and "--splits 'heldout': choose from test, validation, train" in result.output


def test_readout_error_measures_the_aux_readout_and_refuses_policies_without_one(tmp_path, tiny_demos, tiny_checkpoint):
    """SFT with the aux readout acting on its estimate (policy.act_on_estimate), then the readout's
    error on each validation episode's first frame; a policy without the readout is refused."""
    params = write_params(tmp_path, sft={"steps": 4, "log_every": 2},
                          policy={"aux_state_weight": 1.0, "act_on_estimate": True})
    ck = tmp_path / "ck"
    result = invoke(["sft", "--params", str(params), "--demos", str(tiny_demos), "--out", str(ck),
                                 "--curve", str(tmp_path / "curve.json")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "readout.json"
    result = invoke(["readout-error", "--params", str(params), "--checkpoint", str(ck), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["split"] == "validation" and set(report["tasks"]) == {"reach-v3", "drawer-close-v3"}
    for row in report["tasks"].values():
        assert row["episodes"] == 1  # tiny params: 1 validation episode per task
        assert 0 < row["object_xy"]["median_cm"] <= row["object_xyz"]["median_cm"]
    (tmp_path / "plain").mkdir()
    plain = write_params(tmp_path / "plain")
    result = invoke(["readout-error", "--params", str(plain), "--checkpoint", str(tiny_checkpoint),
                                 "--out", str(tmp_path / "none.json")])
    assert result.exit_code == 1 and "no aux readout" in result.output
    assert not (tmp_path / "none.json").exists()
    result = invoke(["readout-error", "--params", str(params), "--checkpoint", str(ck),
                                 "--out", str(out), "--split", "expert"])
    assert result.exit_code == 1 and "choose one of test, validation, train" in result.output
