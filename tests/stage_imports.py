"""Which project files a DVC stage's command runs, and which of them its `deps` miss.

Used by `tests/test_deps.py` (and runnable by hand: `python -m tests.stage_imports`).

For every stage that DVC resolves from `dvc.yaml` + `params.yaml` (foreach items
included), the command `python -m stages <sub> ...` is mapped to the Typer callback of
`<sub>`. A fresh interpreter then imports `stages` (the `-m` entry point), every module the
callback and the `stages/cli.py` helpers it calls import, and, until nothing new appears,
every module that a loaded project module imports inside a function (lazy imports run
only on some branches, so they count as well). The project files left in `sys.modules`
are what the stage runs; each must lie at or under one of the stage's `deps`. Imports
under `if TYPE_CHECKING:` never run and do not count.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: argv = [repo root, subcommand]; prints a JSON list of the
# repo-relative files of every project module the subcommand can load.
_PROBE = r'''
import ast, importlib, importlib.util, inspect, json, sys
from pathlib import Path

root = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(root))
PACKAGES = {p.parent.name for p in root.glob("*/__init__.py")}


def in_project(name):
    return name.split(".")[0] in PACKAGES


def is_type_checking(node):
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (getattr(test, "id", None) or getattr(test, "attr", None)) == "TYPE_CHECKING"


def imported_names(tree, package, module_level):
    """Absolute module names imported in `tree` (module_level=False: only inside functions)."""
    names = []

    def visit(node, in_function):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and in_function != module_level:
            if isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                names.append(base)
                names.extend(f"{base}.{alias.name}" for alias in node.names)  # maybe submodules
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        children = node.orelse if is_type_checking(node) else ast.iter_child_nodes(node)
        for child in children:
            visit(child, inner)

    visit(tree, False)
    return names


def load(name):
    """Import `name` if it is a project module (a `from x import attr` name may not be)."""
    if not in_project(name) or name in sys.modules:
        return
    try:
        if importlib.util.find_spec(name) is None:
            return
    except ModuleNotFoundError:
        return
    importlib.import_module(name)


import stages.__main__  # noqa: E402,F401  the `python -m stages` entry point (guarded main)
from stages import cli  # noqa: E402
import typer  # noqa: E402

command = typer.main.get_command(cli.app).commands[sys.argv[2]]
# The callback, then the module-level helpers of cli.py it names (transitively).
cli_tree = ast.parse(Path(cli.__file__).read_text())
helpers = {n.name: n for n in cli_tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
todo, seen = [inspect.unwrap(command.callback).__name__], set()
while todo:
    fn = todo.pop()
    if fn in seen or fn not in helpers:
        continue
    seen.add(fn)
    for name in imported_names(helpers[fn], "stages", module_level=False):
        load(name)
    todo += [n.id for n in ast.walk(helpers[fn]) if isinstance(n, ast.Name)]

done = set()
while True:
    new = [m for m, mod in list(sys.modules.items())
           if m not in done and in_project(m) and getattr(mod, "__file__", None)]
    if not new:
        break
    for name in new:
        done.add(name)
        if name == "stages.cli":
            continue  # only the command's own code path counts (above)
        mod = sys.modules[name]
        package = name if mod.__file__.endswith("__init__.py") else name.rpartition(".")[0]
        for imported in imported_names(ast.parse(Path(mod.__file__).read_text()), package, module_level=False):
            load(imported)

files = sorted({str(Path(m.__file__).resolve().relative_to(root)) for n, m in sys.modules.items()
                if in_project(n) and getattr(m, "__file__", None)})
print(json.dumps(files))
'''


def resolved_stages(repo: Path) -> dict[str, tuple[str, list[str]]]:
    """stage name -> (cmd, deps), resolved by DVC itself from dvc.yaml and params.yaml."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return {stage.name: (stage.cmd, [str(d.def_path) for d in stage.deps])
                for stage in dvc_repo.index.stages}


def subcommand(cmd: str) -> str:
    argv = shlex.split(cmd)
    if argv[:3] != ["python", "-m", "stages"] or len(argv) < 4:
        raise ValueError(f"not a `python -m stages <command>` line: {cmd!r}")
    return argv[3]


def loaded_files(repo: Path, sub: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(repo), sub], capture_output=True, text=True,
                          cwd=repo, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"import probe of `{sub}` failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def missing_deps(repo: Path = ROOT, required: tuple[str, ...] = ("requirements.lock",),
                 cache: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """stage -> files its command runs (plus `required`) that none of its deps covers.

    `cache`: subcommand -> loaded files, filled as probes run (pass one dict to reuse them).
    """
    from concurrent.futures import ThreadPoolExecutor

    cache = {} if cache is None else cache
    stages = resolved_stages(repo)
    todo = sorted({subcommand(cmd) for cmd, _ in stages.values()} - cache.keys())
    with ThreadPoolExecutor(max_workers=2) as pool:  # one fresh interpreter per subcommand
        cache.update(zip(todo, pool.map(lambda sub: loaded_files(repo, sub), todo)))
    report = {}
    for name, (cmd, deps) in stages.items():
        sub = subcommand(cmd)
        missing = [f for f in [*required, *cache[sub]] if not covered(f, deps)]
        if missing:
            report[name] = missing
    return report


def format_report(report: dict[str, list[str]]) -> str:
    return "\n".join(f"stage '{stage}' runs code its deps do not list: {', '.join(files)}"
                     for stage, files in sorted(report.items()))


if __name__ == "__main__":
    for sub in sys.argv[1:] or ["collect-demos"]:
        print(sub, loaded_files(ROOT, sub))
