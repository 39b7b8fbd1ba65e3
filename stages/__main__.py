"""`python -m stages`: the index of commands. `python -m stages NAME ARGS` runs the stage module
`stages/NAME.py` (dashes for underscores) or the tool NAME of `stages/tools.py`; DVC calls the
modules directly (`python -m stages.ppo ...`)."""

import importlib
import pkgutil
import sys
from pathlib import Path

import typer

NOT_STAGES = {"common", "tools", "__main__"}


def stage_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name not in NOT_STAGES)


def index() -> str:
    from stages import tools

    lines = ["usage: python -m stages.<stage> [OPTIONS]  (or python -m stages <name> [OPTIONS])", "", "DVC stages:"]
    for name in stage_modules():
        command = typer.main.get_command(importlib.import_module(f"stages.{name}").app)
        lines.append(f"  {name.replace('_', '-'):<16} {(command.help or '').strip().splitlines()[0]}")
    lines += ["", "tools (python -m stages.tools <name>):"]
    lines += [f"  {name:<16} {(cmd.help or '').strip().splitlines()[0]}"
              for name, cmd in typer.main.get_command(tools.app).commands.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from stages.common import run

    argv = sys.argv[1:] if argv is None else argv

    if not argv or argv[0] in ("-h", "--help"):
        print(index())
        return
    name, module = argv[0], argv[0].replace("-", "_")
    sys.argv = [f"python -m stages {name}", *argv[1:]]
    if module in stage_modules():
        run(importlib.import_module(f"stages.{module}").app, f"stages {name}")
        return
    from stages import tools

    sys.argv = ["python -m stages", *argv]
    run(tools.app, "stages")


if __name__ == "__main__":  # spawned env workers re-import this module: keep the guard
    main()
