"""How long one `dvc repro` took, stage by stage (`python -m stages.tools timed-repro`).

DVC prints `Running stage 'X':` as each stage starts. The wrapper passes DVC's output through
and stamps each line as it arrives, so a stage's time is the span from its line to the next
stage's (or to the end of the run). The file it writes holds durations and the CPU, never a
clock time or a host name:

- `stages`: seconds per stage that ran (a stage DVC skipped is absent);
- `main_chain_minutes`: the stages the final ACPPO round from `sft` needs (its ancestors in
  dvc.yaml's graph: demos, SFT and its evaluation, every round of the chain), plus the report;
- `whole_default_minutes`: every stage that ran.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

from vla_pipeline.bench.measure import cpuinfo_field
from vla_pipeline.errors import PipelineError
from vla_pipeline.io import write_json_atomic

RUNNING = re.compile(r"^Running stage '([^']+)':")
# The instruction-set flags that decide how fast a training step runs (AVX-512 and AMX machines
# train 2x faster than AVX2-only ones on the same code).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def stage_seconds(stamped: Iterable[tuple[float, str]], end: float) -> dict[str, float]:
    """(seconds, line) pairs of `dvc repro`'s output -> seconds per stage, in the order they ran."""
    seconds: dict[str, float] = {}
    current, started = None, 0.0
    for at, line in stamped:
        match = RUNNING.match(line.strip())
        if match is None:
            continue
        if current is not None:
            seconds[current] = at - started
        current, started = match.group(1), at
    if current is not None:
        seconds[current] = end - started
    return seconds


def final_round(params) -> Optional[str]:
    """The last round evaluated on test whose chain starts from `sft` (the best-policy chain)."""
    tested = [name for name, item in params.rounds.items() if item.test and params.chain_root(name) == "sft"]
    return tested[-1] if tested else None


def main_chain_stages(repo_root: Path, final: Optional[str]) -> set[str]:
    """Every stage `compare_round@<final>` needs, itself and the report."""
    import networkx as nx
    from dvc.repo import Repo

    if final is None:
        return set()
    with Repo(str(repo_root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        target = next(s for s in graph.nodes if s.addressing == f"compare_round@{final}")
        return {s.addressing for s in nx.descendants(graph, target)} | {target.addressing, "report"}


def cpu_facts() -> dict:
    import os

    flags = set((cpuinfo_field("flags") or "").split())
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": cpuinfo_field("model name"), "usable_cpus": usable, "flags": [f for f in SPEED_FLAGS if f in flags]}


def summarize(seconds: dict[str, float], main_stages: set[str], cpu: dict) -> dict:
    main = [name for name in seconds if name in main_stages]
    return {
        "stages": {name: round(value, 1) for name, value in seconds.items()},
        "main_chain_stages": main,
        "main_chain_minutes": round(sum(seconds[n] for n in main) / 60.0, 1),
        "whole_default_minutes": round(sum(seconds.values()) / 60.0, 1),
        "cpu": cpu,
    }


def timed_repro(dvc_args: list[str], repo_root: Path, params, out: Path) -> dict:
    """Run `dvc repro <dvc_args>` in `repo_root`, echoing its output, and write the timings."""
    begin = time.monotonic()
    stamped: list[tuple[float, str]] = []
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", *dvc_args], cwd=repo_root,
                            stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        stamped.append((time.monotonic() - begin, line))
        sys.stdout.write(line)
        sys.stdout.flush()
    code = proc.wait()
    end = time.monotonic() - begin
    if code != 0:
        raise PipelineError(f"dvc repro failed (exit {code}); no timings written: a partial run would "
                            "understate the whole")
    result = summarize(stage_seconds(stamped, end), main_chain_stages(repo_root, final_round(params)), cpu_facts())
    write_json_atomic(out, result)
    return result
