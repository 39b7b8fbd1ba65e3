"""The package's layers: no import circles, and no module imports a layer above its own.

Every `import` counts, at module level and inside functions (a lazy import runs on some
branch, so it ties the modules just the same); only imports under `if TYPE_CHECKING:` are
left out (they never run). The layers, lowest first:

    base (constants, errors, io, ...) -> config -> envs, data, policies -> training
    -> evaluation -> report, bench

Modules of one layer may import each other as long as that makes no circle. Within
`training` the row is finer: the shared cloning loss and the success buffer, then rounds,
then SFT, ACPPO and CO-RFT, then iRe-VLA (which runs SFT's loop and ACPPO's round).
A new module must be given a layer here (the test names the ones that have none).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Module-name prefix -> layer; the longest matching prefix wins.
LAYERS: dict[str, float] = {
    "vla_pipeline": 0,  # the package's __init__ (environment defaults only)
    "vla_pipeline.constants": 0,
    "vla_pipeline.errors": 0,
    "vla_pipeline.io": 0,
    "vla_pipeline.parallel": 0,
    "vla_pipeline.lifetime": 0,  # child processes that die with their stage
    "vla_pipeline.distributed": 0,
    "vla_pipeline.versions": 0,
    "vla_pipeline.preflight": 0,
    "vla_pipeline.stats": 0,
    "vla_pipeline.metaworld_names": 0,
    "vla_pipeline.config": 1,
    "vla_pipeline.envs": 2,
    "vla_pipeline.data": 2,
    "vla_pipeline.policies": 2,
    "vla_pipeline.provenance": 2,
    "vla_pipeline.checkpoint": 2,
    "vla_pipeline.demos": 2,
    "vla_pipeline.fits": 2,  # is a snapshot or checkpoint made for this env?
    "vla_pipeline.outputs": 2,  # how stages write checkpoints, curves, evaluations
    "vla_pipeline.training": 3,
    "vla_pipeline.training.behaviour_cloning": 3.0,
    "vla_pipeline.training.success_buffer": 3.0,
    "vla_pipeline.training.rounds": 3.1,
    "vla_pipeline.training.supervised": 3.2,
    "vla_pipeline.training.ppo": 3.2,
    "vla_pipeline.training.corft": 3.2,
    "vla_pipeline.training.ire": 3.3,
    "vla_pipeline.evaluation": 4,
    "vla_pipeline.readout": 4,
    "vla_pipeline.report": 5,
    "vla_pipeline.bench": 5,
}


# ---------------------------------------------------------------------------- the checker


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` under `root`."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (getattr(test, "id", None) or getattr(test, "attr", None)) == "TYPE_CHECKING"


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The project modules one import statement loads (`from a import b`: a.b when that is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if node.level:  # relative: resolved against the importing module's package
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    names = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
    if target in known and len(names) < len(node.names):
        names.append(target)
    return names


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its file (TYPE_CHECKING blocks excepted)."""
    files = module_files(root, package)
    known = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        edges: set[str] = set()

        def visit(node: ast.AST) -> None:
            if _is_type_checking(node):
                return
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(_imported(node, module, path.name == "__init__.py", known))
            for child in ast.iter_child_nodes(node):
                visit(child)

        visit(ast.parse(path.read_text(encoding="utf-8")))
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of two or more modules (each one circle or more), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(cycles)


def layer_of(module: str, layers: dict[str, float]) -> float | None:
    matches = [prefix for prefix in layers if module == prefix or module.startswith(prefix + ".")]
    return layers[max(matches, key=len)] if matches else None


def upward_imports(graph: dict[str, set[str]], layers: dict[str, float]) -> list[str]:
    """'a (layer) -> b (layer)' for every import of a module in a higher layer."""
    found = []
    for module in sorted(graph):
        for target in sorted(graph[module]):
            here, there = layer_of(module, layers), layer_of(target, layers)
            if here is not None and there is not None and there > here:
                found.append(f"{module} ({here}) -> {target} ({there})")
    return found


# ---------------------------------------------------------------------------- the checker on a hand-made case


def _write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_a_circle_through_a_lazy_import_and_an_upward_import(tmp_path):
    # low -> high at module level; high -> low only inside a function: still a circle.
    # mid imports low (down, fine); `if TYPE_CHECKING:` imports do not count.
    _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "import pkg.high\n",
        "pkg/high.py": "def f():\n    from . import low\n    return low\n",
        "pkg/mid.py": "from typing import TYPE_CHECKING\nfrom pkg.low import x\n"
                      "if TYPE_CHECKING:\n    from pkg import high\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": set(), "pkg.low": {"pkg.high"}, "pkg.high": {"pkg.low"}, "pkg.mid": {"pkg.low"}}
    assert find_cycles(graph) == [["pkg.high", "pkg.low"]]
    layers = {"pkg": 0, "pkg.low": 0, "pkg.mid": 1, "pkg.high": 2}
    assert upward_imports(graph, layers) == ["pkg.low (0) -> pkg.high (2)"]


def test_the_checker_passes_a_package_without_circles(tmp_path):
    _write_package(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "", "pkg/b.py": "from pkg import a\n"})
    graph = import_graph(tmp_path, "pkg")
    assert find_cycles(graph) == []
    assert upward_imports(graph, {"pkg": 0, "pkg.b": 1}) == []


# ---------------------------------------------------------------------------- the package itself


def test_every_module_has_a_layer():
    graph = import_graph(ROOT, "vla_pipeline")
    assert [m for m in sorted(graph) if layer_of(m, LAYERS) is None] == []


def test_no_import_circles():
    assert find_cycles(import_graph(ROOT, "vla_pipeline")) == []


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(import_graph(ROOT, "vla_pipeline"), LAYERS) == []


def test_validating_params_imports_neither_metaworld_nor_envs():
    graph = import_graph(ROOT, "vla_pipeline")
    reached, todo = set(), ["vla_pipeline.config"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph[module])
    assert not any(m.startswith(("vla_pipeline.envs", "vla_pipeline.training")) for m in reached), sorted(reached)


def test_parsing_params_with_task_names_leaves_metaworld_unimported():
    import subprocess
    import sys

    code = ("import sys\n"
            "from vla_pipeline.config import parse_params\n"
            "parse_params({'env': {'suite': 'custom', 'tasks': ['reach-v3']},\n"
            "              'sft': {'task_weights': {'reach-v3': 2}}})\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('metaworld', 'mujoco')"
            " or m.startswith('vla_pipeline.envs')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------- the stage commands


def test_stage_modules_share_only_the_common_preamble():
    """A stage module imports `stages.common` and the library, never another stage module: editing
    one stage's module must not change what another stage runs (its DVC deps)."""
    graph = import_graph(ROOT, "stages")
    inside = {module: sorted(t for t in targets if t not in ("stages", "stages.common"))
              for module, targets in graph.items() if module != "stages.__main__"}
    assert {m: t for m, t in inside.items() if t} == {}


def test_no_file_over_400_lines_and_no_stage_command_over_60():
    long_files = {str(p.relative_to(ROOT)): n for package in ("vla_pipeline", "stages")
                  for p in (ROOT / package).rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long_files == {}
    long_commands = {}
    for path in (ROOT / "stages").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            decorated = isinstance(node, ast.FunctionDef) and any(
                "command" in ast.unparse(d) for d in node.decorator_list)
            if decorated and node.end_lineno - node.lineno + 1 > 60:
                long_commands[f"{path.name}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert long_commands == {}
