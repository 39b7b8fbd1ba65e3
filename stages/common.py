"""What every stage command shares: the params option, one-line errors, signals, JSON output.

A stage module defines one Typer command with `stage_app()` and ends with
`if __name__ == "__main__": run(app)`; DVC calls it as `python -m stages.<module>`.
Options carry only paths and names: the numbers that change results come from the
stage's own `params.yaml` sections.
"""

from __future__ import annotations

import functools
import json
import os
import signal
from pathlib import Path
from typing import Callable

import typer

from vla_pipeline.constants import REPORTED
from vla_pipeline.errors import PipelineError
from vla_pipeline.io import forget_replaced, replaced_outputs, sweep_stale_temporaries

PARAMS = typer.Option(Path("params.yaml"), "--params", help="Params file (validated as a whole).")
DATA_PARALLEL = ("sft", "ppo")  # the commands that run as torchrun ranks (README)


def stage_app(doc: str | None = None) -> typer.Typer:
    return typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=doc)


def command_name(fn: Callable) -> str:
    return fn.__name__.replace("_", "-")


def user_errors(fn: Callable) -> Callable:
    """Print a PipelineError as one clear message and exit 1 (no traceback); Ctrl-C and
    SIGTERM stop with one line too (exit 130 / 143). Under DVC, first sweep the stale
    temporaries a killed run left anywhere under data/ (io.sweep_stale_temporaries)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        name = command_name(fn)
        try:
            forget_replaced()
            refuse_ranks_unless_supported(name)
            if os.environ.get("DVC_ROOT"):
                sweep_stale_temporaries(Path(os.environ["DVC_ROOT"]) / "data")
            return fn(*args, **kwargs)
        except PipelineError as exc:
            typer.echo(f"error: {exc}{outputs_state('; ', str(exc).startswith('could not write'), name)}",
                       err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo(f"interrupted: {name} stopped; its unfinished outputs were discarded"
                       f"{outputs_state(', ', name=name)}", err=True)
            raise typer.Exit(130) from None
        except Terminated:
            typer.echo(f"terminated: {name} stopped by SIGTERM; its unfinished outputs were discarded"
                       f"{outputs_state(', ', name=name)}", err=True)
            raise typer.Exit(143) from None

    return wrapper


def outputs_state(sep: str, write_error: bool = True, name: str = "") -> str:
    """What became of the stage's earlier outputs, as true as this process knows it.

    Under DVC (`DVC_ROOT` set) DVC removed the stage's outputs before the command started:
    they are in DVC's cache, not on disk. Outside DVC, outputs this process renamed into place
    are named; otherwise they are intact (said for interrupts and write errors, where the
    question arises)."""
    if os.environ.get("DVC_ROOT"):
        stage = os.environ.get("DVC_STAGE")
        target = f"`dvc checkout {stage}`" if stage else "`dvc checkout <stage>`"
        if name == "check-params":  # its only output is the stamp; no other stage has run
            return (f"{sep}no other stage ran and no other output was deleted; DVC removed only this stage's stamp "
                    f"(data/checks/params.ok), which {target} or the next valid `dvc repro` restores")
        return (f"{sep}DVC removed this stage's outputs before it started: {target} restores the committed ones "
                "from DVC's cache and `git checkout -- data/metrics` its uncached metrics (the next `dvc repro` "
                "that succeeds brings them back too)")
    replaced = replaced_outputs()
    if replaced:
        return f"{sep}already replaced: {', '.join(map(str, replaced))}"
    return f"{sep}earlier outputs are intact" if write_error else ""


def refuse_ranks_unless_supported(name: str) -> None:
    """Under torchrun every rank would run a one-process stage in full and write its outputs."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and name not in DATA_PARALLEL:
        raise PipelineError(f"'{name}' runs on one rank; start it without torchrun "
                            f"(data-parallel stages: {', '.join(DATA_PARALLEL)})")


class Terminated(BaseException):
    """Raised by the SIGTERM handler so that `with atomic_directory(...)` blocks clean up."""


def _on_sigterm(signum, frame):
    raise Terminated()


def run(app: typer.Typer, module: str) -> None:
    """The `python -m stages.<module>` entry point."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    app(prog_name=f"python -m {module}")


def echo_json(obj: dict) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def parse_splits(text: str, allowed: tuple = REPORTED) -> list[str]:
    """`--splits test,validation` -> the chosen splits in their canonical order."""
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in allowed]
    if unknown or not chosen:
        raise PipelineError(f"--splits {text!r}: choose from {', '.join(allowed)}")
    return [s for s in allowed if s in chosen]
