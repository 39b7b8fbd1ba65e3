import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vla_pipeline import constants as C
from vla_pipeline.data.snapshot import EncodedEpisode, encode_png, load_snapshot, sha256_file, write_snapshot
from vla_pipeline.data.windows import chunk_window_indices
from vla_pipeline.errors import PipelineError
from vla_pipeline.io import atomic_directory


def fake_episode(task: str, length: int, seed: int, solved: bool = True) -> EncodedEpisode:
    rng = np.random.default_rng(seed)
    images = [encode_png(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(length)]
    successes = np.zeros(length, bool)
    if solved:
        successes[-1] = True
    return EncodedEpisode(task, seed % 50, f"do {task}", "expert", images,
                          rng.normal(size=(length, 4)).astype(np.float32),
                          rng.uniform(-1, 1, (length, 4)).astype(np.float32),
                          successes.astype(np.float32), successes, solved, not solved)


def make_snapshot(path, episodes=None):
    episodes = episodes or {"a-v3": [fake_episode("a-v3", 5, 1), fake_episode("a-v3", 3, 2)],
                            "b-v3": [fake_episode("b-v3", 4, 3, solved=False)]}
    with atomic_directory(path) as tmp:
        write_snapshot(tmp, episodes, (8, 8, 3), {"source": "test"})
    return path


def test_round_trip_keeps_every_column(tmp_path):
    table, manifest = load_snapshot(make_snapshot(tmp_path / "s"))
    assert len(table) == 12 and table.images.shape == (12, 8, 8, 3)
    assert list(table.episode) == [0] * 5 + [1] * 3 + [0] * 4  # ids are per shard (task)
    assert list(table.step[:5]) == [0, 1, 2, 3, 4]
    assert table.terminated.sum() == 2 and table.truncated.sum() == 1
    assert list(table.steps_to_success[[0, 5, 8]]) == [5, 3, -1]
    assert manifest["tasks"]["a-v3"]["success_rate"] == 1.0
    assert manifest["tasks"]["b-v3"]["successes"] == 0
    ep = fake_episode("a-v3", 5, 1)
    np.testing.assert_array_equal(table.action[:5], ep.actions)


def test_same_episodes_give_identical_bytes(tmp_path):
    a, b = make_snapshot(tmp_path / "a"), make_snapshot(tmp_path / "b")
    for name in ("a-v3.parquet", "b-v3.parquet", C.MANIFEST_FILE):
        assert sha256_file(a / name) == sha256_file(b / name)


def test_unchanged_task_shard_is_reused_byte_for_byte(tmp_path):
    first = make_snapshot(tmp_path / "r1")
    with atomic_directory(tmp_path / "r2") as tmp:
        write_snapshot(tmp, {"a-v3": None, "b-v3": [fake_episode("b-v3", 2, 9)]}, (8, 8, 3), {},
                       reuse_from=first)
    assert sha256_file(first / "a-v3.parquet") == sha256_file(tmp_path / "r2" / "a-v3.parquet")
    table, _ = load_snapshot(tmp_path / "r2")
    assert len(set(zip(table.task, table.episode))) == 3


def test_pad_masks_at_episode_end():
    step = np.array([0, 1, 2, 0, 1])
    length = np.array([3, 3, 3, 2, 2])
    index, mask = chunk_window_indices(step, length, chunk_len=3)
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(index, [[0, 1, 2], [1, 2, 2], [2, 2, 2], [3, 4, 4], [4, 4, 4]])


def test_foreign_parquet_is_refused(tmp_path):
    snap = make_snapshot(tmp_path / "s")
    pq.write_table(pa.table({"x": [1, 2]}), snap / "a-v3.parquet")
    manifest = json.loads((snap / C.MANIFEST_FILE).read_text())
    manifest["shards"]["a-v3.parquet"]["sha256"] = sha256_file(snap / "a-v3.parquet")
    (snap / C.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(PipelineError, match="a-v3.parquet: not a vla_pipeline buffer shard"):
        load_snapshot(snap)


def test_truncated_shard_is_refused(tmp_path):
    snap = make_snapshot(tmp_path / "s")
    data = (snap / "b-v3.parquet").read_bytes()
    (snap / "b-v3.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match="b-v3.parquet: content does not match the manifest"):
        load_snapshot(snap)


def _rewrite_shard(snap, name, table):
    pq.write_table(table, snap / name)
    manifest = json.loads((snap / C.MANIFEST_FILE).read_text())
    manifest["shards"][name]["sha256"] = sha256_file(snap / name)
    (snap / C.MANIFEST_FILE).write_text(json.dumps(manifest))


def test_missing_column_wrong_version_nan_and_bad_image(tmp_path):
    base = make_snapshot(tmp_path / "base")
    original = pq.read_table(base / "a-v3.parquet")

    def variant(name, table):
        snap = tmp_path / name
        shutil.copytree(base, snap)
        _rewrite_shard(snap, "a-v3.parquet", table)
        return snap

    with pytest.raises(PipelineError, match=r"missing columns \['reward'\]"):
        load_snapshot(variant("missing", original.drop_columns([C.REWARD])))
    meta = dict(original.schema.metadata)
    meta[b"vla_pipeline.schema_version"] = b"99"
    with pytest.raises(PipelineError, match="schema version 99"):
        load_snapshot(variant("version", original.replace_schema_metadata(meta)))
    actions = original.column(C.ACTION).combine_chunks().flatten().to_numpy().copy()
    actions[3] = np.nan
    nan_col = pa.FixedSizeListArray.from_arrays(pa.array(actions), 4)
    nan_table = original.set_column(original.schema.get_field_index(C.ACTION), original.schema.field(C.ACTION), nan_col)
    with pytest.raises(PipelineError, match="'action' contains NaN"):
        load_snapshot(variant("nan", nan_table))
    big = pa.array([encode_png(np.zeros((9, 8, 3), np.uint8))] * original.num_rows, pa.binary())
    bad = original.set_column(original.schema.get_field_index(C.IMAGE), original.schema.field(C.IMAGE), big)
    with pytest.raises(PipelineError, match=r"has shape \(9, 8, 3\), expected \(8, 8, 3\)"):
        load_snapshot(variant("shape", bad))


def test_missing_manifest_is_refused(tmp_path):
    snap = make_snapshot(tmp_path / "s")
    (snap / C.MANIFEST_FILE).unlink()
    with pytest.raises(PipelineError, match="snapshot manifest not found"):
        load_snapshot(snap)
