"""DVC stage `subset_demos`: the small demonstration set, the first `demos_small.episodes_per_task`
episodes per task of the main demo snapshot (the start of every method in the small-demo
comparison)."""

from pathlib import Path

import typer

from stages.common import PARAMS, echo_json, run, stage_app, user_errors
from vla_pipeline.config import load_params
from vla_pipeline.demos import subset_demos as take_subset
from vla_pipeline.io import atomic_directory, write_json_atomic

app = stage_app(__doc__)


@app.command()
@user_errors
def subset_demos(
    demos: Path = typer.Option(Path("data/buffers/demos"), help="The demo snapshot to take episodes from."),
    out: Path = typer.Option(Path("data/buffers/demos-small"), help="Snapshot directory to write."),
    metrics: Path = typer.Option(Path("data/metrics/demos-small.json"), help="Counts per task (JSON)."),
    params_file: Path = PARAMS,
):
    """The first N episodes per task of a demo snapshot -> a snapshot of their own."""
    params = load_params(params_file)
    with atomic_directory(out) as tmp:
        manifest = take_subset(demos, tmp, params.demos_small.episodes_per_task)
    counts = {"tasks": manifest["tasks"], "total_episodes": manifest["total_episodes"],
              "total_steps": manifest["total_rows"], "episodes_per_task": params.demos_small.episodes_per_task}
    write_json_atomic(metrics, counts)
    echo_json({"total_episodes": manifest["total_episodes"], "total_steps": manifest["total_rows"]})


if __name__ == "__main__":
    run(app, __spec__.name)
