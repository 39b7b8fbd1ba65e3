"""DVC stages `collect_demos` and `collect_demos_offline`: scripted-expert demonstrations ->
Parquet snapshot, plus the counts per task."""

from pathlib import Path

import typer

from stages.common import PARAMS, echo_json, run, stage_app, user_errors
from vla_pipeline import preflight
from vla_pipeline.config import load_params
from vla_pipeline.errors import PipelineError
from vla_pipeline.io import StageOutputs, atomic_directory, write_json_atomic

app = stage_app(__doc__)
SECTIONS = ("demos", "offline_demos")


@app.command()
@user_errors
def collect_demos(
    out: Path = typer.Option(Path("data/buffers/demos"), help="Snapshot directory to write."),
    metrics: Path = typer.Option(Path("data/metrics/demos.json"), help="Counts per task (JSON)."),
    section: str = typer.Option("demos", help="Params section with the demo settings: demos, or offline_demos "
                                              "(CO-RFT's small set, a frame at every step)."),
    params_file: Path = PARAMS,
):
    """Scripted-expert demonstrations -> Parquet snapshot."""
    if section not in SECTIONS:
        raise PipelineError(f"--section must be demos or offline_demos, got {section!r}")
    preflight.check_rendering()  # before the imports below load MuJoCo
    from vla_pipeline.demos import collect_demos as collect, demo_counts

    params = load_params(params_file)
    with StageOutputs(out, metrics):  # snapshot and counts: both or neither (checked writable first)
        with atomic_directory(out) as tmp:
            summary = collect(params, tmp, section)
        write_json_atomic(metrics, demo_counts(summary))
    echo_json({k: summary[k] for k in ("env_steps", "renders", "wall_seconds", "env_steps_per_s",
                                       "renders_per_s", "renders_per_s_per_worker")})


if __name__ == "__main__":
    run(app, __spec__.name)
