"""DVC stage `check_params`, the first: validate params.yaml (and this machine) before any stage
deletes its outputs. Its stamp's bytes never change, so a valid edit reruns only the stages
whose own params changed."""

from pathlib import Path

import typer

from stages.common import PARAMS, echo_json, run, stage_app, user_errors
from vla_pipeline import preflight
from vla_pipeline.config import load_params
from vla_pipeline.io import write_text_atomic

app = stage_app(__doc__)


@app.command()
@user_errors
def check_params(
    params_file: Path = PARAMS,
    machine: bool = typer.Option(True, "--machine/--file-only",
                                 help="Also check that this machine has the devices and OpenGL the params need, and that "
                                      "a Ray address (env.vector: ray) answers."),
    out: Path = typer.Option(None, help="Write a constant stamp here when valid (the DVC stage every stage follows)."),
):
    """Validate a params file and print it with every default filled in."""
    params = load_params(params_file)
    if machine:
        preflight.check_devices(params)
        preflight.check_rendering()
        preflight.check_ray_address(params)
    if out is not None:
        write_text_atomic(out, "valid\n")
    echo_json(params.model_dump())


if __name__ == "__main__":
    run(app, __spec__.name)
