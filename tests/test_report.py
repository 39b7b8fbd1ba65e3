"""The report stage: which methods it lists, self-containment of the page, headline metrics,
video choice, bad input, and a real headless-Chromium screenshot where Chromium exists."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from stages.report import app
from tests.conftest import tiny_raw
from vla_pipeline.config import parse_params
from vla_pipeline.errors import PipelineError
from vla_pipeline.evaluation import EpisodeResult, build_metrics, episode_records, video_candidates, write_video
from vla_pipeline.report import build_report

TASKS = ("reach-v3", "drawer-close-v3")
runner = CliRunner()


def results_for(successes: dict[str, list[bool]]) -> list[EpisodeResult]:
    """Episodes split -> outcomes per task, with fixed configurations so methods pair up."""
    out = []
    for split, outcomes in successes.items():
        for i, ok in enumerate(outcomes):
            task = TASKS[i % 2]
            out.append(EpisodeResult(task, 7, i, split, 100 + i, ok, 40 + i if ok else -1, 40 + i if ok else 100))
    return out


def write_evaluation(metrics_dir, name, successes):
    results = results_for(successes)
    header = {"policy": name, "protocol": {"horizon": 100, "cameras": ["corner4"], "image_size": 32,
                                           "metaworld": "3.1.1", "mujoco": "3.3.0", "reward": "sparse",
                                           "split_seeds": {"test": 4242, "validation": 1234}}}
    (metrics_dir / f"eval-{name}.json").write_text(json.dumps(build_metrics(results, TASKS, 100, header)))
    (metrics_dir / f"episodes-{name}.json").write_text(json.dumps(episode_records(results)))


def write_clip(folder, task, outcome):
    """A short real MP4 (a moving square) named as the evaluate stage names its videos."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for t in range(12):
        frame = np.full((1, 32, 32, 3), 200, np.uint8)
        frame[0, 10:20, t:t + 8] = (200, 30, 30)
        frames.append(frame)
    write_video(folder / f"{task}-test-4242-03-{outcome}.mp4", frames, scale=2)


@pytest.fixture
def world(tmp_path):
    """Metrics for sft, r01 (validation only) and corft; params that also plan ire rounds (absent)."""
    metrics, videos = tmp_path / "metrics", tmp_path / "videos"
    metrics.mkdir()
    write_evaluation(metrics, "expert", {"test": [True] * 4, "validation": [True] * 2})
    write_evaluation(metrics, "sft", {"test": [True, False, True, False], "validation": [True, False]})
    write_evaluation(metrics, "r01", {"validation": [True, True]})
    write_evaluation(metrics, "sft-offline", {"test": [True, True, False, False], "validation": [True, True]})
    write_evaluation(metrics, "corft", {"test": [True, True, True, False], "validation": [True, True]})
    (metrics / "train-sft.json").write_text(json.dumps([{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]))
    (metrics / "train-r01.json").write_text(json.dumps(
        [{"iteration": i, "env_steps": 100, "success_rate": 0.5, "steps_to_success": 50.0} for i in (1, 2)]))
    write_clip(videos / "sft", "reach-v3", "success")
    write_clip(videos / "sft", "reach-v3", "fail")
    write_clip(videos / "corft", "drawer-close-v3", "success")
    params = parse_params(tiny_raw())
    return metrics, videos, params


def test_report_lists_every_method_with_metrics_and_embeds_everything(world, tmp_path):
    metrics, videos, params = world
    out = tmp_path / "report"
    summary = build_report(metrics, videos, params, out)
    assert summary["methods"] == ["expert", "sft", "sft-offline", "r01", "corft"]  # pipeline order; no ire rows
    assert summary["previews"] == 3 and summary["plots"] == 2  # RL chain and loss curves; no offline curve
    page = (out / "report.html").read_text()
    for name in summary["methods"]:
        assert f'<td class="l">{name}</td>' in page
    assert "ire-rl1" not in page and "ire-sl1" not in page  # planned by params, never evaluated
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert len(sources) == 2 + 2 * 3  # two plots; an animation and a still strip per video
    assert all(s.startswith(("data:image/png;base64,", "data:image/webp;base64,")) for s in sources)
    # Opens with no network: nothing to fetch (no scripts, stylesheets, fonts or remote URLs).
    assert not re.search(r"https?://|<script|<link|@import|url\(", page)
    md = (out / "summary.md").read_text()
    assert "| corft | CO-RFT" in md and "| r01 |" in md


def test_protocol_names_the_demonstrator_of_each_demo_set(world, tmp_path):
    """Steps follow the demonstrator: the page must say which scripts made the main and CO-RFT sets."""
    metrics, videos, _ = world
    build_report(metrics, videos, parse_params(tiny_raw(demos={"expert": "direct"})), tmp_path / "report")
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "- demonstrators: demos direct, offline_demos metaworld" in md


def test_headline_metrics_keep_only_the_headline(world, tmp_path):
    metrics, videos, params = world
    build_report(metrics, videos, params, tmp_path / "report")
    headline = tmp_path / "report" / "headline"
    assert sorted(p.name for p in headline.iterdir()) == [
        "corft.json", "expert.json", "r01.json", "sft-offline.json", "sft.json"]
    sft = json.loads((headline / "sft.json").read_text())
    assert set(sft) == {"test", "validation"} and set(sft["test"]) == {"success", "ci_lo", "ci_hi", "steps"}
    # reach solved episodes 0 and 2 (40 and 42 steps), drawer-close none: success 0.5, steps 41
    assert sft["test"]["success"] == 0.5 and sft["test"]["steps"] == 41.0
    assert set(json.loads((headline / "r01.json").read_text())) == {"validation"}


def test_paired_columns_compare_with_the_right_base(world, tmp_path):
    metrics, videos, params = world
    build_report(metrics, videos, params, tmp_path / "report")
    md = (tmp_path / "report" / "summary.md").read_text()
    corft = next(line for line in md.splitlines() if line.startswith("| corft |"))
    # vs sft-offline on test: corft solves episode 2 that sft-offline missed, nothing the other way
    assert "| sft-offline | test | +25.0 pp | 1 / 0 | 1 |" in corft
    r01 = next(line for line in md.splitlines() if line.startswith("| r01 |"))
    assert "| sft | validation | +50.0 pp | 1 / 0 |" in r01  # r01 ran validation only


def test_a_foreign_metrics_file_is_refused_by_name(world, tmp_path):
    metrics, videos, params = world
    (metrics / "eval-corft.json").write_text(json.dumps({"accuracy": 0.9}))
    with pytest.raises(PipelineError, match="eval-corft.json: not an evaluation's metrics"):
        build_report(metrics, videos, params, tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_report_command_and_its_errors(world, tmp_path, tiny_params_file):
    metrics, videos, _ = world
    out = tmp_path / "cli-report"
    result = runner.invoke(app, ["--metrics", str(metrics), "--videos", str(videos), "--out", str(out),
                                 "--params", str(tiny_params_file)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["methods"][0] == "expert" and (out / "report.html").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["--metrics", str(empty), "--videos", str(videos), "--out", str(out),
                                 "--params", str(tiny_params_file)])
    assert result.exit_code == 1 and "no evaluation metrics" in result.output


def test_a_failed_report_leaves_the_earlier_outputs_as_they_were(world, tmp_path, monkeypatch):
    from vla_pipeline.report import render

    metrics, videos, params = world
    out = tmp_path / "report"
    build_report(metrics, videos, params, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write_evaluation(metrics, "corft", {"test": [False] * 4, "validation": [False, False]})  # new numbers

    def broken(page):
        raise RuntimeError("template failed")

    monkeypatch.setattr(render, "html", broken)
    with pytest.raises(RuntimeError, match="template failed"):
        build_report(metrics, videos, params, out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_seed_table_of_another_shape_is_refused_by_name(world, tmp_path):
    metrics, videos, params = world
    (metrics / "seeds-x.json").write_text(json.dumps([1, 2]))
    with pytest.raises(PipelineError, match="seeds-x.json: not a seed table"):
        build_report(metrics, videos, params, tmp_path / "report")
    (metrics / "seeds-x.json").write_text(json.dumps({"split": "test", "seeds": {"s0": {"final_success": "high"}}}))
    with pytest.raises(PipelineError, match="seeds-x.json: not a seed table"):
        build_report(metrics, videos, params, tmp_path / "report")


def test_video_candidates_keep_each_outcome_in_evaluation_order():
    results = results_for({"test": [False, True, True, True, False, False], "validation": [True, False]})
    slots = video_candidates(results, "test")
    # reach: episodes 0 (fail), 2, 4 ; drawer-close: 1, 3 (success), 5 (fail); validation ignored
    assert {k: [e.variation for e in v] for k, v in slots.items()} == {
        ("drawer-close-v3", False): [5], ("drawer-close-v3", True): [1, 3],
        ("reach-v3", False): [0, 4], ("reach-v3", True): [2]}
    assert {e.split for v in slots.values() for e in v} == {"test"}


def test_a_video_is_labelled_by_what_it_shows(tmp_path, tiny_checkpoint, tiny_params):
    """The evaluation's outcome can differ from a re-run's: claim the untrained policy solved
    every reach episode; no re-run does, so no reach video is filed as a success."""
    from vla_pipeline.checkpoint import load_policy
    from vla_pipeline.evaluation import evaluation_episodes, write_videos

    specs = evaluation_episodes(tiny_params.env, tiny_params.evaluate, ["test"])
    claimed = [EpisodeResult(e.task, e.variation_seed, e.variation, e.split, e.seed, e.task == "reach-v3",
                             10 if e.task == "reach-v3" else -1, 100) for e in specs]
    names = write_videos(load_policy(tiny_checkpoint), tiny_params.env, tiny_params.evaluate, claimed, "test",
                         tmp_path / "v")
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == sorted(names)
    assert not [n for n in names if n.startswith("reach-v3")]  # the claimed successes were never shown
    assert all(n.endswith("-fail.mp4") for n in names)  # drawer-close: only re-runs that did fail


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_light_page_git_keeps_has_stills_of_the_tested_policies_only(world, tmp_path):
    """index.html is what a clone opens: no animations, stills only for policies evaluated on
    test (r01 ran validation only: its clip is on report.html, not here), nothing to fetch."""
    metrics, videos, params = world
    write_clip(videos / "r01", "reach-v3", "success")
    build_report(metrics, videos, params, tmp_path / "report")
    full, light = ((tmp_path / "report" / name).read_text() for name in ("report.html", "index.html"))
    assert "r01 reach-v3 success stills" in full and "r01 reach-v3 success stills" not in light
    assert "animation" in full and 'animation"' not in light
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', light)
    assert len(sources) == 2 + 3  # two plots; a still strip for sft's two clips and corft's one
    assert not re.search(r"https?://|<script|<link|@import|url\(", light)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian package `chromium`; "
                                              "`bash scripts/setup.sh --browser` installs it)")
@pytest.mark.parametrize("page", ["report.html", "index.html"])
def test_page_renders_in_headless_chromium(world, tmp_path, page):
    """A real browser draws the page: the per-task cells' colours and the rollout frames (the
    test clip's red square) are on the screenshot. (That the page fetches nothing is the
    static check above: a file:// page with data URIs gives Chromium nothing to fetch.)"""
    metrics, videos, params = world
    build_report(metrics, videos, params, tmp_path / "report")
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--proxy-server=127.0.0.1:9", "--window-size=1280,4000", f"--screenshot={shot}",
                    (tmp_path / "report" / page).as_uri()], check=True, capture_output=True, timeout=120)
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape[:2] == (4000, 1280)
    solved = np.array([160, 245, 165])  # the heat colour of a task at success 1.0 (render._heat)
    assert (np.abs(image - solved).sum(axis=2) <= 6).sum() > 500
    red = (image[..., 0] > 150) & (image[..., 1] < 90) & (image[..., 2] < 90)  # the clip's moving square
    assert red.sum() > 50


def test_benchmark_section_shows_medians_and_ratios_against_targets(world, tmp_path):
    from vla_pipeline.bench.throughput import compute_ratios, measurement_names

    metrics, videos, params = world
    measurements = {name: {"median": 100.0 + i, "unit": "env_steps/s", "peak_rss_mib": 700.0}
                    for i, name in enumerate(measurement_names())}
    (metrics / "bench.json").write_text(json.dumps({"measurements": measurements,
                                                    "ratios": compute_ratios(measurements)}))
    build_report(metrics, videos, params, tmp_path / "report")
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "| raw-k4 | 101 | env_steps/s | 700 |" in md
    ratio = compute_ratios(measurements)["collector_over_raw_k4"]["async-n2"]
    assert f"| collector_over_raw_k4.async-n2 | {ratio:.3g} | >= 0.8 |" in md
    assert "| n2_over_n1.async-k4 |" in md and "| n2_over_n1.sync-k4 |" in md
    assert "bench-scale" not in md  # no such file: no section
    (metrics / "bench-scale.json").write_text(json.dumps({
        "measurements": {"collector-ray-n4-k4": {"median": 344.0, "unit": "env_steps/s", "peak_rss_mib": 8836.5}},
        "ratios": {"ray_n2_over_n1": 1.5, "ray_over_async_n2": {"n4": 1.137}}}))
    build_report(metrics, videos, params, tmp_path / "report")
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "## Benchmark (`python -m stages bench-scale`, data/metrics/bench-scale.json)" in md
    assert "| collector-ray-n4-k4 | 344 | env_steps/s | 8836 |" in md or "| collector-ray-n4-k4 | 344 | env_steps/s | 8837 |" in md
    assert "| ray_over_async_n2.n4 | 1.14 |  |" in md and "| ray_n2_over_n1 | 1.5 |  |" in md
    (metrics / "bench.json").write_text(json.dumps([1, 2]))
    with pytest.raises(PipelineError, match="bench.json: not benchmark results"):
        build_report(metrics, videos, params, tmp_path / "report")


def test_a_seed_table_of_an_earlier_default_is_marked_not_of_this_run(world, tmp_path):
    """The report keeps a seed table measured before the default changed, but says it no longer
    describes the committed run: none of its seeds scores what eval-<final>.json scores now."""
    metrics, videos, params = world
    test = json.loads((metrics / "eval-corft.json").read_text())["test"]
    committed, steps = test["success"], test["steps_to_success"]

    def table(*finals, steps=steps):
        rows = {f"s{i}": {"final_success": s, "success_gain": s - 0.5, "mcnemar_p": 0.5,
                          "final_steps_to_success": steps} for i, s in enumerate(finals)}
        return {"final": "corft", "split": "test", "seeds": rows, "mean_success_gain": 0.1,
                "gain_positive_on_every_seed": True}

    (metrics / "seeds-now.json").write_text(json.dumps(table(committed, committed - 0.25)))
    (metrics / "seeds-old.json").write_text(json.dumps(table(committed - 0.25, committed - 0.5)))
    (metrics / "seeds-unnamed.json").write_text(json.dumps({**table(0.1), "final": None}))
    # the same success under another default (steps differ): not this run
    (metrics / "seeds-tied.json").write_text(json.dumps(table(committed, steps=steps + 1.5)))
    build_report(metrics, videos, params, tmp_path / "report")
    summary = (tmp_path / "report" / "summary.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in summary.splitlines() if "seeds-" in line}
    assert "| yes | seeds-now.json |" in rows["seeds-now"]
    assert f"| no: an earlier default (corft now {committed:.3f}) | seeds-old.json |" in rows["seeds-old"]
    assert "| - | seeds-unnamed.json |" in rows["seeds-unnamed"]
    assert "| no: an earlier default" in rows["seeds-tied"]
    assert "an earlier default (corft now" in (tmp_path / "report" / "report.html").read_text()


def test_the_papers_row_names_the_chains_last_round_on_test(world):
    """ACPPO evaluates r02 (the iRe-VLA baseline at its env-step budget) and r04 on test: the
    papers table compares the chain's last one, whatever order the evaluations sort in, and
    even when an earlier round scores higher on test (choosing by test would be peeking)."""
    from vla_pipeline.report.collect import load_results, ours_beside_papers

    metrics, _, _ = world
    write_evaluation(metrics, "r02", {"test": [True] * 4, "validation": [True, True]})
    write_evaluation(metrics, "r04", {"test": [True, True, True, False], "validation": [True, True]})
    params = parse_params(tiny_raw(rounds={"r01": {"policy_in": "sft", "buffer_in": "demos", "base": "sft"},
                                           "r02": {"policy_in": "r01", "buffer_in": "r01", "base": "sft",
                                                   "test": True},
                                           "r03": {"policy_in": "r02", "buffer_in": "r02", "base": "sft"},
                                           "r04": {"policy_in": "r03", "buffer_in": "r03", "base": "sft", "test": True}}))
    ours = ours_beside_papers(load_results(metrics, params))["ACPPO"]
    assert ours.startswith("0.500 -> 0.750;") and "(r04, test)" in ours, ours


def test_a_chain_from_the_small_set_is_its_own_family_paired_with_sft_small(world, tmp_path):
    """The family and the pairing come from params (`chain`, `base`), not from names in the code."""
    metrics, videos, _ = world
    write_evaluation(metrics, "sft-small", {"test": [False, False, True, False], "validation": [False, False]})
    write_evaluation(metrics, "s01", {"test": [True, False, True, True], "validation": [True, False]})
    params = parse_params(tiny_raw(rounds={
        "r01": {"policy_in": "sft", "buffer_in": "demos", "base": "sft"},
        "s01": {"policy_in": "sft-small", "buffer_in": "demos-small", "base": "sft-small",
                "chain": "self-BC from the small set", "set": {"ppo": {"policy_coef": 0.0}}, "test": True}}))
    build_report(metrics, videos, params, tmp_path / "report")
    md = (tmp_path / "report" / "summary.md").read_text()
    s01 = next(line for line in md.splitlines() if line.startswith("| s01 |"))
    assert "| sft-small | test | +50.0 pp | 2 / 0 |" in s01, s01  # vs sft-small, not sft
    assert "self-BC from the small set" in md
