"""What the report shows, gathered from the metrics folder: which methods ran, their headline
numbers, paired comparisons against their imitation baseline, per-task rows and seed tables.

The method list comes from params (its order is the pipeline's order), and a method appears
only when its evaluation file exists, so a user who removed a chain still gets a page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vla_pipeline.constants import REPORTED, ROOT_CHECKPOINTS, ROOT_LABELS, SPLITS
from vla_pipeline.errors import PipelineError
from vla_pipeline.io import read_json
from vla_pipeline.stats import paired_comparison, read_episode_records

# Splits the headline metrics keep (train is a sanity row, not a claim).
HEADLINE_SPLITS = ("test", "validation")

# The papers' headline numbers (seeds.md section 5), beside ours with the setting differences.
PAPERS = [
    {"method": "ACPPO", "measure": "MT10 success (SFT -> ACPPO)", "paper": "0.93",
     "paper_steps": "66.62 -> 42.17 steps to success",
     "setting": "Octo-small pretrained and fine-tuned on MT10 at 256 px, MetaWorld v2; ours: a small "
                "from-scratch VLA, MetaWorld v3, 84 px, 2 CPU cores"},
    {"method": "iRe-VLA", "measure": "success, new group / held-out (SFT -> iRe-VLA)",
     "paper": "0.41 -> 0.89 / 0.51 -> 0.80 (unconfirmed figures)", "paper_steps": "",
     "setting": "3B VLM (BLIP-2) with LoRA, MetaWorld; ours: the same small VLA, trunk frozen in RL rounds"},
    {"method": "CO-RFT", "measure": "success vs supervised (relative), success at unseen positions",
     "paper": "+57 %, 0.443", "paper_steps": "cycle time -22.3 %",
     "setting": "real robot, RoboVLMs, dense reward; ours: MetaWorld MT10 test split (unseen placements), "
                "sparse success reward minus a step cost"},
]


@dataclass(frozen=True)
class Method:
    name: str  # the evaluation's name: eval-<name>.json, data/videos/<name>
    family: str  # the table's group: scripted expert, imitation, ACPPO, iRe-VLA, ...
    base: str | None = None  # paired against this method on the same episodes
    chain: str | None = None  # RL chain whose training curve it belongs to
    final: bool = False  # evaluated on test: its chain's last round


@dataclass
class MethodResult:
    method: Method
    metrics: dict  # eval-<name>.json
    paired: dict = field(default_factory=dict)  # split -> paired counts vs method.base
    groups: dict | None = None  # groups-<name>.json (iRe-VLA's expert / new episodes)
    relative: dict | None = None  # CO-RFT: relative gain and steps change (corft-<name>.json)

    @property
    def name(self) -> str:
        return self.method.name

    def split(self, split: str) -> dict | None:
        return self.metrics.get(split) if split in self.metrics.get("splits", ()) else None


def planned_methods(params) -> list[Method]:
    """Every method the params define, in pipeline order: the expert, the SFT checkpoints, then
    the runs of every method section (`Params.RUN_SECTIONS`), each in the row its config names."""
    methods = [Method("expert", "scripted expert")]
    methods += [Method(root, ROOT_LABELS[root], None if root == "sft" else "sft") for root in ROOT_CHECKPOINTS]
    for name, run in params.runs():
        family, base, chain = run.report_row()
        methods.append(Method(name, family, base, chain, run.test))
    return methods


def present_methods(metrics_dir: Path, params) -> list[Method]:
    """The methods params define whose evaluation exists. Files a removed chain left behind
    are not shown: DVC keeps a deleted stage's outputs, and a stale row would mislead."""
    return [m for m in planned_methods(params) if (metrics_dir / f"eval-{m.name}.json").is_file()]


def _checked_eval(path: Path) -> dict:
    data = read_json(path, "evaluation metrics")
    splits = data.get("splits") if isinstance(data, dict) else None
    if not isinstance(splits, list) or not all(isinstance(data.get(s), dict) and "success" in data[s] for s in splits):
        raise PipelineError(f"{path}: not an evaluation's metrics (expected `splits` and a success per split); "
                            "was it written by `python -m stages evaluate`?")
    return data


def _episodes(metrics_dir: Path, name: str) -> list[dict] | None:
    path = metrics_dir / f"episodes-{name}.json"
    return read_episode_records(path) if path.is_file() else None


def _paired(metrics_dir: Path, method: Method) -> dict:
    """Paired counts and exact McNemar p vs the method's base on every split both ran."""
    if method.base is None:
        return {}
    base, new = _episodes(metrics_dir, method.base), _episodes(metrics_dir, method.name)
    if base is None or new is None:
        return {}
    try:
        result = paired_comparison(base, new)
    except ValueError as err:
        raise PipelineError(f"{method.name} vs {method.base}: {err}") from None
    return {s: {k: v for k, v in result[s].items() if k != "tasks"} for s in result["splits"]}


def load_results(metrics_dir: Path, params) -> list[MethodResult]:
    results = []
    for method in present_methods(metrics_dir, params):
        groups_path, relative_path = metrics_dir / f"groups-{method.name}.json", metrics_dir / f"corft-{method.name}.json"
        relative = read_json(relative_path, "CO-RFT summary") if relative_path.is_file() else None
        results.append(MethodResult(
            method, _checked_eval(metrics_dir / f"eval-{method.name}.json"), _paired(metrics_dir, method),
            _checked_eval(groups_path) if groups_path.is_file() else None,
            (relative or {}).get("runs", {}).get(method.name)))
    if not results:
        raise PipelineError(f"{metrics_dir}: no evaluation metrics (eval-*.json) to report; run the evaluate stages first")
    return results


def headline(result: MethodResult) -> dict:
    """The few numbers `dvc metrics show` prints per method (one row each, ~8 columns): success
    with its 95 % interval and steps to success, per reported split."""
    out: dict = {}
    for split in HEADLINE_SPLITS:
        row = result.split(split)
        if row is not None:
            low, high = row["success_ci95"]
            out[split] = {"success": row["success"], "ci_lo": low, "ci_hi": high, "steps": row["steps_to_success"]}
    return out


def protocol(results: list[MethodResult], params) -> dict:
    """The protocol header: from an evaluation's own record, plus the settings that shape it."""
    source = next((r for r in results if r.name == "sft"), results[0]).metrics.get("protocol", {})
    return {
        **source,
        "tasks": list(results[0].metrics.get("tasks", {})),
        "chunk_len": params.policy.chunk_len,
        "seeds": {"demos": params.demos.seed, "sft": params.sft.seed, "ppo": params.ppo.seed,
                  "ire": params.ire.seed, "offline": params.offline.seed, "evaluate": params.evaluate.seed},
        # Who made each demo set: steps to success follow the demonstrator, so a reader comparing
        # CO-RFT's steps with ACPPO's must see when the two sets come from different scripts.
        "demonstrators": {"demos": params.demos.expert, "offline_demos": params.offline_demos.expert},
    }


def task_rows(results: list[MethodResult], split: str = "test") -> tuple[list[str], list[dict]]:
    """Per-task success on `split`: the task names and one row per method that ran the split."""
    tasks = sorted({t for r in results for t in r.metrics.get("tasks", {})})
    rows = []
    for r in results:
        if r.split(split) is None:
            continue
        cells = {t: r.metrics["tasks"].get(t, {}).get(split, {}).get("success") for t in tasks}
        rows.append({"method": r.name, "cells": cells})
    return tasks, rows


def _number(value, path: Path) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise PipelineError(f"{path}: not a seed table ({value!r} where a number belongs)")
    return value


def _split_tables(chains: dict) -> list[tuple[str, dict]]:
    """(chain, table) pairs: a chain holds one seed table, or one per split ({split: table})."""
    out = []
    for chain, table in chains.items():
        if not isinstance(table, dict):
            continue
        if isinstance(table.get("seeds"), dict):
            out.append((chain, table))
        else:
            out += [(chain, t) for t in table.values() if isinstance(t, dict) and isinstance(t.get("seeds"), dict)]
    return out


def _committed_result(evaluations: dict[str, dict], final: str | None, split) -> dict | None:
    """The committed run's metrics of `final` on `split`, or None where it has no such metrics."""
    section = evaluations.get(final, {}).get(split)
    return section if isinstance(section, dict) and "success" in section else None


def _same_result(row: dict, committed: dict) -> bool:
    """A seed row is the committed run when success and steps to success both match: success
    alone takes few values on 300 episodes and can coincide across defaults."""
    def close(a, b):
        return a is None and b is None or (a is not None and b is not None and abs(a - b) < 1e-9)
    return close(row["success"], committed["success"]) and close(row["steps"], committed.get("steps_to_success"))


def seed_tables(metrics_dir: Path, evaluations: dict[str, dict]) -> list[dict]:
    """Every committed seeds-*.json, flattened to rows (file, chain, seed, success, gain, p).

    `current` says whether the table still describes the committed run: one of its seeds must
    score what `eval-<final>.json` scores now (success and steps to success), looked up in
    `evaluations` (name -> the eval metrics the report already loaded). A table measured before a default changed is
    kept (it is evidence) but marked, so the page never passes it off as this run's seeds.
    """
    tables = []
    for path in sorted(metrics_dir.glob("seeds-*.json")):
        data = read_json(path, "seed table")
        if not isinstance(data, dict):
            raise PipelineError(f"{path}: not a seed table (expected the JSON object `python -m stages seeds` writes)")
        by_final = isinstance(data.get("chains"), dict)  # seeds-ire.json: {final round: table}
        chains = data["chains"] if by_final else {path.stem: data}
        for chain, table in _split_tables(chains):
            rows = [{"seed": s, "success": _number(row.get("final_success"), path), "gain":
                     _number(row.get("success_gain"), path), "p": _number(row.get("mcnemar_p"), path),
                     "steps": _number(row.get("final_steps_to_success"), path)}
                    for s, row in table["seeds"].items() if isinstance(row, dict)]
            split = table.get("split", data.get("split"))
            final = table.get("final", data.get("final", chain if by_final else None))
            now = _committed_result(evaluations, final, split)
            tables.append({"file": path.name, "chain": chain, "split": split,
                           "rows": rows, "mean_gain": _number(table.get("mean_success_gain"), path),
                           "positive_on_every_seed": table.get("gain_positive_on_every_seed"),
                           "final": final, "committed_success": now and now["success"],
                           "current": None if now is None else any(_same_result(r, now) for r in rows)})
    return tables


def group_rows(results: list[MethodResult]) -> list[dict]:
    """iRe-VLA's groups (train configurations with / without a demo) for methods evaluated on them."""
    rows = []
    for r in results:
        source = r.groups or r.metrics
        cells = {g: source[g] for g in ("expert", "new") if g in source.get("splits", ())}
        if cells:
            rows.append({"method": r.name, "cells": cells})
    return rows


def ours_beside_papers(results: list[MethodResult]) -> dict[str, str]:
    """Our number on each paper's measure, as text for the papers table."""
    by_name = {r.name: r for r in results}
    finals = {}
    for r in results:
        if r.method.final and r.method.chain and r.split("test"):
            finals[r.method.chain] = r  # the chain's last round evaluated on test (ACPPO also tests r02)
    out = {}
    sft = by_name.get("sft")
    acppo = finals.get("ACPPO")
    if sft and sft.split("test") and acppo:
        out["ACPPO"] = (f"{sft.split('test')['success']:.3f} -> {acppo.split('test')['success']:.3f}; "
                        f"{_steps(sft.split('test'))} -> {_steps(acppo.split('test'))} steps ({acppo.name}, test)")
    ire = finals.get("iRe-VLA")
    if ire and sft:
        parts = []
        sft_groups = sft.groups or sft.metrics
        ire_groups = ire.groups or ire.metrics
        if "new" in ire_groups.get("splits", ()) and "new" in sft_groups.get("splits", ()):
            parts.append(f"new {sft_groups['new']['success']:.2f} -> {ire_groups['new']['success']:.2f}")
        if sft.split("test") and ire.split("test"):
            parts.append(f"test {sft.split('test')['success']:.2f} -> {ire.split('test')['success']:.2f}")
        out["iRe-VLA"] = " / ".join(parts) + f" ({ire.name})"
    corft = next((r for r in results if r.relative and r.method.family.startswith("CO-RFT")), None)
    if corft:
        rel = corft.relative.get("test", {})
        gain, steps = rel.get("success_gain_relative"), rel.get("steps_change_relative")
        if gain is not None:
            out["CO-RFT"] = (f"{gain:+.1%}, {corft.split('test')['success']:.3f}; steps "
                             + (f"{steps:+.1%}" if steps is not None else "-") + f" ({corft.name}, test)")
    return out


def _steps(row: dict) -> str:
    return "-" if row["steps_to_success"] is None else f"{row['steps_to_success']:.1f}"


def splits_present(results: list[MethodResult]) -> list[str]:
    return [s for s in SPLITS if any(r.split(s) for r in results)]


__all__ = ["HEADLINE_SPLITS", "Method", "MethodResult", "PAPERS", "REPORTED", "group_rows", "headline",
           "load_results", "ours_beside_papers", "planned_methods", "present_methods", "protocol",
           "seed_tables", "splits_present", "task_rows"]
