"""DVC stage `offline_summary`: CO-RFT against its SFT on the same test episodes: relative
success gain and change of steps to success with paired bootstrap intervals, beside the
paper's +57 %, -22.3 % and 44.3 %."""

from pathlib import Path

import typer

from stages.common import echo_json, run, stage_app, user_errors
from vla_pipeline.errors import PipelineError
from vla_pipeline.io import write_json_atomic
from vla_pipeline.stats import offline_summary as summarise, read_episode_records

app = stage_app(__doc__)


@app.command()
@user_errors
def offline_summary(
    base: Path = typer.Option(..., help="Per-episode results of the imitation policy (evaluate --episodes)."),
    run_files: list[str] = typer.Option(..., "--run", help="NAME=FILE: a CO-RFT run's per-episode results; repeat."),
    out: Path = typer.Option(None, help="Write the summary here (JSON metrics)."),
    resamples: int = typer.Option(2000, min=100, help="Paired bootstrap resamples for the intervals."),
):
    """CO-RFT vs its SFT on the same test episodes, with paired bootstrap intervals."""
    runs = {}
    for item in run_files:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise PipelineError(f"--run {item!r}: expected NAME=FILE")
        runs[name] = read_episode_records(path)
    try:
        result = summarise(read_episode_records(base), runs, resamples)
    except ValueError as err:
        raise PipelineError(f"offline-summary: {err}") from None
    if out is not None:
        write_json_atomic(out, result)
    echo_json(result)


if __name__ == "__main__":
    run(app, __spec__.name)
