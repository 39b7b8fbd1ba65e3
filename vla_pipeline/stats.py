"""Statistics of evaluation results: Wilson intervals, paired comparisons on the same episodes
(exact McNemar), and the seeds-of-the-chain table; and reading the per-episode records they
compare. Pure numpy: no envs, no models."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from vla_pipeline.constants import REPORTED
from vla_pipeline.errors import PipelineError


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


EPISODE_KEY = ("task", "variation_seed", "variation", "split", "seed")
# What a comparison reads of each record `evaluate --episodes` writes (more keys are allowed).
EPISODE_RECORD_KEYS = frozenset(EPISODE_KEY + ("success", "steps_to_success"))


def read_episode_records(path: str | Path) -> list[dict]:
    """Per-episode results from `evaluate --episodes`, checked for shape before any pairing."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no such file (run `evaluate --episodes {path}` first)")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PipelineError(f"{path}: not readable JSON ({err}); is it truncated?") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and EPISODE_RECORD_KEYS <= r.keys()
                                                for r in records):
        raise PipelineError(f"{path}: not per-episode results (expected a list of records with "
                            f"{sorted(EPISODE_RECORD_KEYS)}, as `evaluate --episodes` writes)")
    return records


def mcnemar_exact_p(only_base: int, only_new: int) -> float:
    """Two-sided exact McNemar test: discordant pairs under H0 are Binomial(n, 1/2)."""
    n = only_base + only_new
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_base, only_new) + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def _paired_counts(pairs: Sequence[tuple[dict, dict]]) -> dict:
    both = [(a, b) for a, b in pairs if a["success"] and b["success"]]
    only_base = sum(a["success"] and not b["success"] for a, b in pairs)
    only_new = sum(b["success"] and not a["success"] for a, b in pairs)
    return {
        "episodes": len(pairs), "both_solved": len(both), "only_base": only_base, "only_new": only_new,
        "neither": len(pairs) - len(both) - only_base - only_new,
        "success_diff": (only_new - only_base) / len(pairs) if pairs else None,
        "mcnemar_p": mcnemar_exact_p(only_base, only_new),
        # Steps on the episodes both solved: the same starts, so a fair speed comparison.
        "steps_diff_both_solved": float(np.mean([b["steps_to_success"] - a["steps_to_success"] for a, b in both]))
        if both else None,
    }


def split_pairs(base: Sequence[dict], new: Sequence[dict], split: str) -> list[tuple[dict, dict]] | None:
    """(base, new) records of the same episodes of `split`, in base's order; None when either
    evaluation lacks the split. Both must hold the same episodes (same evaluate/env params)."""
    key = lambda r: tuple(r[k] for k in EPISODE_KEY)  # noqa: E731
    base_by_key = {key(r): r for r in base if r["split"] == split}
    new_by_key = {key(r): r for r in new if r["split"] == split}
    if not base_by_key or not new_by_key:
        return None
    if base_by_key.keys() != new_by_key.keys():
        missing = sorted(base_by_key.keys() ^ new_by_key.keys())[:3]
        raise ValueError(f"the two evaluations ran different {split} episodes (e.g. {missing}); "
                         "compare only results of the same evaluate/env params")
    return [(base_by_key[k], new_by_key[k]) for k in base_by_key]


def paired_comparison(base: Sequence[dict], new: Sequence[dict]) -> dict:
    """Compare two evaluations episode by episode, per split both evaluated.

    A split evaluated by both must hold the same episodes in both (same evaluate/env
    params); a split only one of them ran (e.g. an intermediate round evaluated on
    validation only) is left out and listed.
    """
    out: dict = {"splits": [], "skipped_splits": []}
    for split in REPORTED:
        pairs = split_pairs(base, new, split)
        if pairs is None:
            if any(r["split"] == split for r in (*base, *new)):
                out["skipped_splits"].append(split)
            continue
        tasks = sorted({a["task"] for a, _ in pairs})
        out["splits"].append(split)
        out[split] = _paired_counts(pairs)
        out[split]["tasks"] = {t: _paired_counts([p for p in pairs if p[0]["task"] == t]) for t in tasks}
    if not out["splits"]:
        raise ValueError("the two evaluations share no split")
    return out


def seed_table(runs: dict[str, dict], split: str = "test", final: str | None = None) -> dict:
    """One row per seed of the whole chain: SFT vs the final round on `split`, paired.

    `runs[name]` holds that run's metrics files as loaded JSON: `sft` and `final` (evaluate
    metrics) and `paired` (the final round vs SFT from `compare`). A gain is called real
    only when it is positive on every seed. `final` names the final round, so that the report
    can tell whether the table still describes the committed run.
    """
    rows = {}
    for name, run in runs.items():
        sft, last, paired = run["sft"], run["final"], run["paired"]
        if split not in sft or split not in last or split not in paired:
            raise ValueError(f"run {name!r} has no {split} split in its SFT, final or paired metrics")
        rows[name] = {
            "sft_success": sft[split]["success"], "sft_steps_to_success": sft[split]["steps_to_success"],
            "final_success": last[split]["success"], "final_success_ci95": last[split]["success_ci95"],
            "final_steps_to_success": last[split]["steps_to_success"],
            "success_gain": last[split]["success"] - sft[split]["success"],
            "only_final": paired[split]["only_new"], "only_sft": paired[split]["only_base"],
            "mcnemar_p": paired[split]["mcnemar_p"],
            "steps_diff_both_solved": paired[split]["steps_diff_both_solved"],
        }
    gains = [r["success_gain"] for r in rows.values()]
    table = {"split": split, "seeds": rows, "mean_success_gain": float(np.mean(gains)) if gains else None,
             "gain_positive_on_every_seed": bool(gains) and all(g > 0 for g in gains)}
    return {"final": final, **table} if final else table


# CO-RFT's abstract (seeds.md section 4.8): real robot, RoboVLMs base model, supervised baseline.
CORFT_PAPER = {
    "success_gain_relative": 0.57, "cycle_time_change": -0.223, "unseen_positions_success": 0.443,
    "setting": "real robot, RoboVLMs, 30-60 demos, dense reward; relative vs absolute gain not stated",
}


def _task_means(ok: np.ndarray, steps: np.ndarray, by_task: list[np.ndarray]) -> tuple[float, float | None]:
    """Success and steps to success as the headline reports them: means over tasks, a task's
    steps averaged over its solved episodes (tasks with none are left out)."""
    success = float(np.mean([ok[rows].mean() for rows in by_task]))
    steps = [steps[rows].sum() / ok[rows].sum() for rows in by_task if ok[rows].sum()]
    return success, (float(np.mean(steps)) if steps else None)


def _relative(new: float | None, base: float | None) -> float | None:
    return None if new is None or not base else new / base - 1.0


def paired_relative_changes(base: Sequence[dict], new: Sequence[dict], resamples: int, seed: int = 0) -> dict:
    """Relative success gain and relative change of mean steps to success (the headline's
    means over tasks), with 95% intervals from a paired bootstrap that resamples episodes
    within each task. `base[i]` and `new[i]` are the same episode."""
    tasks = sorted({r["task"] for r in base})
    by_task = [np.flatnonzero([r["task"] == t for r in base]) for t in tasks]
    arrays = {}
    for name, records in (("base", base), ("new", new)):
        ok = np.array([r["success"] for r in records], float)
        arrays[name] = (ok, np.array([r["steps_to_success"] if r["success"] else 0 for r in records], float))
    base_success, base_steps = _task_means(*arrays["base"], by_task)
    new_success, new_steps = _task_means(*arrays["new"], by_task)
    rng = np.random.default_rng(seed)
    gains, step_changes = [], []
    for _ in range(resamples):
        sample = [rng.choice(rows, len(rows)) for rows in by_task]
        b_success, b_steps = _task_means(*arrays["base"], sample)
        n_success, n_steps = _task_means(*arrays["new"], sample)
        if b_success and b_steps and n_steps:
            gains.append(n_success / b_success - 1.0)
            step_changes.append(n_steps / b_steps - 1.0)
    interval = lambda xs: [float(np.percentile(xs, 2.5)), float(np.percentile(xs, 97.5))] if xs else None  # noqa: E731
    return {"base_success": base_success, "success": new_success, "success_diff": new_success - base_success,
            "success_gain_relative": _relative(new_success, base_success), "success_gain_relative_ci95": interval(gains),
            "base_steps_to_success": base_steps, "steps_to_success": new_steps,
            "steps_change_relative": _relative(new_steps, base_steps), "steps_change_relative_ci95": interval(step_changes)}


def offline_summary(base: Sequence[dict], runs: dict[str, Sequence[dict]], resamples: int = 2000) -> dict:
    """CO-RFT runs vs their imitation policy on the same test episodes (validation as well when
    both have it), beside the paper's numbers. The test split's placements are unseen by the
    demos, so its success is the analogue of the paper's success at unseen positions."""
    out: dict = {"paper": CORFT_PAPER, "runs": {}}
    for name, new in runs.items():
        row = {}
        for split in ("test", "validation"):
            try:
                pairs = split_pairs(base, new, split)
            except ValueError as err:
                raise ValueError(f"run {name!r}: {err}") from None
            if pairs is None:
                continue
            pairs.sort(key=lambda pair: tuple(pair[0][k] for k in EPISODE_KEY))
            row[split] = {**paired_relative_changes([p[0] for p in pairs], [p[1] for p in pairs], resamples),
                          **{k: v for k, v in _paired_counts(pairs).items() if k != "success_diff"}}
        if not row:
            raise ValueError(f"run {name!r} shares no test or validation episodes with the base")
        out["runs"][name] = row
    return out
