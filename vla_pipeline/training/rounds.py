"""What a DVC round reads and writes: predecessor paths, buffer seeding, snapshots.

Every checkpoint and buffer lives at `data/<kind>/<name>`, including `sft` and `demos`, so
a round item only names its predecessors (`r02: {policy_in: r01, buffer_in: r01, base: sft}`).
"""

from __future__ import annotations

from pathlib import Path

from vla_pipeline.config import Params
from vla_pipeline.constants import ROOT_BUFFERS
from vla_pipeline.data.episode import Episode
from vla_pipeline.data.snapshot import load_episodes, read_manifest, write_snapshot
from vla_pipeline.errors import PipelineError
from vla_pipeline.io import StageOutputs, atomic_directory, write_json_atomic
from vla_pipeline.outputs import curve_path, write_checkpoint
from vla_pipeline.training.success_buffer import SelfBCBuffer

DATA = Path("data")


def checkpoint_dir(name: str, root: Path = DATA) -> Path:
    return root / "checkpoints" / name


def buffer_dir(name: str, root: Path = DATA) -> Path:
    return root / "buffers" / name


def rollouts_dir(name: str, root: Path = DATA) -> Path:
    return root / "rollouts" / name


def stream_seed(seed: int, round_name: str) -> int:
    """(a chain's seed, round name) -> the round's seed: each round draws its own streams."""
    import zlib

    return (seed * 1_000_003 + zlib.crc32(round_name.encode())) % 2**31


def round_seed(params: Params, round_name: str) -> int:
    """Each round draws its own random streams: (ppo.seed, round name) -> a seed."""
    return stream_seed(params.ppo.seed, round_name)


def round_item(params: Params, round_name: str):
    if round_name not in params.rounds:
        known = ", ".join(params.rounds) or "none"
        if round_name in params.ire_rounds:
            raise PipelineError(f"{round_name!r} is an iRe-VLA round (under 'ire_rounds', kind "
                                f"{params.ire_rounds[round_name].kind}): run it with `python -m stages ire-round`")
        raise PipelineError(f"params.yaml: no round named {round_name!r} under 'rounds' (known: {known})")
    return params.rounds[round_name]


def open_buffer(params: Params, buffer_in: str, snapshot: Path) -> tuple[SelfBCBuffer, set[str]]:
    """The buffer a round starts from; returns it and the tasks whose content was filtered."""
    buffer = SelfBCBuffer(params.buffer.key, params.buffer.capacity, params.buffer.admit_margin)
    if buffer_in in ROOT_BUFFERS and not params.buffer.seed_with_demos:
        return buffer, set()
    return buffer, seed_from_snapshot(buffer, snapshot)


def seed_from_snapshot(buffer: SelfBCBuffer, snapshot: Path) -> set[str]:
    """Fill `buffer` from a snapshot, task by task in sorted order; returns the tasks whose
    content the buffer's cap filtered (their shards cannot be reused as they are)."""
    by_task, _ = load_episodes(snapshot)
    differs = set()
    for task in sorted(by_task):
        differs |= buffer.seed(by_task[task])
    return differs


def replay_successes(buffer: SelfBCBuffer, rollouts: dict[str, list[Episode]]) -> None:
    """Offer a round's successes in collection order (per task, which is all admission sees)."""
    for task in sorted(rollouts):
        for ep in rollouts[task]:
            buffer.offer(ep)


def write_buffer(out_dir: Path, buffer: SelfBCBuffer, source_snapshot: Path | None, filtered: set[str],
                 provenance: dict, cameras: tuple, image_shape: tuple) -> dict:
    """Snapshot the buffer; tasks it did not change reuse the source shard byte-for-byte."""
    by_task = buffer.episodes_by_task()
    reusable = set()
    if source_snapshot is not None:
        shards = read_manifest(source_snapshot)["shards"]
        reusable = {t for t in by_task if f"{t}.parquet" in shards} - buffer.changed_tasks - filtered
    plan = {task: (None if task in reusable else eps) for task, eps in by_task.items()}
    return write_snapshot(out_dir, plan, cameras, image_shape, provenance, reuse_from=source_snapshot)


def round_outputs(data: Path, round_name: str, curve_file: Path | None = None,
                  kinds: tuple[str, ...] = ("checkpoints", "rollouts")) -> StageOutputs:
    """A round's outputs (`kinds` under data/, and its curve), checked writable, replaced together."""
    dirs = {"checkpoints": checkpoint_dir, "rollouts": rollouts_dir, "buffers": buffer_dir}
    return StageOutputs(*(dirs[k](round_name, data) for k in kinds), curve_file or curve_path(data, round_name))


def write_round(data: Path, round_name: str, policy, meta: dict, successes: list, curve: list,
                cameras: tuple, image_size: int, curve_file: Path | None = None) -> None:
    """An ACPPO round: checkpoints/<round>, rollouts/<round> (its successes), its curve."""
    write_checkpoint(checkpoint_dir(round_name, data), policy, meta)
    with atomic_directory(rollouts_dir(round_name, data)) as tmp:
        by_task: dict = {}
        for ep in successes:  # collection order within each task
            by_task.setdefault(ep.task, []).append(ep)
        write_snapshot(tmp, by_task, cameras, (image_size, image_size, 3),
                       {"source": round_name, "kind": "rollout successes"})
    write_json_atomic(curve_file or curve_path(data, round_name), curve)


def write_round_buffer(data: Path, round_name: str, buffer, source: Path | None, filtered: set[str],
                       provenance: dict, cameras: tuple, image_size: int) -> dict:
    """buffers/<round>: the self-BC buffer or iRe-VLA's D_RL after a round; returns its manifest."""
    with atomic_directory(buffer_dir(round_name, data)) as tmp:
        return write_buffer(tmp, buffer, source, filtered, provenance, tuple(cameras), (image_size, image_size, 3))
