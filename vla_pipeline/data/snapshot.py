"""Buffer snapshots: a directory of per-task Parquet shards plus a manifest.

Shard names are `<task>.parquet` and rows are ordered by (episode, step), so the same
episodes give the same bytes; a snapshot that keeps a task unchanged can reuse that
shard byte-for-byte and DVC stores it once. Reading validates everything it relies on and
names the offending file.

One builder (`episodes_to_table`: episodes -> Arrow rows), its inverse
(`table_to_episodes`), and one decoder to training arrays (`decode_steps`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vla_pipeline import constants as C
from vla_pipeline.data.episode import Episode, decode_png
from vla_pipeline.data.schema import (
    META_CAMERAS, META_SCHEMA, META_VERSION, SCHEMA_NAME, SCHEMA_VERSION, FrameLayout, buffer_schema,
)
from vla_pipeline.errors import PipelineError
from vla_pipeline.io import read_json, write_json_atomic

_VECTORS = {C.PROPRIO: C.PROPRIO_DIM, C.STATE: C.STATE_DIM, C.ACTION: C.ACTION_DIM}
_REBUILD_HINT = "re-create it with this code (`dvc repro collect_demos`, or rerun the stage that wrote it)"


# ---------------------------------------------------------------------------- writing


def episodes_to_table(episodes: Sequence[Episode], cameras: Sequence[str],
                      image_shape: tuple[int, int, int]) -> pa.Table:
    """The one builder: episodes -> Arrow rows (episode ids 0..n-1 in the given order)."""
    cols: dict[str, list] = {f.name: [] for f in buffer_schema(cameras, image_shape)}
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in _VECTORS}
    for episode_id, ep in enumerate(episodes):
        n = ep.length
        if n < 1 or len(ep.frames) != n:
            raise ValueError(f"episode has {len(ep.frames)} frame slots for {n} steps")
        if not ep.frames[0]:
            raise ValueError("the first step of an episode must have a frame")
        if any(views and len(views) != len(cameras) for views in ep.frames):
            raise ValueError(f"frames must hold one image per camera {list(cameras)}")
        arrays = ep.arrays()
        last = np.zeros(n, bool)
        last[-1] = True
        cols[C.EPISODE] += [episode_id] * n
        cols[C.STEP] += range(n)
        cols[C.TASK] += [ep.task] * n
        cols[C.VARIATION_SEED] += [ep.variation_seed] * n
        cols[C.VARIATION] += [ep.variation] * n
        cols[C.INSTRUCTION] += [ep.instruction] * n
        for v, camera in enumerate(cameras):
            cols[C.image_column(camera)] += [views[v] if views else b"" for views in ep.frames]
        for name in _VECTORS:
            vectors[name].append(arrays[name])
        cols[C.REWARD] += arrays[C.REWARD].tolist()
        cols[C.SUCCESS] += arrays[C.SUCCESS].tolist()
        cols[C.TERMINATED] += (last & ep.terminated).tolist()
        cols[C.TRUNCATED] += (last & ep.truncated).tolist()
        cols[C.SOURCE] += [ep.source] * n
        cols[C.EPISODE_LENGTH] += [n] * n
        cols[C.STEPS_TO_SUCCESS] += [ep.steps_to_success] * n
    schema = buffer_schema(cameras, image_shape)
    arrays_out = []
    for fld in schema:
        if fld.name in _VECTORS:
            width = _VECTORS[fld.name]
            flat = (np.concatenate(vectors[fld.name]) if vectors[fld.name] else np.zeros((0, width), np.float32))
            arrays_out.append(pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.float32()), width))
        else:
            arrays_out.append(pa.array(cols[fld.name], type=fld.type))
    return pa.Table.from_arrays(arrays_out, schema=schema)


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


def task_summary(episodes: Sequence[Episode]) -> dict:
    successes = [ep for ep in episodes if ep.steps_to_success > 0]
    return {
        "episodes": len(episodes),
        "steps": int(sum(ep.length for ep in episodes)),
        "frames": int(sum(ep.frame_count for ep in episodes)),
        "configurations": len({(ep.variation_seed, ep.variation) for ep in episodes}),
        "successes": len(successes),
        "success_rate": len(successes) / len(episodes) if episodes else 0.0,
        "mean_steps_to_success": (float(np.mean([ep.steps_to_success for ep in successes]))
                                  if successes else None),
    }


def write_snapshot(out_dir: Path, episodes_by_task: Mapping[str, Sequence[Episode] | None],
                   cameras: Sequence[str], image_shape: tuple[int, int, int], provenance: dict,
                   rows_per_row_group: int = 2048, reuse_from: Path | None = None) -> dict:
    """Write shards + manifest into `out_dir` (an already-atomic temporary directory).

    `reuse_from`: a previous snapshot whose shard for a task is copied byte-for-byte when
    that task's episodes are unchanged (signalled by passing `None` for the task).
    """
    manifest: dict = {
        "schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "cameras": list(cameras),
        "image_shape": list(image_shape), "provenance": provenance, "shards": {}, "tasks": {},
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
        table = episodes_to_table(episodes, cameras, image_shape)
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
    path = snapshot_dir / C.MANIFEST_FILE
    manifest = read_json(path, "snapshot manifest")
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA_NAME:
        raise PipelineError(f"{path} is not a vla_pipeline buffer manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise PipelineError(f"{path}: schema version {manifest.get('schema_version')!r}, this code reads "
                            f"version {SCHEMA_VERSION}; {_REBUILD_HINT}")
    return manifest


def snapshot_layout(manifest: dict) -> FrameLayout:
    """(cameras, image shape) of a snapshot."""
    return FrameLayout(tuple(manifest["cameras"]), tuple(manifest["image_shape"]))


def _check_shard_schema(path: Path, schema: pa.Schema, expected: pa.Schema) -> None:
    meta = schema.metadata or {}
    if meta.get(META_SCHEMA) != SCHEMA_NAME.encode():
        raise PipelineError(f"{path}: not a vla_pipeline buffer shard (foreign Parquet schema)")
    version = meta.get(META_VERSION, b"?").decode()
    if version != str(SCHEMA_VERSION):
        raise PipelineError(f"{path}: schema version {version}, this code reads version {SCHEMA_VERSION}; "
                            f"{_REBUILD_HINT}")
    if meta.get(META_CAMERAS) != expected.metadata[META_CAMERAS]:
        raise PipelineError(f"{path}: cameras {meta.get(META_CAMERAS, b'?').decode()!r}, its manifest says "
                            f"{expected.metadata[META_CAMERAS].decode()!r}")
    missing = [f.name for f in expected if f.name not in schema.names]
    if missing:
        raise PipelineError(f"{path}: missing columns {missing}")
    for fld in expected:
        if not schema.field(fld.name).type.equals(fld.type):
            raise PipelineError(
                f"{path}: column '{fld.name}' has type {schema.field(fld.name).type}, expected {fld.type}"
            )


def read_shard(path: Path, cameras: Sequence[str], image_shape: tuple[int, int, int],
               expected_sha256: str | None = None) -> pa.Table:
    if not path.is_file():
        raise PipelineError(f"buffer shard missing: {path}")
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise PipelineError(f"{path}: content does not match the manifest (truncated or modified)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise PipelineError(f"{path}: unreadable Parquet ({exc}); truncated or corrupt?") from None
    expected = buffer_schema(cameras, image_shape)
    _check_shard_schema(path, table.schema, expected)
    table = table.select([f.name for f in expected])
    for name in _VECTORS:
        values = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        if not np.isfinite(values).all():
            raise PipelineError(f"{path}: column '{name}' contains NaN or infinite values")
    if not np.isfinite(table.column(C.REWARD).to_numpy(zero_copy_only=False)).all():
        raise PipelineError(f"{path}: column '{C.REWARD}' contains NaN or infinite values")
    _check_episode_order(path, table)
    return table


def _check_episode_order(path: Path, table: pa.Table) -> None:
    """Rows must be (episode, step) ordered with steps 0..L-1: windows rely on it."""
    if table.num_rows == 0:
        return
    episode = table.column(C.EPISODE).to_numpy()
    step = table.column(C.STEP).to_numpy()
    length = table.column(C.EPISODE_LENGTH).to_numpy()
    starts = np.r_[True, episode[1:] != episode[:-1]]
    expected = np.arange(len(step)) - np.maximum.accumulate(np.where(starts, np.arange(len(step)), 0))
    if not np.array_equal(step, expected) or np.any(step >= length):
        raise PipelineError(f"{path}: rows are not ordered by (episode, step)")


def _vector(table: pa.Table, name: str) -> np.ndarray:
    flat = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32).reshape(-1, _VECTORS[name])


def table_to_episodes(table: pa.Table, cameras: Sequence[str]) -> list[Episode]:
    """The inverse of `episodes_to_table` (frames stay PNG bytes)."""
    if table.num_rows == 0:
        return []
    episode_ids = table.column(C.EPISODE).to_numpy()
    scalars = {c: table.column(c).to_numpy(zero_copy_only=False) for c in
               (C.VARIATION_SEED, C.VARIATION, C.REWARD, C.SUCCESS, C.TERMINATED, C.TRUNCATED)}
    text = {c: table.column(c).to_pylist() for c in (C.TASK, C.INSTRUCTION, C.SOURCE)}
    images = [table.column(C.image_column(camera)).to_pylist() for camera in cameras]
    vectors = {name: _vector(table, name) for name in _VECTORS}
    bounds = np.flatnonzero(np.r_[True, episode_ids[1:] != episode_ids[:-1], True])
    episodes = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        frames = [tuple(view[t] for view in images) if images[0][t] else () for t in range(a, b)]
        episodes.append(Episode(
            task=text[C.TASK][a], variation_seed=int(scalars[C.VARIATION_SEED][a]),
            variation=int(scalars[C.VARIATION][a]), instruction=text[C.INSTRUCTION][a], source=text[C.SOURCE][a],
            frames=frames, proprios=list(vectors[C.PROPRIO][a:b]), states=list(vectors[C.STATE][a:b]),
            actions=list(vectors[C.ACTION][a:b]), rewards=scalars[C.REWARD][a:b].tolist(),
            successes=scalars[C.SUCCESS][a:b].astype(bool).tolist(),
            terminated=bool(scalars[C.TERMINATED][b - 1]), truncated=bool(scalars[C.TRUNCATED][b - 1])))
    return episodes


@dataclass
class StepTable:
    """Training rows as numpy arrays, ordered by (episode, step) within each task."""

    episode: np.ndarray
    step: np.ndarray
    task: np.ndarray  # object array of str
    variation_seed: np.ndarray
    variation: np.ndarray
    images: np.ndarray  # (N, V, H, W, 3) uint8; zeros where no frame was rendered
    proprio: np.ndarray  # (N, 4) float32
    state: np.ndarray  # (N, 39) float32
    action: np.ndarray  # (N, 4) float32
    source: np.ndarray
    episode_length: np.ndarray
    steps_to_success: np.ndarray
    has_frame: np.ndarray  # bool: a frame was rendered at this step
    success: np.ndarray  # bool: the env reported success at this step
    terminated: np.ndarray  # bool: true on an episode's last row when it ended by termination

    def __len__(self) -> int:
        return len(self.episode)


def decode_images(table: pa.Table, cameras: Sequence[str], image_shape: tuple[int, int, int],
                  where: str) -> np.ndarray:
    """(N, V, H, W, 3) from the image columns; an empty value (no frame) decodes to zeros."""
    out = np.zeros((table.num_rows, len(cameras), *image_shape), np.uint8)
    for v, camera in enumerate(cameras):
        for i, data in enumerate(table.column(C.image_column(camera)).to_pylist()):
            if data:
                out[i, v] = decode_frame(data, image_shape, f"{where}: {camera} image in row {i}")
    return out


def decode_frame(data: bytes, image_shape: tuple[int, int, int], where: str) -> np.ndarray:
    try:
        image = decode_png(data)
    except Exception as exc:  # PIL raises many types for corrupt data
        raise PipelineError(f"{where} cannot be decoded ({type(exc).__name__}: {exc}); corrupt buffer?") from None
    if image.shape != tuple(image_shape):
        raise PipelineError(f"{where} has shape {image.shape}, expected {tuple(image_shape)}")
    return image


def decode_steps(table: pa.Table, cameras: Sequence[str], image_shape: tuple[int, int, int], where: str,
                 images: np.ndarray | None = None) -> StepTable:
    """The one decoder from Arrow rows to training arrays (`images`: already decoded frames)."""
    if images is None:
        images = decode_images(table, cameras, image_shape, where)
    col = lambda name: table.column(name).to_numpy(zero_copy_only=False)  # noqa: E731
    return StepTable(
        episode=col(C.EPISODE), step=col(C.STEP), task=np.asarray(table.column(C.TASK).to_pylist(), object),
        variation_seed=col(C.VARIATION_SEED), variation=col(C.VARIATION), images=images,
        proprio=_vector(table, C.PROPRIO), state=_vector(table, C.STATE), action=_vector(table, C.ACTION),
        source=np.asarray(table.column(C.SOURCE).to_pylist(), object), episode_length=col(C.EPISODE_LENGTH),
        steps_to_success=col(C.STEPS_TO_SUCCESS),
        has_frame=np.asarray([bool(b) for b in table.column(C.image_column(cameras[0])).to_pylist()], bool),
        success=col(C.SUCCESS).astype(bool), terminated=col(C.TERMINATED).astype(bool),
    )


def _read_shards(snapshot_dir: Path, tasks: Sequence[str] | None) -> tuple[list[tuple[Path, pa.Table]], dict]:
    manifest = read_manifest(snapshot_dir)
    cameras, image_shape = snapshot_layout(manifest)
    shards = []
    for name in sorted(manifest["shards"]):
        if tasks is not None and name.removesuffix(".parquet") not in tasks:
            continue
        info = manifest["shards"][name]
        path = snapshot_dir / name
        table = read_shard(path, cameras, image_shape, info.get("sha256"))
        if table.num_rows != info["rows"]:
            raise PipelineError(f"{path}: {table.num_rows} rows, manifest says {info['rows']}")
        shards.append((path, table))
    return shards, manifest


def load_snapshot(snapshot_dir: str | Path, tasks: Sequence[str] | None = None) -> tuple[StepTable, dict]:
    """Validate and decode a snapshot (optionally only some tasks) into training rows."""
    snapshot_dir = Path(snapshot_dir)
    shards, manifest = _read_shards(snapshot_dir, tasks)
    if not shards:
        wanted = f" for tasks {list(tasks)}" if tasks is not None else ""
        raise PipelineError(f"{snapshot_dir}: no shards{wanted}")
    cameras, image_shape = snapshot_layout(manifest)
    images = np.concatenate([decode_images(t, cameras, image_shape, str(p)) for p, t in shards])
    table = pa.concat_tables([t for _, t in shards])
    return decode_steps(table, cameras, image_shape, str(snapshot_dir), images), manifest


def load_episodes(snapshot_dir: str | Path) -> tuple[dict[str, list[Episode]], dict]:
    """A snapshot as episodes per task, frames kept as PNG bytes (validated like load_snapshot)."""
    snapshot_dir = Path(snapshot_dir)
    shards, manifest = _read_shards(snapshot_dir, None)
    cameras, _ = snapshot_layout(manifest)
    by_task: dict[str, list[Episode]] = {}
    for _, table in shards:
        for ep in table_to_episodes(table, cameras):
            by_task.setdefault(ep.task, []).append(ep)
    return by_task, manifest
