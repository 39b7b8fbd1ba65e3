"""Thin Typer commands, one per DVC stage: `python -m stages <name> --help`."""
