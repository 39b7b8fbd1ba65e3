"""DVC stages `compare_round` and `compare_ire`: a policy against its baseline on the same
episodes: who solved what, exact McNemar p, steps on the episodes both solve."""

from pathlib import Path

import typer

from stages.common import echo_json, run, stage_app, user_errors
from vla_pipeline.errors import PipelineError
from vla_pipeline.io import write_json_atomic
from vla_pipeline.stats import paired_comparison, read_episode_records

app = stage_app(__doc__)


@app.command()
@user_errors
def compare(
    base: list[Path] = typer.Option(..., help="Per-episode results of the baseline (from evaluate --episodes); "
                                             "repeat to join files of different splits."),
    new: Path = typer.Option(..., help="Per-episode results of the policy to compare."),
    out: Path = typer.Option(None, help="Write the comparison here (JSON metrics)."),
):
    """Paired comparison on the same episodes: who solved what, exact McNemar p, steps on common successes."""
    try:
        result = paired_comparison([r for path in base for r in read_episode_records(path)],
                                   read_episode_records(new))
    except ValueError as err:
        raise PipelineError(f"{', '.join(map(str, base))} vs {new}: {err}") from None
    if out is not None:
        write_json_atomic(out, result)
    echo_json({split: {k: v for k, v in result[split].items() if k != "tasks"} for split in result["splits"]})


if __name__ == "__main__":
    run(app, __spec__.name)
