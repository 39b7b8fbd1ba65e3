"""Buffer snapshots: a directory of per-task Parquet shards plus a manifest.

Shard names are `<task>.parquet` and rows are ordered by (episode, step), so the same
episodes give the same bytes; a snapshot that keeps a task unchanged can reuse that
shard byte-for-byte and DVC stores it once. Reading validates everything it relies on and
names the offending file.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vla_pipeline import constants as C
from vla_pipeline.data.schema import (
    META_SCHEMA, META_VERSION, SCHEMA_NAME, SCHEMA_VERSION, buffer_schema,
)
from vla_pipeline.envs.experts import Episode
from vla_pipeline.errors import PipelineError
from vla_pipeline.io import read_json, write_json_atomic


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@dataclass
class EncodedEpisode:
    """An episode ready for Parquet: images already PNG-encoded (done in the workers)."""

    task: str
    variation: int
    instruction: str
    source: str
    images: list[bytes]
    proprios: np.ndarray  # (T, 4) float32
    actions: np.ndarray  # (T, 4) float32
    rewards: np.ndarray  # (T,) float32
    successes: np.ndarray  # (T,) bool
    terminated: bool
    truncated: bool

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def steps_to_success(self) -> int:
        hits = np.flatnonzero(self.successes)
        return int(hits[0]) + 1 if len(hits) else -1

    @classmethod
    def from_episode(cls, ep: Episode, instruction: str, source: str) -> "EncodedEpisode":
        return cls(
            task=ep.spec.task, variation=ep.spec.variation, instruction=instruction, source=source,
            images=[encode_png(img) for img in ep.images],
            proprios=np.asarray(ep.proprios, np.float32).reshape(-1, C.PROPRIO_DIM),
            actions=np.asarray(ep.actions, np.float32).reshape(-1, C.ACTION_DIM),
            rewards=np.asarray(ep.rewards, np.float32), successes=np.asarray(ep.successes, bool),
            terminated=ep.terminated, truncated=ep.truncated,
        )


def episodes_to_table(episodes: Sequence[EncodedEpisode], first_episode_id: int,
                      image_shape: tuple[int, int, int]) -> pa.Table:
    cols: dict[str, list] = {name: [] for name in C.BUFFER_COLUMNS}
    for offset, ep in enumerate(episodes):
        n = ep.length
        if len(ep.images) != n:
            raise ValueError(f"episode has {len(ep.images)} image slots for {n} steps")
        if not ep.images[0]:
            raise ValueError("the first step of an episode must have a frame")
        last = np.zeros(n, bool)
        last[-1] = True
        cols[C.EPISODE] += [first_episode_id + offset] * n
        cols[C.STEP] += list(range(n))
        cols[C.TASK] += [ep.task] * n
        cols[C.VARIATION] += [ep.variation] * n
        cols[C.INSTRUCTION] += [ep.instruction] * n
        cols[C.IMAGE] += ep.images
        cols[C.PROPRIO] += list(ep.proprios)
        cols[C.ACTION] += list(ep.actions)
        cols[C.REWARD] += list(ep.rewards)
        cols[C.SUCCESS] += list(ep.successes)
        cols[C.TERMINATED] += list(last & ep.terminated)
        cols[C.TRUNCATED] += list(last & ep.truncated)
        cols[C.SOURCE] += [ep.source] * n
        cols[C.EPISODE_LENGTH] += [n] * n
        cols[C.STEPS_TO_SUCCESS] += [ep.steps_to_success] * n
    schema = buffer_schema(image_shape)
    arrays = []
    for fld in schema:
        values = cols[fld.name]
        if fld.name in (C.PROPRIO, C.ACTION):
            flat = np.asarray(values, np.float32).reshape(-1)
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), fld.type.list_size))
        else:
            arrays.append(pa.array(values, type=fld.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard(path: Path, table: pa.Table, rows_per_row_group: int) -> None:
    # No statistics/timestamps that vary between runs: same table -> same bytes.
    pq.write_table(table, path, row_group_size=rows_per_row_group, compression="zstd",
                   use_dictionary=[C.TASK, C.INSTRUCTION, C.SOURCE], write_statistics=False)


def task_summary(episodes: Sequence[EncodedEpisode]) -> dict:
    successes = [ep for ep in episodes if ep.steps_to_success > 0]
    return {
        "episodes": len(episodes),
        "steps": int(sum(ep.length for ep in episodes)),
        "successes": len(successes),
        "success_rate": len(successes) / len(episodes) if episodes else 0.0,
        "mean_steps_to_success": (float(np.mean([ep.steps_to_success for ep in successes]))
                                  if successes else None),
    }


def write_snapshot(out_dir: Path, episodes_by_task: dict[str, Sequence[EncodedEpisode]],
                   image_shape: tuple[int, int, int], provenance: dict,
                   rows_per_row_group: int = 2048, reuse_from: Path | None = None) -> dict:
    """Write shards + manifest into `out_dir` (an already-atomic temporary directory).

    `reuse_from`: a previous snapshot whose shard for a task is copied byte-for-byte when
    that task's episodes are unchanged (signalled by passing `None` for the task).
    """
    manifest: dict = {
        "schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "image_shape": list(image_shape),
        "provenance": provenance, "shards": {}, "tasks": {},
    }
    previous = read_manifest(reuse_from) if reuse_from is not None else None
    for task in sorted(episodes_by_task):
        name = f"{task}.parquet"
        episodes = episodes_by_task[task]
        if episodes is None:
            if previous is None:
                raise ValueError("reuse requested without a previous snapshot")
            (out_dir / name).write_bytes((reuse_from / name).read_bytes())
            manifest["shards"][name] = previous["shards"][name]
            manifest["tasks"][task] = previous["tasks"][task]
            continue
        # Episode ids are per shard (0..n-1), so a reused shard never collides with new ones.
        table = episodes_to_table(episodes, 0, image_shape)
        write_shard(out_dir / name, table, rows_per_row_group)
        manifest["shards"][name] = {"rows": table.num_rows, "episodes": len(episodes),
                                    "sha256": sha256_file(out_dir / name)}
        manifest["tasks"][task] = task_summary(episodes)
    manifest["total_rows"] = sum(s["rows"] for s in manifest["shards"].values())
    manifest["total_episodes"] = sum(s["episodes"] for s in manifest["shards"].values())
    write_json_atomic(out_dir / C.MANIFEST_FILE, manifest)
    return manifest


# ---------------------------------------------------------------------------- reading


def read_manifest(snapshot_dir: Path) -> dict:
    snapshot_dir = Path(snapshot_dir)
    if not snapshot_dir.is_dir():
        raise PipelineError(f"buffer snapshot not found: {snapshot_dir}")
    manifest = read_json(snapshot_dir / C.MANIFEST_FILE, "snapshot manifest")
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA_NAME:
        raise PipelineError(f"{snapshot_dir / C.MANIFEST_FILE} is not a vla_pipeline buffer manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise PipelineError(
            f"{snapshot_dir / C.MANIFEST_FILE}: schema version {manifest.get('schema_version')!r}, "
            f"this code reads version {SCHEMA_VERSION}"
        )
    return manifest


@dataclass
class StepTable:
    """A snapshot decoded into numpy arrays, rows ordered by (episode, step)."""

    episode: np.ndarray
    step: np.ndarray
    task: np.ndarray  # object array of str
    variation: np.ndarray
    instruction: np.ndarray
    images: np.ndarray  # (N, H, W, 3) uint8
    proprio: np.ndarray  # (N, 4) float32
    action: np.ndarray  # (N, 4) float32
    reward: np.ndarray
    success: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    source: np.ndarray
    episode_length: np.ndarray
    steps_to_success: np.ndarray
    has_frame: np.ndarray  # bool: a frame was rendered at this step

    def __len__(self) -> int:
        return len(self.episode)


def _check_shard_schema(path: Path, schema: pa.Schema, expected: pa.Schema) -> None:
    meta = schema.metadata or {}
    if meta.get(META_SCHEMA) != SCHEMA_NAME.encode():
        raise PipelineError(f"{path}: not a vla_pipeline buffer shard (foreign Parquet schema)")
    version = meta.get(META_VERSION, b"?").decode()
    if version != str(SCHEMA_VERSION):
        raise PipelineError(f"{path}: schema version {version}, this code reads version {SCHEMA_VERSION}")
    missing = [f.name for f in expected if f.name not in schema.names]
    if missing:
        raise PipelineError(f"{path}: missing columns {missing}")
    for fld in expected:
        if not schema.field(fld.name).type.equals(fld.type):
            raise PipelineError(
                f"{path}: column '{fld.name}' has type {schema.field(fld.name).type}, expected {fld.type}"
            )


def read_shard(path: Path, image_shape: tuple[int, int, int], expected_sha256: str | None = None) -> pa.Table:
    if not path.is_file():
        raise PipelineError(f"buffer shard missing: {path}")
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise PipelineError(f"{path}: content does not match the manifest (truncated or modified)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise PipelineError(f"{path}: unreadable Parquet ({exc}); truncated or corrupt?") from None
    _check_shard_schema(path, table.schema, buffer_schema(image_shape))
    return table.select([f.name for f in buffer_schema(image_shape)])


def _decode_images(path: Path, column: Iterable[bytes], image_shape: tuple) -> np.ndarray:
    """Decode PNG frames; an empty value means "no frame at this step" (RL rollouts render
    only at decision points) and decodes to zeros, flagged by `StepTable.has_frame`."""
    images = np.empty((0, *image_shape), np.uint8)
    blank = np.zeros(image_shape, np.uint8)
    decoded = []
    for i, data in enumerate(column):
        if not data:
            decoded.append(blank)
            continue
        try:
            img = decode_png(data)
        except Exception as exc:  # PIL raises many types for corrupt data
            raise PipelineError(f"{path}: image in row {i} cannot be decoded ({exc})") from None
        if img.shape != tuple(image_shape):
            raise PipelineError(f"{path}: image in row {i} has shape {img.shape}, expected {tuple(image_shape)}")
        decoded.append(img)
    return np.stack(decoded) if decoded else images


def load_snapshot(snapshot_dir: str | Path, tasks: Sequence[str] | None = None) -> tuple[StepTable, dict]:
    """Validate and decode a snapshot (optionally only some tasks)."""
    snapshot_dir = Path(snapshot_dir)
    manifest = read_manifest(snapshot_dir)
    image_shape = tuple(manifest["image_shape"])
    parts: list[dict[str, np.ndarray]] = []
    for name in sorted(manifest["shards"]):
        task = name.removesuffix(".parquet")
        if tasks is not None and task not in tasks:
            continue
        info = manifest["shards"][name]
        path = snapshot_dir / name
        table = read_shard(path, image_shape, info.get("sha256"))
        if table.num_rows != info["rows"]:
            raise PipelineError(f"{path}: {table.num_rows} rows, manifest says {info['rows']}")
        part = {}
        for col in C.BUFFER_COLUMNS:
            if col == C.IMAGE:
                raw_images = table.column(col).to_pylist()
                part[col] = _decode_images(path, raw_images, image_shape)
                part["has_frame"] = np.array([bool(b) for b in raw_images], bool)
            elif col in (C.PROPRIO, C.ACTION):
                flat = table.column(col).combine_chunks().flatten().to_numpy(zero_copy_only=False)
                part[col] = flat.astype(np.float32).reshape(-1, C.ACTION_DIM)
            else:
                part[col] = table.column(col).to_numpy(zero_copy_only=False)
        for col in (C.PROPRIO, C.ACTION, C.REWARD):
            if not np.isfinite(part[col]).all():
                raise PipelineError(f"{path}: column '{col}' contains NaN or infinite values")
        parts.append(part)
    if not parts:
        wanted = f" for tasks {list(tasks)}" if tasks is not None else ""
        raise PipelineError(f"{snapshot_dir}: no shards{wanted}")
    merged = {col: np.concatenate([p[col] for p in parts]) for col in (*C.BUFFER_COLUMNS, "has_frame")}
    table = StepTable(
        episode=merged[C.EPISODE], step=merged[C.STEP], task=merged[C.TASK],
        variation=merged[C.VARIATION], instruction=merged[C.INSTRUCTION], images=merged[C.IMAGE],
        proprio=merged[C.PROPRIO], action=merged[C.ACTION], reward=merged[C.REWARD],
        success=merged[C.SUCCESS], terminated=merged[C.TERMINATED], truncated=merged[C.TRUNCATED],
        source=merged[C.SOURCE], episode_length=merged[C.EPISODE_LENGTH],
        steps_to_success=merged[C.STEPS_TO_SUCCESS], has_frame=merged["has_frame"],
    )
    _check_episode_order(snapshot_dir, table)
    return table, manifest


def _check_episode_order(snapshot_dir: Path, table: StepTable) -> None:
    """Rows must be (episode, step) ordered with steps 0..L-1: windows rely on it."""
    if len(table) == 0:
        return
    starts = np.r_[True, (table.episode[1:] != table.episode[:-1]) | (table.task[1:] != table.task[:-1])]
    expected_step = np.arange(len(table)) - np.maximum.accumulate(np.where(starts, np.arange(len(table)), 0))
    if not np.array_equal(table.step, expected_step) or np.any(table.step >= table.episode_length):
        raise PipelineError(f"{snapshot_dir}: rows are not ordered by (episode, step)")


def load_episodes(snapshot_dir: str | Path) -> tuple[dict[str, list[EncodedEpisode]], dict]:
    """A snapshot as episodes per task, frames kept as PNG bytes (validated like load_snapshot)."""
    snapshot_dir = Path(snapshot_dir)
    manifest = read_manifest(snapshot_dir)
    image_shape = tuple(manifest["image_shape"])
    by_task: dict[str, list[EncodedEpisode]] = {}
    for name in sorted(manifest["shards"]):
        path = snapshot_dir / name
        table = read_shard(path, image_shape, manifest["shards"][name].get("sha256"))
        if table.num_rows == 0:
            continue
        cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in
                (C.EPISODE, C.STEP, C.VARIATION, C.REWARD, C.SUCCESS, C.TERMINATED, C.TRUNCATED)}
        images = table.column(C.IMAGE).to_pylist()
        proprio = table.column(C.PROPRIO).combine_chunks().flatten().to_numpy().reshape(-1, C.PROPRIO_DIM)
        action = table.column(C.ACTION).combine_chunks().flatten().to_numpy().reshape(-1, C.ACTION_DIM)
        if not (np.isfinite(proprio).all() and np.isfinite(action).all()):
            raise PipelineError(f"{path}: NaN or infinite proprio/action values")
        tasks, instructions, sources = (table.column(c).to_pylist() for c in (C.TASK, C.INSTRUCTION, C.SOURCE))
        bounds = np.flatnonzero(np.r_[True, cols[C.EPISODE][1:] != cols[C.EPISODE][:-1], True])
        for a, b in zip(bounds[:-1], bounds[1:]):
            if not np.array_equal(cols[C.STEP][a:b], np.arange(b - a)):
                raise PipelineError(f"{path}: rows are not ordered by (episode, step)")
            by_task.setdefault(tasks[a], []).append(EncodedEpisode(
                task=tasks[a], variation=int(cols[C.VARIATION][a]), instruction=instructions[a],
                source=sources[a], images=images[a:b], proprios=proprio[a:b].astype(np.float32),
                actions=action[a:b].astype(np.float32), rewards=cols[C.REWARD][a:b].astype(np.float32),
                successes=cols[C.SUCCESS][a:b].astype(bool), terminated=bool(cols[C.TERMINATED][b - 1]),
                truncated=bool(cols[C.TRUNCATED][b - 1])))
    return by_task, manifest


def decode_frames(episode: EncodedEpisode, image_shape: tuple[int, int, int]) -> np.ndarray:
    """One episode's frames as (length, H, W, 3) uint8; steps without a frame are zeros."""
    blank = np.zeros(image_shape, np.uint8)
    return np.stack([decode_png(b) if b else blank for b in episode.images]).astype(np.uint8)


def decode_episodes(episodes: Sequence[EncodedEpisode], image_shape: tuple[int, int, int],
                    frames: Sequence[np.ndarray] | None = None) -> StepTable:
    """Episodes -> a StepTable for training. `frames`: already decoded `decode_frames` per episode."""
    cols: dict[str, list] = {k: [] for k in ("episode", "step", "task", "variation", "instruction",
                                             "proprio", "action", "reward", "success", "terminated", "truncated",
                                             "source", "episode_length", "steps_to_success", "has_frame")}
    images = []
    for i, ep in enumerate(episodes):
        n = ep.length
        cols["episode"] += [i] * n
        cols["step"] += list(range(n))
        cols["task"] += [ep.task] * n
        cols["variation"] += [ep.variation] * n
        cols["instruction"] += [ep.instruction] * n
        images.append(decode_frames(ep, image_shape) if frames is None else frames[i])
        cols["has_frame"] += [bool(b) for b in ep.images]
        cols["proprio"] += list(ep.proprios)
        cols["action"] += list(ep.actions)
        cols["reward"] += list(ep.rewards)
        cols["success"] += list(ep.successes)
        last = [False] * (n - 1) + [True]
        cols["terminated"] += [l and ep.terminated for l in last]
        cols["truncated"] += [l and ep.truncated for l in last]
        cols["source"] += [ep.source] * n
        cols["episode_length"] += [n] * n
        cols["steps_to_success"] += [ep.steps_to_success] * n
    arrays = {k: np.asarray(v) for k, v in cols.items()}
    if not len(arrays["step"]):
        raise ValueError("no episodes to decode")
    arrays["images"] = np.concatenate(images).reshape(-1, *image_shape)
    arrays["proprio"] = arrays["proprio"].astype(np.float32).reshape(-1, C.PROPRIO_DIM)
    arrays["action"] = arrays["action"].astype(np.float32).reshape(-1, C.ACTION_DIM)
    arrays["task"] = arrays["task"].astype(object)
    return StepTable(**arrays)
