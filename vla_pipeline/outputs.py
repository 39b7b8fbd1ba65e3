"""How a stage writes its outputs: checkpoints, learning curves and evaluations under data/.

Stage commands hand their results here (a round's outputs: `rl/rounds.py`; the demos':
`demos.py`). Every directory is written through `atomic_directory` and every file through
`write_json_atomic`, so a killed stage never leaves an output that looks complete.
"""

from __future__ import annotations

from pathlib import Path

from vla_pipeline.checkpoint import save_policy
from vla_pipeline.io import atomic_directory, write_json_atomic


def curve_path(data: Path, name: str) -> Path:
    """A training stage's learning curve (dvc plots)."""
    return data / "metrics" / f"train-{name}.json"


def write_checkpoint(out: Path, policy, meta: dict, extra_files: dict | None = None) -> None:
    """A policy checkpoint; `extra_files` (name -> writer(path)) land in the same directory."""
    with atomic_directory(out) as tmp:
        save_policy(policy, tmp, meta)
        for name, write in (extra_files or {}).items():
            write(tmp / name)


def write_evaluation(metrics: Path, table: Path, episodes: Path | None, metrics_obj: dict, task_rows: list,
                     episode_rows: list) -> None:
    """An evaluation: per-task rows (dvc plots), per-episode records (for `compare`), the metrics
    file last, so that a metrics file on disk means the others are there too."""
    write_json_atomic(table, task_rows)
    if episodes is not None:
        write_json_atomic(episodes, episode_rows)
    write_json_atomic(metrics, metrics_obj)
