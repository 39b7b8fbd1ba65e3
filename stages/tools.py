"""Commands that are not DVC stages: benchmarks, the version history, diagnostics, seed tables,
cleaning, and the generated docs. `python -m stages.tools --help` lists them; no stage
depends on this module, so editing it makes nothing stale."""

import json
from pathlib import Path

import typer

from stages.common import PARAMS, echo_json, parse_splits, run, user_errors
from vla_pipeline import preflight
from vla_pipeline.config import load_params
from vla_pipeline.errors import PipelineError
from vla_pipeline.io import read_json, sweep_stale_temporaries, write_json_atomic

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=__doc__)
REPEATS = typer.Option(3, min=3, help="Timed repeats per figure; each figure is their median.")
COLLECTOR_STEPS = typer.Option(500, min=1, help="Env steps per repeat of the chunk collector.")
SFT_STEPS = typer.Option(20, min=1, help="SFT optimiser steps per repeat.")


@app.command("bench")
@user_errors
def bench(
    out: Path = typer.Option(Path("data/metrics/bench.json"), help="Write the benchmark here (JSON)."),
    repeats: int = REPEATS,
    raw_steps: int = typer.Option(1500, min=1, help="Env steps per repeat of the raw MetaWorld loop."),
    collector_steps: int = COLLECTOR_STEPS,
    sft_steps: int = SFT_STEPS,
    ppo_decisions: int = typer.Option(128, min=2, help="Decisions in the rollout batch each PPO update repeat uses."),
    demos: Path = typer.Option(None, help="Demo snapshot for SFT / PPO (default: collect a tiny one)."),
    params_file: Path = PARAMS,
):
    """Where the time goes, in one run: a raw MetaWorld loop as the limit, the chunk collector with
    the policy (sync / async, 1 / 2 workers, K = 1, 4, 8), SFT and PPO update samples/s, peak
    memory of each; medians of repeats and their ratios."""
    preflight.check_rendering()  # before the imports below load MuJoCo
    from vla_pipeline.bench.throughput import BenchSizes, describe, run_bench

    sizes = BenchSizes(repeats=repeats, raw_steps=raw_steps, collector_steps=collector_steps, sft_steps=sft_steps,
                       ppo_decisions=ppo_decisions)
    echo_json(describe(run_bench(load_params(params_file), out, sizes, demos)))


@app.command("bench-scale")
@user_errors
def bench_scale(
    out: Path = typer.Option(Path("data/metrics/bench-scale.json"), help="Write the benchmark here (JSON)."),
    repeats: int = REPEATS,
    collector_steps: int = COLLECTOR_STEPS,
    sft_steps: int = SFT_STEPS,
    demos: Path = typer.Option(None, help="Demo snapshot for SFT (default: collect a tiny one)."),
    params_file: Path = PARAMS,
):
    """Scale-out figures in one run: the collector on Ray with 1 / 2 / 4 env workers beside 2 local
    async workers, and SFT on 1 / 2 torchrun ranks (gloo on the CPU). Ray and gloo open
    sockets: run it in a private network namespace where that matters."""
    preflight.check_rendering()  # before the imports below load MuJoCo
    from vla_pipeline.bench.scale import run_scale_bench

    result = run_scale_bench(load_params(params_file), out, repeats, collector_steps, sft_steps, demos)
    echo_json({"ratios": result["ratios"], "total_seconds": result["total_seconds"]})


@app.command("readout-error")
@user_errors
def readout_error(
    checkpoint: Path = typer.Option(..., help="Policy checkpoint with an aux readout (policy.aux_state_weight > 0)."),
    out: Path = typer.Option(..., help="JSON to write: per task, the readout's object / goal errors in cm."),
    split: str = typer.Option("validation", help="Which split's evaluation episodes (first frames) to read."),
    params_file: Path = PARAMS,
):
    """Diagnosis: how precisely the policy reads object and goal positions from its pixels."""
    preflight.check_rendering()  # before the imports below load MuJoCo
    import torch

    from vla_pipeline.checkpoint import load_policy
    from vla_pipeline.envs.tasks import SPLITS, resolve_tasks
    from vla_pipeline.fits import check_policy_fits_env
    from vla_pipeline.readout import readout_errors

    if split not in SPLITS:
        raise PipelineError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    params = load_params(params_file)
    torch.set_num_threads(params.evaluate.num_threads)
    policy = load_policy(checkpoint, "cpu")
    tasks = resolve_tasks(params.env)
    check_policy_fits_env(policy, params.env, tasks, checkpoint)
    result = readout_errors(policy, params.env, params.evaluate, split, tasks)
    write_json_atomic(out, result)
    echo_json({task: {k: v["median_cm"] for k, v in row.items() if isinstance(v, dict)}
               for task, row in result["tasks"].items()})


@app.command("seeds")
@user_errors
def seeds(
    run_dirs: list[str] = typer.Option(..., "--run", help="NAME=DIR: a run's metrics folder (eval-sft.json, "
                                                          "eval-FINAL.json, paired-FINAL.json); repeat once per seed."),
    final: str = typer.Option(..., help="The final round's name (e.g. r03 or ire-sl2)."),
    split: str = typer.Option("test", help="Split or group to compare on: test, validation, train, expert, new."),
    out: Path = typer.Option(None, help="Write the table here (JSON metrics)."),
):
    """Seeds of the whole chain side by side: SFT vs the final round on one split, paired."""
    from vla_pipeline.stats import seed_table

    (split,) = parse_splits(split)
    runs = {}
    for item in run_dirs:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise PipelineError(f"--run {item!r}: expected NAME=DIR")
        runs[name] = seed_run(Path(folder), final)
    try:
        table = seed_table(runs, split, final)
    except (KeyError, TypeError, ValueError) as err:
        raise PipelineError(f"seeds: {err}") from None
    if out is not None:
        write_json_atomic(out, table)
    echo_json(table)


def seed_run(folder: Path, final: str) -> dict:
    """One seed's SFT, final-round and paired metrics from its metrics folder."""
    sft = read_json(folder / "eval-sft.json", "SFT metrics")
    if (folder / "groups-sft.json").exists():  # SFT on iRe-VLA's expert / new groups
        sft = {**read_json(folder / "groups-sft.json", "SFT group metrics"), **sft}
    return {"sft": sft, "final": read_json(folder / f"eval-{final}.json", f"{final} metrics"),
            "paired": read_json(folder / f"paired-{final}.json", f"{final} vs SFT comparison")}


@app.command("versions")
@user_errors
def versions(
    rev: str = typer.Option("HEAD", help="Git revision whose history to list."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON records instead of text."),
    repo: Path = typer.Option(Path("."), help="Repository root."),
):
    """Every versioned checkpoint and buffer: commit, round inputs, params diff, test success."""
    from vla_pipeline.versions import format_versions, list_versions

    records = list_versions(repo, rev)
    typer.echo(json.dumps(records, indent=2, sort_keys=True) if as_json else format_versions(records))


@app.command("expert-pace")
@user_errors
def expert_pace(
    episodes: int = typer.Option(10, min=1, max=50, help="Placements per task (the first of the split)."),
    split: str = typer.Option("validation", help="Whose placements: validation, test or train."),
    out: Path = typer.Option(None, help="Write the table here (JSON)."),
    params_file: Path = PARAMS,
):
    """Both scripted demonstrators per task: steps to success and the share of steps with a hand
    axis at the action limit (how much room a policy has to finish sooner than its teacher)."""
    from vla_pipeline.bench.pace import expert_pace as measure
    from vla_pipeline.constants import SPLITS

    (split,) = parse_splits(split, SPLITS)
    table = measure(load_params(params_file), episodes, split)
    if out is not None:
        write_json_atomic(out, table)
    for task, kinds in table["tasks"].items():
        typer.echo(f"{task:26s} " + _pace_cells(kinds))
    typer.echo(f"{'mean over tasks':26s} " + _pace_cells(table["mean"]))


def _pace_cells(kinds: dict) -> str:
    return " | ".join(f"{kind} {_steps(row)} steps, {row['share_at_limit']:.2f} at the limit" for kind, row in kinds.items())


def _steps(row: dict) -> str:
    return "-" if row["steps_to_success"] is None else f"{row['steps_to_success']:5.1f}"


@app.command("sweep")
@user_errors
def sweep(root: Path = typer.Option(Path("data"), help="Directory to clean.")):
    """Remove the hidden temporaries (`.<name>.tmp-*`, `.<name>.old-*`) that killed runs left."""
    for path in sweep_stale_temporaries(root):
        typer.echo(f"removed {path}")


@app.command("timed-repro", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def timed_repro(
    ctx: typer.Context,
    out: Path = typer.Option(Path("data/metrics/timings.json"), help="Write the stage times here (JSON)."),
    repo: Path = typer.Option(Path("."), help="Repository root."),
    params_file: Path = PARAMS,
):
    """`dvc repro` (any extra arguments passed on) with each stage's wall time, the main chain's
    and the whole run's minutes and the CPU written to --out; nothing is written if it fails."""
    from vla_pipeline.bench.timings import timed_repro as run_timed

    result = run_timed(list(ctx.args), repo, load_params(params_file), out)
    typer.echo(f"main chain {result['main_chain_minutes']} min, whole run {result['whole_default_minutes']} min "
               f"-> {out}")


@app.command("docs")
@user_errors
def docs(
    check: bool = typer.Option(False, "--check", help="Only name the generated blocks that differ; exit 1 if any."),
    repo: Path = typer.Option(Path("."), help="Repository root."),
):
    """Regenerate the README's results block and docs/results.md from the committed data/metrics."""
    from vla_pipeline.report.docs import stale_docs, update_docs

    if check:
        stale = stale_docs(repo)
        if stale:
            raise PipelineError(f"generated docs differ from data/metrics: {', '.join(stale)} "
                                "(run python -m stages.tools docs)")
        typer.echo("generated docs match data/metrics")
        return
    for path in update_docs(repo):
        typer.echo(f"rewrote {path}")


if __name__ == "__main__":
    run(app, __spec__.name)
