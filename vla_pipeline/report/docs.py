"""The numbers in README.md and docs/results.md, rendered from the committed metrics files.

Nothing here is typed by hand: `readme_headline` and `results_page` are pure functions of
`data/metrics` (and the method list `params.yaml` defines), built on what the report stage
already loads (`collect.load_results`, `collect.seed_tables`, `render.method_rows`).
`update_docs` rewrites the generated blocks; `stale_docs` names each block that differs from
what the metrics give (a test keeps it empty, so a number edited by hand, or metrics changed
without regenerating, fails the tests).
"""

from __future__ import annotations

from pathlib import Path

from vla_pipeline.config import load_params
from vla_pipeline.errors import PipelineError
from vla_pipeline.io import read_json, write_text_atomic
from vla_pipeline.report import _protocol_items, bench_sections, collect, render

README = "README.md"
RESULTS = "docs/results.md"
HEADLINE_BEGIN, HEADLINE_END = "<!-- generated:headline -->", "<!-- /generated:headline -->"
HEADLINE_BLOCK = f"{README} {HEADLINE_BEGIN}"
COMMAND = "python -m stages.tools docs"
_md_table = render._md_table  # noqa: SLF001: the report's own Markdown table writer


def _load(metrics_dir: Path, params=None) -> tuple[list[collect.MethodResult], object]:
    """The report's results; params default to the `params.yaml` of the repository holding
    `metrics_dir` (`<root>/data/metrics`), which says which methods exist and in what order."""
    metrics_dir = Path(metrics_dir)
    if params is None:
        params = load_params(metrics_dir.resolve().parents[1] / "params.yaml")
    return collect.load_results(metrics_dir, params), params


def _short(task: str) -> str:
    return task.removesuffix("-v3")


def _counts(p: dict | None) -> str:
    if not p:
        return ""
    return f"+{p['only_new']} / -{p['only_base']}, p {render.fmt(p['mcnemar_p'], '.2g')}"


def _headline_results(results: list[collect.MethodResult], demonstrator: str, small_set: str,
                      small_demos: str) -> list[tuple[collect.MethodResult, str, bool]]:
    """(result, label, final) for the headline rows: the expert ceiling, SFT, every RL round
    evaluated on test (ACPPO, iRe-VLA, the unfrozen-PPO baseline), CO-RFT's base and its
    default run (the first of `offline_runs`; its ablations are on docs/results.md)."""
    tested = [r for r in results if r.split("test")]
    last = {}
    for r in tested:
        if r.method.chain:
            last[r.method.chain] = r.name  # the chain's last round on test, in params order
    rows, corft_shown = [], False
    for r in tested:
        fam = r.method.family
        if r.name == "expert":
            rows.append((r, "scripted expert (ceiling)" + (f", `{demonstrator}`" if demonstrator else ""), False))
        elif r.name == "sft":
            rows.append((r, "SFT", False))
        elif r.name == "sft-small":
            rows.append((r, f"SFT on the small set (`sft-small`: {small_demos})", False))
        elif r.method.chain:
            final = last[r.method.chain] == r.name
            prefix = {"ACPPO": "ACPPO", "iRe-VLA": "iRe-VLA", "PPO": "unfrozen PPO (baseline)"}.get(r.method.chain, fam)
            rows.append((r, f"{prefix} `{r.name}`" + (" (final)" if final else ""), final and not r.method.chain.startswith("PPO")))
        elif r.name == "sft-offline":
            rows.append((r, f"SFT on CO-RFT's small set (`sft-offline`: {small_set})", False))
        elif fam.startswith("CO-RFT") and not corft_shown:
            corft_shown = True
            rows.append((r, f"CO-RFT `{r.name}`", True))
    return rows


def readme_headline(metrics_dir: Path, params=None) -> str:
    """The README's results table (test split) with its caption, as Markdown."""
    results, params = _load(metrics_dir, params)
    proto = collect.protocol(results, params)
    small_set = (f"{params.offline_demos.episodes_per_task} `{proto['demonstrators']['offline_demos']}` demos "
                 "per task")
    rows = _headline_results(results, proto["demonstrators"]["demos"], small_set,
                             f"the first {params.demos_small.episodes_per_task} demos per task")
    tasks = sorted({t for r, _, _ in rows for t in r.metrics.get("tasks", {})})
    hard = [t for t in tasks if any((r.metrics["tasks"].get(t, {}).get("test") or {}).get("success", 1.0) < 1.0
                                    for r, _, _ in rows)]
    solved = [t for t in tasks if t not in hard]
    per_task = proto.get("episodes_per_task", {}).get("test")
    caption = (f"MT{len(tasks)} test split ({per_task} placements per task, never used to choose anything), "
               f"cameras {', '.join(f'`{c}`' for c in proto.get('cameras', []))} at {proto.get('image_size')} px, "
               f"horizon {proto.get('horizon')}, deterministic actions. Success is the mean over tasks with a "
               "Wilson 95 % interval; steps to success are averaged over solved episodes; \"vs base\" pairs "
               "each policy with its base (SFT; small-set chains: `sft-small`; CO-RFT: `sft-offline`) on the same "
               "test episodes: solved "
               "only by it / only by the base, exact McNemar p.")
    header = ["policy", "test success [95 %]", "steps to success", "vs base (test)",
              *(_short(t) for t in hard), "validation"]
    table = []
    for r, label, final in rows:
        test, validation = r.split("test"), r.split("validation")
        versus = _counts(r.paired.get("test"))
        gain = ((r.relative or {}).get("test") or {}).get("success_gain_relative")
        if gain is not None:
            versus += f"; {gain:+.1%} relative"
        bold = (lambda s: f"**{s}**") if final else (lambda s: s)
        table.append([bold(label), bold(render.success_cell(test)), bold(render.fmt(test["steps_to_success"], ".1f")),
                      versus, *(render.fmt(r.metrics["tasks"].get(t, {}).get("test", {}).get("success"), ".2f")
                                for t in hard),
                      render.fmt(validation and validation["success"], ".3f", "")])
    seeds = [t for t in collect.seed_tables(Path(metrics_dir), {r.name: r.metrics for r in results})
             if t["current"] and t["split"] == "test"]
    seed_rows = [[f"`{t['final']}`", render.join_values(t["rows"], "success", ".3f"),
                  render.join_values(t["rows"], "gain", "+.3f"), render.join_values(t["rows"], "p", ".2g"),
                  {True: "yes", False: "no"}.get(t["positive_on_every_seed"], "-"),
                  f"[{t['file']}](data/metrics/{t['file']})"] for t in seeds]
    seeds_md = ["", "Three seeds of each chain from the same base (test split; gain and exact McNemar p against the "
                "base on the same episodes):", "",
                _md_table(["final policy", "success per seed", "gain per seed", "p per seed",
                           "gain on every seed", "file"], seed_rows)] if seed_rows else []
    note = (f"The other {len(solved)} tasks ({', '.join(_short(t) for t in solved)}) are at 1.00 on test for "
            "every row. ") if solved else ""
    note += f"Generated from `data/metrics` by `{COMMAND}`; the full tables: [docs/results.md](docs/results.md)."
    return "\n".join([caption, "", _md_table(header, table), *seeds_md, "", note])


def _task_table(results: list[collect.MethodResult], split: str) -> str:
    tasks, rows = collect.task_rows(results, split)
    return _md_table(["method", *(_short(t) for t in tasks)],
                     [[r["method"], *(render.fmt(r["cells"][t], ".2f") for t in tasks)] for r in rows])


def _discordant_tasks(section: dict) -> str:
    cells = [f"{_short(t)} +{c['only_new']} / -{c['only_base']}" for t, c in sorted(section.get("tasks", {}).items())
             if c.get("only_new") or c.get("only_base")]
    return ", ".join(cells) or "none"


def _paired_table(metrics_dir: Path) -> str:
    rows = []
    for path in sorted(metrics_dir.glob("paired-*.json")):
        data = read_json(path, "paired comparison")
        for split in data.get("splits", []) if isinstance(data, dict) else []:
            s = data.get(split)
            if isinstance(s, dict) and "only_new" in s:
                rows.append([f"`{path.stem.removeprefix('paired-')}` vs `sft`", split, str(s["episodes"]),
                             f"+{s['only_new']} / -{s['only_base']}", render.fmt(s["mcnemar_p"], ".2g"),
                             render.fmt(s["success_diff"], "+.3f"), render.fmt(s["steps_diff_both_solved"], "+.1f"),
                             _discordant_tasks(s), path.name])
    return _md_table(["comparison", "split", "episodes", "solved only by it / only by SFT", "McNemar p",
                      "success diff", "steps diff (both solved)", "per task (won / lost)", "file"], rows)


def _ci(values) -> str:
    return "" if not values else f" [{values[0]:+.1%}, {values[1]:+.1%}]"


def _relative_rows(label: str, runs: dict, file: str) -> list[list[str]]:
    rows = []
    for run, splits in runs.items():
        for split in ("test", "validation"):
            s = splits.get(split) if isinstance(splits, dict) else None
            if not isinstance(s, dict) or s.get("success_gain_relative") is None:
                continue
            steps = s.get("steps_change_relative")
            rows.append([f"`{run}`" + (f" ({label})" if label else ""), split,
                         f"{s['base_success']:.3f} -> {s['success']:.3f}",
                         f"{s['success_gain_relative']:+.1%}{_ci(s.get('success_gain_relative_ci95'))}",
                         f"+{s['only_new']} / -{s['only_base']}, p {render.fmt(s['mcnemar_p'], '.2g')}",
                         f"{render.fmt(s.get('base_steps_to_success'), '.1f')} -> "
                         f"{render.fmt(s.get('steps_to_success'), '.1f')}",
                         ("-" if steps is None else f"{steps:+.1%}") + _ci(s.get("steps_change_relative_ci95")), file])
    return rows


def _relative_table(metrics_dir: Path, results: list[collect.MethodResult]) -> str:
    rows = []
    for r in results:
        if r.relative:
            rows += _relative_rows("", {r.name: r.relative}, f"corft-{r.name}.json")
    for path in sorted(metrics_dir.glob("relative-*.json")):
        data = read_json(path, "CO-RFT relative changes")
        if isinstance(data, dict) and isinstance(data.get("runs"), dict):
            rows += _relative_rows(path.stem.removeprefix("relative-"), data["runs"], path.name)
    return _md_table(["run", "split", "success (SFT -> run)", "relative success gain [95 %]",
                      "solved only by run / only by SFT", "steps to success", "relative steps change [95 %]",
                      "file"], rows)


def _seeds_table(metrics_dir: Path, results: list[collect.MethodResult]) -> str:
    tables = collect.seed_tables(metrics_dir, {r.name: r.metrics for r in results})
    return _md_table(["file", "final", "split", "success per seed", "steps per seed", "gain per seed", "p per seed",
                      "mean gain", "positive on every seed", "of this run"],
                     [[t["file"], str(t["final"]), str(t["split"]), render.join_values(t["rows"], "success", ".3f"),
                       render.join_values(t["rows"], "steps", ".1f"), render.join_values(t["rows"], "gain", "+.3f"),
                       render.join_values(t["rows"], "p", ".2g"), render.fmt(t["mean_gain"], "+.3f"),
                       {True: "yes", False: "no"}.get(t["positive_on_every_seed"], "-"), render.seed_table_status(t)]
                      for t in tables])


def results_page(metrics_dir: Path, params=None) -> str:
    """docs/results.md: every committed result as tables, generated whole."""
    metrics_dir = Path(metrics_dir)
    results, params = _load(metrics_dir, params)
    ours = collect.ours_beside_papers(results)
    out = ["# Results", "",
           f"Generated from the committed `data/metrics/*.json` by `{COMMAND}`; do not edit by hand "
           "(`tests/test_docs.py` fails when a number here differs from its metrics file). The report page "
           "`data/report/report.html` has the same tables with curves and rollouts; the reasoning behind "
           "the defaults and earlier runs is in the [lab notebook](notebook.md).", "",
           "## Protocol", "", *(f"- {k}: {v}" for k, v in _protocol_items(collect.protocol(results, params))),
           "", "## Every method", "",
           "Success with 95 % Wilson intervals and mean steps to success. The paired columns compare with the "
           "method's base on the same episodes (test where both ran it, else validation).", "",
           _md_table(["method", "family", "test success", "test steps", "validation success", "val. steps", "base",
                      "paired on", "diff", "only new / only base", "p", "steps diff"],
                     [[r["method"], r["family"], r["test"], r["test_steps"], r["validation"], r["validation_steps"],
                       r["paired"]["base"], r["paired"]["split"], r["paired"]["diff"], r["paired"]["counts"],
                       r["paired"]["p"], r["paired"]["steps"]] for r in render.method_rows(results)]),
           "", "## Per task, test split", "", _task_table(results, "test"),
           "", "## Per task, validation split", "", _task_table(results, "validation")]
    groups = collect.group_rows(results)
    if groups:
        out += ["", "## iRe-VLA's groups (train configurations with a demo: expert; seen only by RL: new)", "",
                _md_table(["method", "expert group", "new group"],
                          [[g["method"], render.success_cell(g["cells"].get("expert")),
                            render.success_cell(g["cells"].get("new"))] for g in groups])]
    out += ["", "## Paired with SFT on the same episodes (`paired-*.json`)", "",
            "Per round and split: episodes solved only by the round / only by SFT, exact McNemar p, the "
            "success difference, steps on the episodes both solved, and the tasks where the two differ.", "",
            _paired_table(metrics_dir),
            "", "## CO-RFT: relative changes against its SFT (`corft-*.json`, `relative-*.json`)", "",
            "Relative success gain and steps change with paired-bootstrap 95 % intervals within tasks "
            "(the CO-RFT paper's measures).", "", _relative_table(metrics_dir, results),
            "", "## Seeds (`seeds-*.json`: a gain is real only when positive on every seed)", "",
            "\"Of this run\": whether one seed scores what the committed final policy scores now; a table of an "
            "earlier default is kept as evidence and marked.", "", _seeds_table(metrics_dir, results),
            "", "## Beside the papers", "",
            _md_table(["method", "paper's measure", "paper", "", "ours", "setting"],
                      [[p["method"], p["measure"], p["paper"], p["paper_steps"], ours.get(p["method"], "not run"),
                        p["setting"]] for p in collect.PAPERS])]
    for bench in bench_sections(metrics_dir):
        out += ["", f"## Benchmark (`{bench['command']}`, `{bench['file']}`)", "",
                _md_table(["measurement", "median", "unit", "peak RSS MiB"],
                          [[b["name"], b["median"], b["unit"], b["rss"]] for b in bench["figures"]]),
                "", _md_table(["ratio", "value", "target"],
                              [[b["name"], b["value"], b["target"]] for b in bench["ratios"]])]
    return "\n".join(out) + "\n"


def _split_block(text: str, where: str) -> tuple[str, str, str]:
    """(before, inside, after) of the headline block; an error naming the file when absent."""
    if (text.count(HEADLINE_BEGIN) != 1 or text.count(HEADLINE_END) != 1
            or text.index(HEADLINE_BEGIN) > text.index(HEADLINE_END)):
        raise PipelineError(f"{where}: expected one `{HEADLINE_BEGIN}` ... `{HEADLINE_END}` block")
    head, rest = text.split(HEADLINE_BEGIN)
    inside, tail = rest.split(HEADLINE_END)
    return head + HEADLINE_BEGIN, inside, HEADLINE_END + tail


def _expected(repo_root: Path) -> tuple[str, str]:
    metrics_dir = Path(repo_root) / "data" / "metrics"
    params = load_params(Path(repo_root) / "params.yaml")
    return "\n" + readme_headline(metrics_dir, params) + "\n", results_page(metrics_dir, params)


def update_docs(repo_root: Path) -> list[Path]:
    """Rewrite README.md's headline block and docs/results.md; return the files that changed."""
    root = Path(repo_root)
    headline, page = _expected(root)
    readme = root / README
    head, inside, tail = _split_block(readme.read_text(encoding="utf-8"), str(readme))
    changed = []
    if inside != headline:
        write_text_atomic(readme, head + headline + tail)
        changed.append(readme)
    results = root / RESULTS
    if not results.is_file() or results.read_text(encoding="utf-8") != page:
        results.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(results, page)
        changed.append(results)
    return changed


def stale_docs(repo_root: Path) -> list[str]:
    """The generated blocks that differ from what the committed metrics give (empty: all current)."""
    root = Path(repo_root)
    headline, page = _expected(root)
    stale = []
    readme = root / README
    try:
        _, inside, _ = _split_block(readme.read_text(encoding="utf-8"), str(readme))
        if inside != headline:
            stale.append(HEADLINE_BLOCK)
    except (OSError, PipelineError):
        stale.append(HEADLINE_BLOCK)
    results = root / RESULTS
    if not results.is_file() or results.read_text(encoding="utf-8") != page:
        stale.append(RESULTS)
    return stale


__all__ = ["HEADLINE_BEGIN", "HEADLINE_BLOCK", "HEADLINE_END", "README", "RESULTS", "readme_headline",
           "results_page", "stale_docs", "update_docs"]
