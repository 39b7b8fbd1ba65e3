"""One command per DVC stage. Options carry only paths and names; the numbers that change
results come from the stage's own `params.yaml` sections (validated before any work)."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable

import typer

from vla_pipeline import preflight
from vla_pipeline.errors import PipelineError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="vla-pipeline stages (see dvc.yaml).")

PARAMS = typer.Option(Path("params.yaml"), "--params", help="Params file (validated as a whole).")
# Shared by `bench` and `bench-scale`.
REPEATS = typer.Option(3, min=3, help="Timed repeats per figure; each figure is their median.")
COLLECTOR_STEPS = typer.Option(500, min=1, help="Env steps per repeat of the chunk collector.")
SFT_STEPS = typer.Option(20, min=1, help="SFT optimiser steps per repeat.")


def user_errors(fn: Callable) -> Callable:
    """Print a PipelineError as one clear message and exit 1 (no traceback); Ctrl-C and
    SIGTERM stop with one line too (exit 130 / 143). Under DVC, first sweep the stale
    temporaries a killed run left anywhere under data/ (io.sweep_stale_temporaries)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            _refuse_ranks_unless_supported(fn.__name__)
            if os.environ.get("DVC_ROOT"):
                from vla_pipeline.io import sweep_stale_temporaries

                sweep_stale_temporaries(Path(os.environ["DVC_ROOT"]) / "data")
            return fn(*args, **kwargs)
        except PipelineError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo(f"interrupted: {fn.__name__.removesuffix('_cmd').replace('_', '-')} stopped; "
                       "its unfinished outputs were discarded, earlier ones are intact", err=True)
            raise typer.Exit(130) from None
        except _Terminated:
            typer.echo(f"terminated: {fn.__name__.removesuffix('_cmd').replace('_', '-')} stopped by SIGTERM; "
                       "its unfinished outputs were discarded, earlier ones are intact", err=True)
            raise typer.Exit(143) from None

    return wrapper


_DATA_PARALLEL = ("sft_cmd", "ppo_cmd")  # the commands that run as torchrun ranks (README)


def _refuse_ranks_unless_supported(name: str) -> None:
    """Under torchrun every rank would run a one-process stage in full and write its outputs."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and name not in _DATA_PARALLEL:
        command = name.removesuffix("_cmd").replace("_", "-")
        raise PipelineError(f"'{command}' runs on one rank; start it without torchrun "
                            f"(data-parallel stages: {', '.join(n.removesuffix('_cmd') for n in _DATA_PARALLEL)})")


class _Terminated(BaseException):
    """Raised by the SIGTERM handler so that `with atomic_directory(...)` blocks clean up."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _echo_json(obj: dict) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


@app.command("collect-demos")
@user_errors
def collect_demos_cmd(
    out: Path = typer.Option(Path("data/buffers/demos"), help="Snapshot directory to write."),
    metrics: Path = typer.Option(Path("data/metrics/demos.json"), help="Counts per task (JSON)."),
    section: str = typer.Option("demos", help="Params section with the demo settings: demos, or offline_demos "
                                              "(CO-RFT's small set, a frame at every step)."),
    params_file: Path = PARAMS,
):
    """Scripted-expert demonstrations -> Parquet snapshot."""
    preflight.check_rendering()  # before anything imports mujoco
    from vla_pipeline.config import load_params
    from vla_pipeline.demos import collect_demos
    from vla_pipeline.io import atomic_directory, write_json_atomic

    if section not in ("demos", "offline_demos"):
        raise PipelineError(f"--section must be demos or offline_demos, got {section!r}")
    params = load_params(params_file)
    with atomic_directory(out) as tmp:
        summary = collect_demos(params, tmp, section)
    write_json_atomic(metrics, {"tasks": summary["manifest"]["tasks"], "expert": summary["expert"],
                                "total_episodes": summary["manifest"]["total_episodes"],
                                "total_steps": summary["manifest"]["total_rows"]})
    _echo_json({k: summary[k] for k in ("env_steps", "renders", "wall_seconds", "env_steps_per_s",
                                        "renders_per_s", "renders_per_s_per_worker")})


@app.command("sft")
@user_errors
def sft_cmd(
    demos: Path = typer.Option(Path("data/buffers/demos"), help="Demo snapshot to clone."),
    out: Path = typer.Option(Path("data/checkpoints/sft"), help="Checkpoint directory to write."),
    curve: Path = typer.Option(Path("data/metrics/train-sft.json"), help="Loss curve (JSON records)."),
    recipe: str = typer.Option("sft", help="Params section of the training settings: sft, or sft_offline "
                                           "(CO-RFT's small demo set: sft with the keys it names replaced)."),
    params_file: Path = PARAMS,
):
    """Supervised warm start of the VLA on the demo snapshot."""
    import torch

    from vla_pipeline import distributed
    from vla_pipeline.checkpoint import save_policy
    from vla_pipeline.config import load_params
    from vla_pipeline.data.snapshot import load_snapshot
    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.io import atomic_directory, write_json_atomic
    from vla_pipeline.policies.factory import build_policy
    from vla_pipeline.sft import train_sft, validation_rollouts

    params = load_params(params_file)
    params = params.model_copy(update={"sft": params.sft_recipe(recipe)})  # the stages below read params.sft
    preflight.check_devices(params, ("sft.device",))
    distributed.init_from_env(params.sft.device)  # under torchrun: data-parallel ranks (README)
    torch.set_num_threads(distributed.threads_per_rank(params.sft.num_threads))
    tasks = resolve_tasks(params.env)
    table, manifest = load_snapshot(demos, tasks)
    missing = sorted(set(tasks) - set(table.task))
    if missing:
        raise PipelineError(f"{demos} has no demos for tasks {missing}")
    _check_snapshot_fits_env(demos, manifest, params)
    torch.manual_seed(params.sft.seed)  # the random init is part of the reproducible result
    policy = build_policy(params.policy, params.env, tasks)
    result = train_sft(policy, table, params, validation_rollouts(params) if params.sft.validate_every else None)
    if not distributed.is_main():  # rank 0 writes
        return distributed.shutdown()
    with atomic_directory(out) as tmp:
        save_policy(policy, tmp, {"stage": "sft", "steps": params.sft.steps, "best_step": result.best_step,
                                  "final_loss": result.final_loss, "validation": result.validation,
                                  "skipped_batches": result.skipped_batches, "demos": manifest["tasks"]})
    write_json_atomic(curve, result.curve)
    _echo_json({"final_loss": result.final_loss, "best_step": result.best_step, "validation": result.validation,
                "skipped_batches": result.skipped_batches})
    distributed.shutdown()


@app.command("evaluate")
@user_errors
def evaluate_cmd(
    checkpoint: Path = typer.Option(..., help="Policy checkpoint directory."),
    name: str = typer.Option(..., help="Name of this row in tables (e.g. sft, r01)."),
    metrics: Path = typer.Option(..., help="Metrics JSON to write."),
    table: Path = typer.Option(..., help="Per-task records for dvc plots (JSON)."),
    videos: Path = typer.Option(None, help="Directory for rollout videos (none written without it)."),
    episodes: Path = typer.Option(None, help="Per-episode results (JSON) for `compare`."),
    splits: str = typer.Option(None, help="Comma-separated splits to run: test, validation, train and iRe-VLA's "
                                          "groups expert, new (default: test,validation,train; validation only "
                                          "for a round without `test: true`; an iRe-VLA round adds the groups)."),
    demos: Path = typer.Option(None, help="Demo snapshot that defines the expert / new groups (needed for them)."),
    params_file: Path = PARAMS,
):
    """Evaluate a checkpoint on the fixed episode list."""
    preflight.check_rendering()  # before anything imports mujoco
    import torch

    from vla_pipeline.checkpoint import load_policy
    from vla_pipeline.config import load_params
    from vla_pipeline.envs.tasks import SPLITS, resolve_tasks
    from vla_pipeline.evaluation import (build_metrics, default_splits, episode_records, evaluate_policy,
                                         task_table, write_videos)
    from vla_pipeline.io import write_json_atomic

    params = load_params(params_file)
    preflight.check_devices(params, ("evaluate.device",))
    torch.set_num_threads(params.evaluate.num_threads)
    policy = load_policy(checkpoint, params.evaluate.device)
    tasks = resolve_tasks(params.env)
    _check_policy_fits_env(policy, params, tasks, checkpoint)
    chosen = _splits(splits) if splits else default_splits(params, name)
    standard = [s for s in chosen if s in SPLITS]
    results, counters = evaluate_policy(policy, params.env, params.evaluate, standard,
                                        extra=_group_episodes(params, chosen, demos))
    metrics_obj = build_metrics(results, tasks, params.env.max_episode_steps, _header(name, params))
    if videos is not None and standard:
        write_videos(policy, params.env, params.evaluate, results, standard[0], videos)
    write_json_atomic(table, task_table(metrics_obj, name))
    if episodes is not None:
        write_json_atomic(episodes, episode_records(results))
    write_json_atomic(metrics, metrics_obj)
    _echo_json({"name": name, **{k: metrics_obj[k] for k in metrics_obj["splits"]}, "counters": counters})


@app.command("readout-error")
@user_errors
def readout_error_cmd(
    checkpoint: Path = typer.Option(..., help="Policy checkpoint with an aux readout (policy.aux_state_weight > 0)."),
    out: Path = typer.Option(..., help="JSON to write: per task, the readout's object / goal errors in cm."),
    split: str = typer.Option("validation", help="Which split's evaluation episodes (first frames) to read."),
    params_file: Path = PARAMS,
):
    """Diagnosis: how precisely the policy reads object and goal positions from its pixels."""
    preflight.check_rendering()  # before anything imports mujoco
    import torch

    from vla_pipeline.checkpoint import load_policy
    from vla_pipeline.config import load_params
    from vla_pipeline.envs.tasks import SPLITS, resolve_tasks
    from vla_pipeline.io import write_json_atomic
    from vla_pipeline.readout import readout_errors

    if split not in SPLITS:
        raise PipelineError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    params = load_params(params_file)
    torch.set_num_threads(params.evaluate.num_threads)
    policy = load_policy(checkpoint, "cpu")
    tasks = resolve_tasks(params.env)
    _check_policy_fits_env(policy, params, tasks, checkpoint)
    report = readout_errors(policy, params.env, params.evaluate, split, tasks)
    write_json_atomic(out, report)
    _echo_json({task: {k: v["median_cm"] for k, v in row.items() if isinstance(v, dict)}
                for task, row in report["tasks"].items()})


@app.command("evaluate-expert")
@user_errors
def evaluate_expert_cmd(
    metrics: Path = typer.Option(Path("data/metrics/eval-expert.json"), help="Metrics JSON to write."),
    table: Path = typer.Option(Path("data/metrics/eval-expert-tasks.json"), help="Per-task records."),
    episodes: Path = typer.Option(None, help="Per-episode results (JSON) for `compare`."),
    splits: str = typer.Option(None, help="Comma-separated splits to run (default: all three)."),
    params_file: Path = PARAMS,
):
    """The scripted expert that made the demos (`demos.expert`) on the same fixed episode list: the ceiling row."""
    preflight.check_rendering()  # before anything imports mujoco
    from vla_pipeline.config import load_params
    from vla_pipeline.envs.tasks import SPLITS, resolve_tasks
    from vla_pipeline.evaluation import build_metrics, episode_records, evaluate_expert, task_table
    from vla_pipeline.io import write_json_atomic

    params = load_params(params_file)
    results, counters = evaluate_expert(params.env, params.evaluate, _splits(splits, SPLITS) if splits else SPLITS,
                                        params.demos.expert)
    metrics_obj = build_metrics(results, resolve_tasks(params.env), params.env.max_episode_steps,
                                _header("expert", params))
    if params.demos.expert != "metaworld":  # recorded only when set: MetaWorld's ceiling keeps its bytes
        metrics_obj["protocol"]["expert"] = params.demos.expert
    write_json_atomic(table, task_table(metrics_obj, "expert"))
    if episodes is not None:
        write_json_atomic(episodes, episode_records(results))
    write_json_atomic(metrics, metrics_obj)
    _echo_json({**{k: metrics_obj[k] for k in SPLITS if k in metrics_obj}, "counters": counters})


@app.command("compare")
@user_errors
def compare_cmd(
    base: list[Path] = typer.Option(..., help="Per-episode results of the baseline (from evaluate --episodes); "
                                             "repeat to join files of different splits."),
    new: Path = typer.Option(..., help="Per-episode results of the policy to compare."),
    out: Path = typer.Option(None, help="Write the comparison here (JSON metrics)."),
):
    """Paired comparison on the same episodes: who solved what, exact McNemar p, steps on common successes."""
    from vla_pipeline.stats import paired_comparison, read_episode_records
    from vla_pipeline.io import write_json_atomic

    try:
        result = paired_comparison([r for path in base for r in read_episode_records(path)],
                                   read_episode_records(new))
    except ValueError as err:
        raise PipelineError(f"{', '.join(map(str, base))} vs {new}: {err}") from None
    if out is not None:
        write_json_atomic(out, result)
    _echo_json({split: {k: v for k, v in result[split].items() if k != "tasks"} for split in result["splits"]})


def _splits(text: str, allowed: tuple = None) -> list[str]:
    from vla_pipeline.constants import REPORTED

    allowed = allowed or REPORTED
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in allowed]
    if unknown or not chosen:
        raise PipelineError(f"--splits {text!r}: choose from {', '.join(allowed)}")
    return [s for s in allowed if s in chosen]


def _group_episodes(params, chosen: list[str], demos: Path | None) -> list:
    """iRe-VLA's expert / new episodes, when asked for: they need the demo snapshot."""
    from vla_pipeline.constants import GROUPS
    from vla_pipeline.evaluation import demo_configurations, group_episodes

    groups = [g for g in chosen if g in GROUPS]
    if not groups:
        return []
    if demos is None:
        raise PipelineError(f"the {' / '.join(groups)} groups are defined by the demos: pass --demos data/buffers/demos")
    try:
        return group_episodes(params.env, params.evaluate, demo_configurations(demos), params.ire.episodes_per_group,
                              groups)
    except ValueError as err:
        raise PipelineError(str(err)) from None


@app.command("ppo")
@user_errors
def ppo_cmd(
    round_name: str = typer.Option(..., "--round", help="Round name (a key of `rounds` in params.yaml)."),
    data: Path = typer.Option(Path("data"), help="Root of checkpoints/, buffers/, rollouts/."),
    curve: Path = typer.Option(None, help="Per-iteration learning curve (default data/metrics/train-<round>.json)."),
    params_file: Path = PARAMS,
):
    """One round of action-chunked PPO with self-BC: policy + buffer in, checkpoint + rollouts out."""
    preflight.check_rendering()  # before anything imports mujoco
    import torch

    from vla_pipeline import distributed
    from vla_pipeline.checkpoint import load_policy, save_policy
    from vla_pipeline.config import load_params
    from vla_pipeline.data.snapshot import read_manifest, write_snapshot
    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.io import atomic_directory, write_json_atomic
    from vla_pipeline.rl.rounds import buffer_dir, checkpoint_dir, open_buffer, round_item, rollouts_dir
    from vla_pipeline.rl.trainer import run_round

    params = load_params(params_file)
    item = round_item(params, round_name)
    preflight.check_devices(params, ("ppo.device",))
    distributed.init_from_env(params.ppo.device)  # under torchrun: data-parallel updates (README)
    torch.set_num_threads(distributed.threads_per_rank(params.ppo.num_threads))
    policy = load_policy(checkpoint_dir(item.policy_in, data), params.ppo.device)
    tasks = resolve_tasks(params.env)
    _check_policy_fits_env(policy, params, tasks, checkpoint_dir(item.policy_in, data))
    source = buffer_dir(item.buffer_in, data)
    if source.exists():
        _check_snapshot_fits_env(source, read_manifest(source), params)
    buffer, _ = open_buffer(params, item.buffer_in, source)
    result = run_round(policy, buffer, params, round_name)
    if not distributed.is_main():  # rank 0 writes
        return distributed.shutdown()
    size, cameras = params.env.image_size, params.env.cameras
    with atomic_directory(checkpoint_dir(round_name, data)) as tmp:
        save_policy(policy, tmp, {"stage": "ppo", "round": round_name, "policy_in": item.policy_in,
                                  "buffer_in": item.buffer_in, "iterations": params.ppo.iterations,
                                  "final": result.curve[-1] if result.curve else None})
    with atomic_directory(rollouts_dir(round_name, data)) as tmp:
        by_task: dict = {}
        for ep in result.successes:  # collection order within each task
            by_task.setdefault(ep.task, []).append(ep)
        write_snapshot(tmp, by_task, cameras, (size, size, 3), {"source": round_name, "kind": "rollout successes"})
    write_json_atomic(curve or data / "metrics" / f"train-{round_name}.json", result.curve)
    _echo_json({"round": round_name, "successes": len(result.successes), "buffer": buffer.stats(),
                **result.counters})
    distributed.shutdown()


@app.command("snapshot")
@user_errors
def snapshot_cmd(
    round_name: str = typer.Option(..., "--round", help="Round name (a key of `rounds` in params.yaml)."),
    data: Path = typer.Option(Path("data"), help="Root of buffers/ and rollouts/."),
    params_file: Path = PARAMS,
):
    """Self-BC buffer after a round: buffer_in + the round's successes -> data/buffers/<round>."""
    from vla_pipeline.config import load_params
    from vla_pipeline.data.snapshot import load_episodes
    from vla_pipeline.io import atomic_directory
    from vla_pipeline.rl.rounds import buffer_dir, open_buffer, replay_successes, round_item, rollouts_dir, write_buffer

    params = load_params(params_file)
    item = round_item(params, round_name)
    source = buffer_dir(item.buffer_in, data)
    buffer, filtered = open_buffer(params, item.buffer_in, source)
    successes, _ = load_episodes(rollouts_dir(round_name, data))
    replay_successes(buffer, successes)
    seeded = not (item.buffer_in == "demos" and not params.buffer.seed_with_demos)
    size = params.env.image_size
    with atomic_directory(buffer_dir(round_name, data)) as tmp:
        manifest = write_buffer(tmp, buffer, source if seeded else None, filtered,
                                {"source": "self-bc buffer", "round": round_name, "buffer_in": item.buffer_in,
                                 "buffer": params.buffer.model_dump()}, tuple(params.env.cameras), (size, size, 3))
    _echo_json({"round": round_name, **buffer.stats(), "changed_tasks": sorted(buffer.changed_tasks | filtered),
                "shards": len(manifest["shards"])})


@app.command("ire-round")
@user_errors
def ire_round_cmd(
    round_name: str = typer.Option(..., "--round", help="Round name (a key of `ire_rounds` in params.yaml)."),
    data: Path = typer.Option(Path("data"), help="Root of checkpoints/ and buffers/."),
    demos: Path = typer.Option(Path("data/buffers/demos"), help="Expert demos (what an sl round learns besides D_RL)."),
    curve: Path = typer.Option(None, help="Training curve (default data/metrics/train-<round>.json)."),
    params_file: Path = PARAMS,
):
    """One iRe-VLA round: rl (trunk frozen, no BC) or ppo (trunk trainable) -> checkpoint + D_RL with
    its successes; sl (whole model on demos + D_RL) -> checkpoint, D_RL passed on."""
    preflight.check_rendering()  # before anything imports mujoco
    import torch

    from vla_pipeline.checkpoint import load_policy, save_policy
    from vla_pipeline.config import load_params
    from vla_pipeline.data.snapshot import load_snapshot, read_manifest
    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.io import atomic_directory, write_json_atomic
    from vla_pipeline.rl.ire import ire_round_item, open_d_rl, run_rl_round, run_sl_round
    from vla_pipeline.rl.rounds import buffer_dir, checkpoint_dir, write_buffer

    params = load_params(params_file)
    item = ire_round_item(params, round_name)
    section = "sft" if item.kind == "sl" else "ppo"  # an SL round trains as SFT does, RL rounds as PPO
    preflight.check_devices(params, (f"{section}.device",))
    torch.set_num_threads(getattr(params, section).num_threads)
    policy = load_policy(checkpoint_dir(item.policy_in, data), getattr(params, section).device)
    tasks = resolve_tasks(params.env)
    _check_policy_fits_env(policy, params, tasks, checkpoint_dir(item.policy_in, data))
    source = None if item.buffer_in == "demos" else buffer_dir(item.buffer_in, data)
    if source is not None:
        _check_snapshot_fits_env(source, read_manifest(source), params)
    d_rl, filtered = open_d_rl(params, source)
    size, cameras = params.env.image_size, tuple(params.env.cameras)
    meta = {"stage": "ire", "kind": item.kind, "round": round_name, "policy_in": item.policy_in,
            "buffer_in": item.buffer_in}
    if item.kind == "sl":
        table, manifest = load_snapshot(demos, tasks)
        _check_snapshot_fits_env(demos, manifest, params)
        rl_table = d_rl.step_table(cameras, (size, size, 3)) if len(d_rl) else None
        result, fraction = run_sl_round(policy, table, rl_table, params, round_name)
        summary = {"final_loss": result.final_loss, "steps": params.ire.sl_steps, "rl_fraction": fraction,
                   "d_rl": d_rl.stats(), "skipped_batches": result.skipped_batches}
    else:
        result = run_rl_round(policy, d_rl, params, round_name, item.kind)
        summary = {"successes": len(result.successes), "d_rl": d_rl.stats(), "iterations": params.ire.rl_iterations,
                   "final": result.curve[-1] if result.curve else None}
        _echo_json({"round": round_name, **result.counters})
    with atomic_directory(checkpoint_dir(round_name, data)) as tmp:
        save_policy(policy, tmp, {**meta, **summary})
    with atomic_directory(buffer_dir(round_name, data)) as tmp:
        write_buffer(tmp, d_rl, source, filtered, {"source": "iRe-VLA D_RL", **meta,
                                                "d_rl": {"key": params.ire.d_rl_key,
                                                         "capacity": params.ire.d_rl_capacity}},
                     cameras, (size, size, 3))
    write_json_atomic(curve or data / "metrics" / f"train-{round_name}.json", result.curve)
    _echo_json({**meta, **{k: v for k, v in summary.items() if k != "final"}})


@app.command("offline")
@user_errors
def offline_cmd(
    run: str = typer.Option(..., help="Run name (a key of `offline_runs` in params.yaml)."),
    policy_in: Path = typer.Option(Path("data/checkpoints/sft-offline"), "--policy",
                                   help="The imitation checkpoint (CO-RFT step 1)."),
    demos: Path = typer.Option(Path("data/buffers/demos-offline"), help="Demo snapshot with a frame at every step."),
    data: Path = typer.Option(Path("data"), help="Root of checkpoints/ and metrics/."),
    params_file: Path = PARAMS,
):
    """CO-RFT step 2: chunked offline RL (critic ensemble over chunks, Cal-QL, TD3+BC) -> checkpoint
    (policy + critic), kept at its best validation check."""
    preflight.check_rendering()  # the validation rollouts render
    import torch
    from safetensors.torch import save_file

    from vla_pipeline.checkpoint import load_policy, save_policy
    from vla_pipeline.config import load_params
    from vla_pipeline.data.snapshot import load_snapshot
    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.io import atomic_directory, write_json_atomic
    from vla_pipeline.rl.offline import CRITIC_CONFIG_FILE, CRITIC_FILE, train_offline
    from vla_pipeline.sft import validation_rollouts

    params = load_params(params_file)
    cfg = params.offline_run(run)
    preflight.check_device(cfg.device, f"offline_runs.{run} device")
    torch.set_num_threads(cfg.num_threads)
    policy = load_policy(policy_in, cfg.device)
    tasks = resolve_tasks(params.env)
    _check_policy_fits_env(policy, params, tasks, policy_in)
    if cfg.td_chunk > policy.config.chunk_len:
        raise PipelineError(f"offline_runs.{run}: td_chunk {cfg.td_chunk} is longer than {policy_in}'s chunk "
                            f"({policy.config.chunk_len})")
    table, manifest = load_snapshot(demos, tasks)
    _check_snapshot_fits_env(demos, manifest, params)
    validate = validation_rollouts(params, cfg.validation_episodes, desc=f"{run} validation")
    result = train_offline(policy, table, cfg, validate)
    meta = {"stage": "offline", "run": run, "policy_in": str(policy_in), "offline": cfg.model_dump(),
            "best_step": result.best_step, "validation": result.validation, "transitions": result.transitions,
            "demos": manifest["tasks"]}
    with atomic_directory(data / "checkpoints" / run) as tmp:
        save_policy(policy, tmp, meta)
        save_file(result.training_state(), tmp / CRITIC_FILE)
        write_json_atomic(tmp / CRITIC_CONFIG_FILE, result.critic.describe())
    write_json_atomic(data / "metrics" / f"train-{run}.json", result.curve)
    _echo_json({k: meta[k] for k in ("run", "best_step", "validation", "transitions")})


@app.command("offline-summary")
@user_errors
def offline_summary_cmd(
    base: Path = typer.Option(..., help="Per-episode results of the imitation policy (evaluate --episodes)."),
    run: list[str] = typer.Option(..., help="NAME=FILE: a CO-RFT run's per-episode results; repeat."),
    out: Path = typer.Option(None, help="Write the summary here (JSON metrics)."),
    resamples: int = typer.Option(2000, min=100, help="Paired bootstrap resamples for the intervals."),
):
    """CO-RFT vs its SFT on the same test episodes: relative success gain and change of steps to
    success with paired bootstrap intervals, beside the paper's +57 %, -22.3 % and 44.3 %."""
    from vla_pipeline.io import write_json_atomic
    from vla_pipeline.stats import offline_summary, read_episode_records

    runs = {}
    for item in run:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise PipelineError(f"--run {item!r}: expected NAME=FILE")
        runs[name] = read_episode_records(path)
    try:
        result = offline_summary(read_episode_records(base), runs, resamples)
    except ValueError as err:
        raise PipelineError(f"offline-summary: {err}") from None
    if out is not None:
        write_json_atomic(out, result)
    _echo_json(result)


@app.command("seeds")
@user_errors
def seeds_cmd(
    run: list[str] = typer.Option(..., help="NAME=DIR: a run's metrics folder (eval-sft.json, eval-FINAL.json, "
                                             "paired-FINAL.json); repeat once per seed."),
    final: str = typer.Option(..., help="The final round's name (e.g. r03 or ire-sl2)."),
    split: str = typer.Option("test", help="Split or group to compare on: test, validation, train, expert, new."),
    out: Path = typer.Option(None, help="Write the table here (JSON metrics)."),
):
    """Seeds of the whole chain side by side: SFT vs the final round on one split, paired."""
    from vla_pipeline.stats import seed_table
    from vla_pipeline.io import read_json, write_json_atomic

    (split,) = _splits(split)
    runs = {}
    for item in run:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise PipelineError(f"--run {item!r}: expected NAME=DIR")
        folder = Path(folder)
        sft = read_json(folder / "eval-sft.json", "SFT metrics")
        if (folder / "groups-sft.json").exists():  # SFT on iRe-VLA's expert / new groups
            sft = {**read_json(folder / "groups-sft.json", "SFT group metrics"), **sft}
        runs[name] = {"sft": sft,
                      "final": read_json(folder / f"eval-{final}.json", f"{final} metrics"),
                      "paired": read_json(folder / f"paired-{final}.json", f"{final} vs SFT comparison")}
    try:
        table = seed_table(runs, split, final)
    except (KeyError, TypeError, ValueError) as err:
        raise PipelineError(f"seeds: {err}") from None
    if out is not None:
        write_json_atomic(out, table)
    _echo_json(table)


@app.command("report")
@user_errors
def report_cmd(
    metrics: Path = typer.Option(Path("data/metrics"), help="Metrics folder the evaluations wrote."),
    videos: Path = typer.Option(Path("data/videos"), help="Videos folder the evaluations wrote."),
    out: Path = typer.Option(Path("data/report"), help="Folder for report.html, summary.md and headline/."),
    params_file: Path = PARAMS,
):
    """One page with every method whose metrics exist: tables with intervals and paired p-values,
    per-task rows, curves, the papers' numbers, seeds, the benchmark and rollout previews."""
    from vla_pipeline.config import load_params
    from vla_pipeline.report import build_report

    _echo_json(build_report(metrics, videos, load_params(params_file), out))


@app.command("bench")
@user_errors
def bench_cmd(
    out: Path = typer.Option(Path("data/metrics/bench.json"), help="Write the benchmark here (JSON)."),
    repeats: int = REPEATS,
    raw_steps: int = typer.Option(1500, min=1, help="Env steps per repeat of the raw MetaWorld loop."),
    collector_steps: int = COLLECTOR_STEPS,
    sft_steps: int = SFT_STEPS,
    ppo_decisions: int = typer.Option(128, min=2, help="Decisions in the rollout batch each PPO update repeat uses."),
    demos: Path = typer.Option(None, help="Demo snapshot for SFT / PPO (default: collect a tiny one)."),
    params_file: Path = PARAMS,
):
    """Where the time goes, in one run (not a DVC stage): a raw MetaWorld loop as the limit, the
    chunk collector with the policy (sync / async, 1 / 2 workers, K = 1, 4, 8), SFT and PPO update
    samples/s, peak memory of each; medians of repeats and their ratios."""
    preflight.check_rendering()  # before anything imports mujoco
    from vla_pipeline.bench import BenchSizes, describe, run_bench
    from vla_pipeline.config import load_params

    sizes = BenchSizes(repeats=repeats, raw_steps=raw_steps, collector_steps=collector_steps, sft_steps=sft_steps,
                       ppo_decisions=ppo_decisions)
    _echo_json(describe(run_bench(load_params(params_file), out, sizes, demos)))


@app.command("bench-scale")
@user_errors
def bench_scale_cmd(
    out: Path = typer.Option(Path("data/metrics/bench-scale.json"), help="Write the benchmark here (JSON)."),
    repeats: int = REPEATS,
    collector_steps: int = COLLECTOR_STEPS,
    sft_steps: int = SFT_STEPS,
    demos: Path = typer.Option(None, help="Demo snapshot for SFT (default: collect a tiny one)."),
    params_file: Path = PARAMS,
):
    """Scale-out figures in one run (not a DVC stage): the collector on Ray with 1 / 2 / 4 env
    workers beside 2 local async workers, and SFT on 1 / 2 torchrun ranks (gloo on the CPU).
    Ray and gloo open sockets: run it in a private network namespace where that matters."""
    preflight.check_rendering()  # before anything imports mujoco
    from vla_pipeline.bench_scale import run_scale_bench
    from vla_pipeline.config import load_params

    result = run_scale_bench(load_params(params_file), out, repeats, collector_steps, sft_steps, demos)
    _echo_json({"ratios": result["ratios"], "total_seconds": result["total_seconds"]})


@app.command("check-params")
@user_errors
def check_params_cmd(
    params_file: Path = PARAMS,
    machine: bool = typer.Option(True, "--machine/--file-only",
                                 help="Also check that this machine has the devices and OpenGL the params need."),
    out: Path = typer.Option(None, help="Write a constant stamp here when valid (the DVC stage every stage follows)."),
):
    """Validate a params file and print it with every default filled in.

    As the first DVC stage (`check_params`), a bad value stops `dvc repro` before any stage
    has deleted its outputs; the stamp's bytes never change, so a valid edit reruns only
    the stages whose own params changed.
    """
    from vla_pipeline.config import load_params
    from vla_pipeline.io import write_text_atomic

    params = load_params(params_file)
    if machine:
        preflight.check_devices(params)
        preflight.check_rendering()
    if out is not None:
        write_text_atomic(out, "valid\n")
    _echo_json(params.model_dump())


@app.command("versions")
@user_errors
def versions_cmd(
    rev: str = typer.Option("HEAD", help="Git revision whose history to list."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON records instead of text."),
    repo: Path = typer.Option(Path("."), help="Repository root."),
):
    """Every versioned checkpoint and buffer: commit, round inputs, params diff, test success."""
    from vla_pipeline.versions import format_versions, list_versions

    records = list_versions(repo, rev)
    typer.echo(json.dumps(records, indent=2, sort_keys=True) if as_json else format_versions(records))


@app.command("sweep")
@user_errors
def sweep_cmd(root: Path = typer.Option(Path("data"), help="Directory to clean.")):
    """Remove the hidden temporaries (`.<name>.tmp-*`, `.<name>.old-*`) that killed runs left."""
    from vla_pipeline.io import sweep_stale_temporaries

    for path in sweep_stale_temporaries(root):
        typer.echo(f"removed {path}")


def _header(name: str, params) -> dict:
    from vla_pipeline.provenance import software_versions

    versions = software_versions()
    env, evaluate = params.env, params.evaluate
    return {"policy": name, "protocol": {
        "horizon": env.max_episode_steps, "cameras": list(env.cameras), "image_size": env.image_size,
        "episodes_per_task": {"test": evaluate.episodes_test, "validation": evaluate.episodes_validation,
                              "train": evaluate.episodes_train},
        "split_seeds": {"test": env.test_seed, "validation": env.validation_seed, "train": list(env.train_seeds)},
        "seed": evaluate.seed, "deterministic": evaluate.deterministic, "metaworld": versions["metaworld"],
        "mujoco": versions["mujoco"], "reward": env.reward}}


def _check_snapshot_fits_env(path: Path, manifest: dict, params) -> None:
    from vla_pipeline.data.snapshot import snapshot_layout

    cameras, shape = snapshot_layout(manifest)
    size = params.env.image_size
    if list(cameras) != list(params.env.cameras) or tuple(shape) != (size, size, 3):
        raise PipelineError(f"{path} holds cameras {list(cameras)} at {shape[0]} px; params.yaml asks for "
                            f"env.cameras {list(params.env.cameras)} at {size} px (rerun collect_demos)")
    recorded = manifest.get("provenance", {}).get("env")
    if isinstance(recorded, dict):  # demo snapshots record the views they were rendered with
        _check_same_fovy(recorded.get("camera_fovy", {}), params, f"{path} was rendered", "rerun collect_demos")


def _check_same_fovy(recorded: dict, params, what: str, fix: str) -> None:
    """A policy sees only pixels: frames from another field of view are another input."""
    wanted = dict(params.env.camera_fovy)
    if dict(recorded) != wanted:
        raise PipelineError(f"{what} with env.camera_fovy {dict(recorded) or '{} (MuJoCo views)'}; params.yaml "
                            f"asks for {wanted or '{} (MuJoCo views)'} ({fix})")


def _check_policy_fits_env(policy, params, tasks, checkpoint: Path) -> None:
    config = policy.config
    if list(config.cameras) != list(params.env.cameras) or config.image_size != params.env.image_size:
        raise PipelineError(
            f"{checkpoint} was trained on cameras {list(config.cameras)} at {config.image_size} px; "
            f"params.yaml asks for {list(params.env.cameras)} at {params.env.image_size} px"
        )
    _check_same_fovy((config.env_spec or {}).get("camera_fovy", {}), params, f"{checkpoint} was trained",
                     "set env.camera_fovy to match, or retrain")
    unknown = sorted(set(tasks) - set(policy.config.task_names))
    if unknown:
        raise PipelineError(f"{checkpoint} does not know tasks {unknown}")


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    app(prog_name="python -m stages")


if __name__ == "__main__":
    sys.exit(main())
