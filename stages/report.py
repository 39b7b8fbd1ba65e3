"""DVC stage `report`, the last: one page with every method whose metrics exist (tables with
intervals and paired p-values, per-task rows, curves, the papers' numbers, seeds, the
benchmark, rollout previews), the tables as Markdown, and the headline metrics files."""

from pathlib import Path

import typer

from stages.common import PARAMS, echo_json, run, stage_app, user_errors
from vla_pipeline.config import load_params
from vla_pipeline.report import build_report

app = stage_app(__doc__)


@app.command()
@user_errors
def report(
    metrics: Path = typer.Option(Path("data/metrics"), help="Metrics folder the evaluations wrote."),
    videos: Path = typer.Option(Path("data/videos"), help="Videos folder the evaluations wrote."),
    out: Path = typer.Option(Path("data/report"), help="Folder for report.html, summary.md and headline/."),
    params_file: Path = PARAMS,
):
    """One page with every method whose metrics exist."""
    echo_json(build_report(metrics, videos, load_params(params_file), out))


if __name__ == "__main__":
    run(app, __spec__.name)
