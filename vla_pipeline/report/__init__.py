"""The `report` stage: one page that sets every method side by side.

`build_report` reads the metrics folder (and the evaluation videos), and writes into `out_dir`:
- `report.html`: self-contained (images embedded, nothing loaded from a network);
- `index.html`: the same page without animations, with stills of the policies evaluated on the
  test split only: small enough for git, so a clone shows the committed run's page;
- `summary.md`: the tables, committed to git;
- `headline/<method>.json`: the few numbers `dvc metrics show` prints, one row per method.
"""

from __future__ import annotations

from pathlib import Path

from vla_pipeline.config.training import OFFLINE_BASE
from vla_pipeline.errors import PipelineError
from vla_pipeline.io import atomic_directory, read_json, write_json_atomic, write_text_atomic
from vla_pipeline.report import collect, figures, render

HTML_FILE = "report.html"
LIGHT_HTML_FILE = "index.html"  # in git: the page without animations, stills of the test-split policies
SUMMARY_FILE = "summary.md"
HEADLINE_DIR = "headline"
BENCH_FILES = {"bench.json": "python -m stages bench", "bench-scale.json": "python -m stages bench-scale"}


def _protocol_items(proto: dict) -> list[tuple[str, str]]:
    split_seeds = proto.get("split_seeds", {})
    per_task = proto.get("episodes_per_task", {})
    items = [("MetaWorld", proto.get("metaworld")), ("MuJoCo", proto.get("mujoco")),
             ("tasks", f"{len(proto['tasks'])}: {', '.join(proto['tasks'])}"),
             ("cameras", ", ".join(proto.get("cameras", []))), ("image size", f"{proto.get('image_size')} px"),
             ("action chunk K", proto.get("chunk_len")), ("horizon", f"{proto.get('horizon')} env steps"),
             ("reward", proto.get("reward")), ("deterministic evaluation", proto.get("deterministic"))]
    items += [(f"{split} split", f"{per_task.get(split, '-')} episodes per task, variation seed {split_seeds[split]}")
              for split in ("test", "validation", "train") if split in split_seeds]
    items.append(("seeds", ", ".join(f"{k} {v}" for k, v in proto["seeds"].items())))
    items.append(("demonstrators", ", ".join(f"{k} {v}" for k, v in proto["demonstrators"].items())))
    return [(k, str(v)) for k, v in items if v is not None]


def _summary(results: list[collect.MethodResult]) -> str:
    tested = [r for r in results if r.split("test") and r.name != "expert"]
    parts = [f"{len(results)} evaluated methods"]
    if tested:
        best = max(tested, key=lambda r: r.split("test")["success"])
        parts.append(f"best policy on the test split: {best.name} at {best.split('test')['success']:.3f}")
    sft = next((r for r in results if r.name == "sft" and r.split("test")), None)
    if sft:
        parts.append(f"SFT {sft.split('test')['success']:.3f}")
    expert = next((r for r in results if r.name == "expert" and r.split("test")), None)
    if expert:
        parts.append(f"scripted expert {expert.split('test')['success']:.3f}")
    return "; ".join(parts) + "."


# The targets the benchmark is held to (issue "One page ..."): ratio name prefix -> target.
BENCH_TARGETS = {"collector_over_raw_k4": 0.8, "k8_over_k1": 4.0, "n2_over_n1.async": 1.6}


def bench_sections(metrics_dir: Path) -> list[dict]:
    """One section per benchmark file that exists (`stages bench`, `stages bench-scale`)."""
    sections = []
    for name, command in BENCH_FILES.items():
        section = bench_section(metrics_dir / name, command)
        if section is not None:
            sections.append({"file": f"data/metrics/{name}", "command": command, **section})
    return sections


def bench_section(path: Path, command: str = "python -m stages bench") -> dict | None:
    """A benchmark's medians, peak memory and ratios, when `command` wrote them."""
    if not path.is_file():
        return None
    data = read_json(path, "benchmark results")
    if not isinstance(data, dict) or not isinstance(data.get("measurements"), dict):
        raise PipelineError(f"{path}: not benchmark results (expected `measurements`); "
                            f"write it with `{command}`")
    rows = [{"name": name, "median": render.fmt(m.get("median"), ".4g"), "unit": m.get("unit", ""),
             "rss": render.fmt(m.get("peak_rss_mib"), ".0f")}
            for name, m in data["measurements"].items() if isinstance(m, dict)]
    ratios = []
    for group, values in data.get("ratios", {}).items():
        for key, value in (values.items() if isinstance(values, dict) else [("", values)]):
            name = f"{group}.{key}" if key else group
            target = next((t for prefix, t in BENCH_TARGETS.items() if name.startswith(prefix)), None)
            ratios.append({"name": name, "value": render.fmt(value, ".3g"), "target": f">= {target:g}" if target else ""})
    return {"figures": rows, "ratios": ratios}


def _chains(results: list[collect.MethodResult]) -> dict[str, list[str]]:
    chains: dict[str, list[str]] = {}
    for r in results:
        if r.method.chain:
            chains.setdefault(r.method.chain, []).append(r.name)
    return chains


def _plots(metrics_dir: Path, results: list[collect.MethodResult]) -> list[tuple[str, bytes]]:
    names = [r.name for r in results]
    supervised = [n for n in names if n.startswith("sft")] + [r.name for r in results if r.method.family.startswith("iRe-VLA")]
    # CO-RFT's runs: from its SFT, no RL chain (an ACPPO chain may start from the same SFT)
    offline = [r.name for r in results if r.method.base == OFFLINE_BASE and r.method.chain is None]
    plots = [("Success and steps to success against env steps (every RL chain)",
              figures.rl_curves(metrics_dir, _chains(results))),
             ("Supervised loss (SFT, SFT on the small set, iRe-VLA's SL rounds)",
              figures.loss_curves(metrics_dir, supervised, "supervised loss")),
             ("CO-RFT offline training", figures.offline_curves(metrics_dir, offline))]
    return [(title, png) for title, png in plots if png is not None]


def build_page(metrics_dir: Path, videos_dir: Path, params) -> tuple[dict, list[collect.MethodResult]]:
    results = collect.load_results(metrics_dir, params)
    proto = collect.protocol(results, params)
    ours = collect.ours_beside_papers(results)
    page = {
        "summary": _summary(results),
        "protocol": proto, "protocol_items": _protocol_items(proto),
        "methods": render.method_rows(results),
        "tested": {r.name for r in results if r.split("test")},
        "tasks": collect.task_rows(results, "test"),
        "groups": collect.group_rows(results),
        "papers": [{**p, "ours": ours.get(p["method"], "not run")} for p in collect.PAPERS],
        "seeds": collect.seed_tables(metrics_dir, {r.name: r.metrics for r in results}),
        "bench": bench_sections(metrics_dir),
        "plots": _plots(metrics_dir, results),
        "previews": [(r.name, items) for r in results if (items := figures.previews(videos_dir, r.name))],
    }
    return page, results


def build_report(metrics_dir: Path, videos_dir: Path, params, out_dir: Path) -> dict:
    """Write the page, the summary and the headline metrics; return what was written."""
    page, results = build_page(Path(metrics_dir), Path(videos_dir), params)
    # Everything is rendered before the first write, so a failure leaves the old outputs as
    # they were; the page goes first and the headline (what `dvc metrics show` reads) last.
    summary, page_html, light_html = render.markdown(page), render.html(page), render.html(page, animations=False)
    out_dir = Path(out_dir)
    write_text_atomic(out_dir / HTML_FILE, page_html)
    write_text_atomic(out_dir / LIGHT_HTML_FILE, light_html)
    write_text_atomic(out_dir / SUMMARY_FILE, summary)
    with atomic_directory(out_dir / HEADLINE_DIR) as tmp:
        for r in results:
            write_json_atomic(tmp / f"{r.name}.json", collect.headline(r))
    return {"methods": [r.name for r in results], "plots": len(page["plots"]),
            "previews": sum(len(items) for _, items in page["previews"]), "html": str(out_dir / HTML_FILE)}


__all__ = ["BENCH_FILES", "HEADLINE_DIR", "HTML_FILE", "LIGHT_HTML_FILE", "SUMMARY_FILE", "build_page", "build_report"]
