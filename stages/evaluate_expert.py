"""DVC stage `evaluate_expert`: the scripted expert that made the demos (`demos.expert`) on the
same fixed episode list as every policy, the ceiling row."""

from pathlib import Path

import typer

from stages.common import PARAMS, echo_json, parse_splits, run, stage_app, user_errors
from vla_pipeline import preflight
from vla_pipeline.config import load_params

app = stage_app(__doc__)


@app.command()
@user_errors
def evaluate_expert(
    metrics: Path = typer.Option(Path("data/metrics/eval-expert.json"), help="Metrics JSON to write."),
    table: Path = typer.Option(Path("data/metrics/eval-expert-tasks.json"), help="Per-task records."),
    episodes: Path = typer.Option(None, help="Per-episode results (JSON) for `compare`."),
    splits: str = typer.Option(None, help="Comma-separated splits to run (default: all three)."),
    params_file: Path = PARAMS,
):
    """The scripted expert on the fixed episode list: the ceiling row."""
    preflight.check_rendering()  # before the imports below load MuJoCo
    from vla_pipeline.envs.tasks import SPLITS, resolve_tasks
    from vla_pipeline.evaluation import build_metrics, episode_records, evaluate_expert as evaluate, task_table
    from vla_pipeline.io import StageOutputs
    from vla_pipeline.outputs import write_evaluation
    from vla_pipeline.provenance import protocol_header

    params = load_params(params_file)
    outputs = StageOutputs(*(p for p in (metrics, table, episodes) if p is not None))  # writable, before the work
    results, counters = evaluate(params.env, params.evaluate, parse_splits(splits, SPLITS) if splits else SPLITS,
                                 params.demos.expert)
    metrics_obj = build_metrics(results, resolve_tasks(params.env), params.env.max_episode_steps,
                                protocol_header("expert", params))
    if params.demos.expert != "metaworld":  # recorded only when set: MetaWorld's ceiling keeps its bytes
        metrics_obj["protocol"]["expert"] = params.demos.expert
    with outputs:  # all or none
        write_evaluation(metrics, table, episodes, metrics_obj, task_table(metrics_obj, "expert"),
                         episode_records(results))
    echo_json({**{k: metrics_obj[k] for k in SPLITS if k in metrics_obj}, "counters": counters})


if __name__ == "__main__":
    run(app, __spec__.name)
