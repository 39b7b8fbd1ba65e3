"""DVC stages `evaluate`, `evaluate_round`, `evaluate_ire`, `evaluate_offline`: a checkpoint on
the fixed episode list -> success and steps per split and task, per-episode records, videos."""

from pathlib import Path

import typer

from stages.common import PARAMS, echo_json, parse_splits, run, stage_app, user_errors
from vla_pipeline import preflight
from vla_pipeline.config import load_params
from vla_pipeline.constants import GROUPS
from vla_pipeline.errors import PipelineError

app = stage_app(__doc__)


@app.command()
@user_errors
def evaluate(
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
    preflight.check_rendering()  # before the imports below load MuJoCo
    import torch

    from vla_pipeline.checkpoint import load_policy
    from vla_pipeline.envs.tasks import SPLITS, resolve_tasks
    from vla_pipeline.evaluation import (build_metrics, default_splits, episode_records, evaluate_policy,
                                         task_table, write_videos)
    from vla_pipeline.fits import check_policy_fits_env
    from vla_pipeline.io import StageOutputs
    from vla_pipeline.outputs import write_evaluation
    from vla_pipeline.provenance import protocol_header

    params = load_params(params_file)
    preflight.check_devices(params, ("evaluate.device",))
    outputs = StageOutputs(*(p for p in (metrics, table, videos, episodes) if p is not None))  # writable, first
    torch.set_num_threads(params.evaluate.num_threads)
    policy = load_policy(checkpoint, params.evaluate.device)
    tasks = resolve_tasks(params.env)
    check_policy_fits_env(policy, params.env, tasks, checkpoint)
    chosen = parse_splits(splits) if splits else default_splits(params, name)
    standard = [s for s in chosen if s in SPLITS]
    results, counters = evaluate_policy(policy, params.env, params.evaluate, standard,
                                        extra=group_episodes(params, chosen, demos))
    metrics_obj = build_metrics(results, tasks, params.env.max_episode_steps, protocol_header(name, params))
    with outputs:  # videos, per-task and per-episode records, metrics: all or none
        if videos is not None and standard:
            write_videos(policy, params.env, params.evaluate, results, standard[0], videos)
        write_evaluation(metrics, table, episodes, metrics_obj, task_table(metrics_obj, name),
                         episode_records(results))
    echo_json({"name": name, **{k: metrics_obj[k] for k in metrics_obj["splits"]}, "counters": counters})


def group_episodes(params, chosen: list[str], demos: Path | None) -> list:
    """iRe-VLA's expert / new episodes, when asked for: they need the demo snapshot."""
    from vla_pipeline.evaluation import demo_configurations, group_episodes as episodes_of_groups

    groups = [g for g in chosen if g in GROUPS]
    if not groups:
        return []
    if demos is None:
        raise PipelineError(f"the {' / '.join(groups)} groups are defined by the demos: pass --demos data/buffers/demos")
    try:
        return episodes_of_groups(params.env, params.evaluate, demo_configurations(demos),
                                  params.ire.episodes_per_group, groups)
    except ValueError as err:
        raise PipelineError(str(err)) from None


if __name__ == "__main__":
    run(app, __spec__.name)
