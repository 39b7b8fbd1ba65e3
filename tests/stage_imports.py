"""Which project files a DVC stage's command runs, and which of them its `deps` miss.

Used by `tests/test_deps.py` (and runnable by hand: `python -m tests.stage_imports`).

For every stage that DVC resolves from `dvc.yaml` + `params.yaml` (foreach items
included), the command `python -m stages.<module> ...` names its stage module. A fresh
interpreter then imports that module (its module-level imports), every module its
functions import, and, until nothing new appears, every module that a loaded project
module imports inside a function (lazy imports run only on some branches, so they count
as well). The project files left in `sys.modules`
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

# Runs in a fresh interpreter: argv = [repo root, stage module]; prints a JSON list of the
# repo-relative files of every project module the stage can load.
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


stage = importlib.import_module(f"stages.{sys.argv[2]}")  # its module-level imports load
for name in imported_names(ast.parse(Path(stage.__file__).read_text()), "stages", module_level=False):
    load(name)  # and what its functions import lazily

done = set()
while True:
    new = [m for m, mod in list(sys.modules.items())
           if m not in done and in_project(m) and getattr(mod, "__file__", None)]
    if not new:
        break
    for name in new:
        done.add(name)
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


def stage_module(cmd: str) -> str:
    """`python -m stages.ppo --round r01` -> `ppo`."""
    argv = shlex.split(cmd)
    if argv[:2] != ["python", "-m"] or len(argv) < 3 or not argv[2].startswith("stages."):
        raise ValueError(f"not a `python -m stages.<module>` line: {cmd!r}")
    return argv[2].removeprefix("stages.")


def loaded_files(repo: Path, module: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(repo), module], capture_output=True, text=True,
                          cwd=repo, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"import probe of `stages.{module}` failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def missing_deps(repo: Path = ROOT, required: tuple[str, ...] = ("requirements.lock",),
                 cache: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """stage -> files its command runs (plus `required`) that none of its deps covers.

    `cache`: stage module -> loaded files, filled as probes run (pass one dict to reuse them).
    """
    from concurrent.futures import ThreadPoolExecutor

    cache = {} if cache is None else cache
    stages = resolved_stages(repo)
    todo = sorted({stage_module(cmd) for cmd, _ in stages.values()} - cache.keys())
    with ThreadPoolExecutor(max_workers=2) as pool:  # one fresh interpreter per stage module
        cache.update(zip(todo, pool.map(lambda sub: loaded_files(repo, sub), todo)))
    report = {}
    for name, (cmd, deps) in stages.items():
        sub = stage_module(cmd)
        missing = [f for f in [*required, *cache[sub]] if not covered(f, deps)]
        if missing:
            report[name] = missing
    return report


CODE_ROOTS = ("stages", "vla_pipeline")


def is_code(dep: str) -> bool:
    return dep.split("/")[0] in CODE_ROOTS


def extra_deps(repo: Path = ROOT, cache: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """stage -> code deps it lists but never runs (a folder counts as extra: it covers files the
    stage does not load). Each one reruns the stage for an edit that cannot change its result."""
    cache = {} if cache is None else cache
    missing_deps(repo, cache=cache)  # fills the cache
    report = {}
    for name, (cmd, deps) in resolved_stages(repo).items():
        loaded = set(cache[stage_module(cmd)])
        extra = [d for d in deps if is_code(d) and d not in loaded]
        if extra:
            report[name] = extra
    return report


def write_code_deps(repo: Path = ROOT) -> list[str]:
    """Rewrite every stage's code deps in dvc.yaml as exactly the files its module loads (after
    `requirements.lock`; data deps, comments and the rest stay as they are). Returns the stages
    whose lists changed. `python -m tests.stage_imports --write` runs it."""
    import re

    import yaml

    path = repo / "dvc.yaml"
    lines = path.read_text().splitlines(keepends=True)
    spec = yaml.safe_load("".join(lines))["stages"]
    changed, cache = [], {}
    for name, stage in spec.items():
        body = stage.get("do", stage)
        module = re.search(r"python -m stages\.(\w+)", body["cmd"]).group(1)
        if module not in cache:
            cache[module] = loaded_files(repo, module)
        files = ["requirements.lock", *cache[module]]
        start = next(i for i, line in enumerate(lines) if re.match(rf"  {name}:(\s|$)", line))
        deps_at = next(i for i in range(start, len(lines)) if lines[i].strip() == "deps:")
        end = next(i for i in range(deps_at + 1, len(lines)) if not lines[i].lstrip().startswith("- "))
        indent = lines[deps_at + 1][: len(lines[deps_at + 1]) - len(lines[deps_at + 1].lstrip())]
        old = [line.strip()[2:] for line in lines[deps_at + 1:end]]
        data = [d for d in old if not is_code(d) and d != "requirements.lock"]
        new = [f"{indent}- {d}\n" for d in [*files, *data]]
        if [*files, *data] != old:
            changed.append(name)
        lines[deps_at + 1:end] = new
    path.write_text("".join(lines))
    return changed


def format_report(report: dict[str, list[str]]) -> str:
    return "\n".join(f"stage '{stage}' runs code its deps do not list: {', '.join(files)}"
                     for stage, files in sorted(report.items()))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        print("rewrote the code deps of:", ", ".join(write_code_deps()) or "none")
    else:
        for module in sys.argv[1:] or ["collect_demos"]:
            print(module, loaded_files(ROOT, module))
