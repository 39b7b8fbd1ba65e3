import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vla_pipeline import constants as C
from vla_pipeline.data.episode import Episode, encode_png
from vla_pipeline.data.snapshot import load_episodes, load_snapshot, sha256_file, write_snapshot
from vla_pipeline.data.windows import ChunkWindows, chunk_window_indices, sample_weights
from vla_pipeline.errors import PipelineError
from vla_pipeline.io import atomic_directory


CAMERAS = ("corner4", "topview")


def fake_episode(task: str, length: int, seed: int, solved: bool = True, frame_every: int = 1,
                 cameras=CAMERAS, source: str = "expert") -> Episode:
    """Random but reproducible content; frames every `frame_every` steps, one per camera."""
    rng = np.random.default_rng(seed)
    ep = Episode(task, 7, seed % 50, f"do {task}", source)  # configuration 7/(seed % 50)
    for t in range(length):
        frames = (tuple(encode_png(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in cameras)
                  if t % frame_every == 0 else ())
        ep.add_step(tuple(frames), rng.normal(size=4), rng.normal(size=39), rng.uniform(-1, 1, 4),
                    float(solved and t == length - 1), solved and t == length - 1)
    return ep.finish(solved, not solved)


def make_snapshot(path, episodes=None, cameras=CAMERAS):
    episodes = episodes or {"a-v3": [fake_episode("a-v3", 5, 1), fake_episode("a-v3", 3, 2)],
                            "b-v3": [fake_episode("b-v3", 4, 3, solved=False)]}
    with atomic_directory(path) as tmp:
        write_snapshot(tmp, episodes, cameras, (8, 8, 3), {"source": "test"})
    return path


def test_round_trip_keeps_every_column_and_camera(tmp_path):
    table, manifest = load_snapshot(make_snapshot(tmp_path / "s"))
    assert len(table) == 12 and table.images.shape == (12, 2, 8, 8, 3)
    assert manifest["cameras"] == list(CAMERAS)
    assert list(table.episode) == [0] * 5 + [1] * 3 + [0] * 4  # ids are per shard (task)
    assert list(table.step[:5]) == [0, 1, 2, 3, 4]
    assert list(table.steps_to_success[[0, 5, 8]]) == [5, 3, -1]
    assert list(table.variation_seed[[0, 5, 8]]) == [7, 7, 7] and list(table.variation[[0, 5, 8]]) == [1, 2, 3]
    assert manifest["tasks"]["a-v3"]["success_rate"] == 1.0
    assert manifest["tasks"]["b-v3"]["successes"] == 0
    ep = fake_episode("a-v3", 5, 1)
    np.testing.assert_array_equal(table.action[:5], np.asarray(ep.actions))
    np.testing.assert_array_equal(table.state[:5], np.asarray(ep.states))
    from vla_pipeline.data.episode import decode_png

    for t in range(5):  # each camera's column holds that camera's frame
        for v in range(2):
            np.testing.assert_array_equal(table.images[t, v], decode_png(ep.frames[t][v]))


def test_episodes_round_trip_through_parquet(tmp_path):
    """Episodes -> shard -> episodes is the identity, including steps without frames."""
    episodes = [fake_episode("a-v3", 7, 4, frame_every=3, source="r01"), fake_episode("a-v3", 2, 5, solved=False)]
    by_task, _ = load_episodes(make_snapshot(tmp_path / "s", {"a-v3": episodes}))
    for got, want in zip(by_task["a-v3"], episodes):
        assert got.frames == want.frames and got.source == want.source
        assert (got.task, got.variation_seed, got.variation, got.terminated, got.truncated) == \
            (want.task, want.variation_seed, want.variation, want.terminated, want.truncated)
        for name, values in want.arrays().items():
            np.testing.assert_array_equal(got.arrays()[name], values)


def test_old_schema_version_is_refused_with_a_rebuild_hint(tmp_path):
    snap = make_snapshot(tmp_path / "s")
    manifest = json.loads((snap / C.MANIFEST_FILE).read_text())
    manifest["schema_version"] = 1
    (snap / C.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(PipelineError, match=r"schema version 1, this code reads version 2; re-create it"):
        load_snapshot(snap)


def test_shard_of_other_cameras_is_refused(tmp_path):
    snap = make_snapshot(tmp_path / "s")
    other = make_snapshot(tmp_path / "o", {"a-v3": [fake_episode("a-v3", 3, 1, cameras=("corner4",))]},
                          cameras=("corner4",))
    shutil.copy(other / "a-v3.parquet", snap / "a-v3.parquet")
    manifest = json.loads((snap / C.MANIFEST_FILE).read_text())
    manifest["shards"]["a-v3.parquet"]["sha256"] = sha256_file(snap / "a-v3.parquet")
    (snap / C.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(PipelineError, match="cameras 'corner4', its manifest says 'corner4,topview'"):
        load_snapshot(snap)


def test_sample_weights_count_rollouts_per_step_and_balance_tasks(tmp_path):
    """A rollout with a frame every 4th step weighs as much per env step as a demo."""
    demo = fake_episode("a-v3", 8, 1)  # 8 frames
    rollout = fake_episode("a-v3", 8, 2, frame_every=4, source="r01")  # 2 frames
    short = fake_episode("b-v3", 2, 3)
    table, _ = load_snapshot(make_snapshot(tmp_path / "s", {"a-v3": [demo, rollout], "b-v3": [short]}))
    plain = sample_weights(table, balance_tasks=False)
    assert plain[:8].sum() == pytest.approx(plain[8:16].sum())  # equal length -> equal mass
    assert plain[8] == pytest.approx(4 * plain[0]) and plain[9] == 0.0  # frameless steps never drawn
    assert plain[16:].sum() == pytest.approx(2 / 18)
    balanced = sample_weights(table, balance_tasks=True)
    assert balanced[:16].sum() == pytest.approx(0.5) and balanced[16:].sum() == pytest.approx(0.5)
    weighted = sample_weights(table, balance_tasks=True, task_weights={"b-v3": 3.0})
    assert weighted[16:].sum() == pytest.approx(0.75)
    windows = ChunkWindows(table, 4, ["a-v3", "b-v3"], balance_tasks=True)
    rows = windows.sample(np.random.default_rng(0), 20000)
    assert (table.task[rows] == "b-v3").mean() == pytest.approx(0.5, abs=0.02)
    assert table.has_frame[rows].all()


def test_same_episodes_give_identical_bytes(tmp_path):
    a, b = make_snapshot(tmp_path / "a"), make_snapshot(tmp_path / "b")
    for name in ("a-v3.parquet", "b-v3.parquet", C.MANIFEST_FILE):
        assert sha256_file(a / name) == sha256_file(b / name)


def test_unchanged_task_shard_is_reused_byte_for_byte(tmp_path):
    first = make_snapshot(tmp_path / "r1")
    with atomic_directory(tmp_path / "r2") as tmp:
        write_snapshot(tmp, {"a-v3": None, "b-v3": [fake_episode("b-v3", 2, 9)]}, CAMERAS, (8, 8, 3), {},
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
    column = C.image_column("topview")
    big = pa.array([encode_png(np.zeros((9, 8, 3), np.uint8))] * original.num_rows, pa.binary())
    bad = original.set_column(original.schema.get_field_index(column), original.schema.field(column), big)
    with pytest.raises(PipelineError, match=r"topview image in row 0 has shape \(9, 8, 3\), expected \(8, 8, 3\)"):
        load_snapshot(variant("shape", bad))
    garbage = pa.array([b"not a png"] * original.num_rows, pa.binary())
    bad = original.set_column(original.schema.get_field_index(column), original.schema.field(column), garbage)
    with pytest.raises(PipelineError, match=r"topview image in row 0 cannot be decoded"):
        load_snapshot(variant("garbage", bad))


def test_missing_manifest_is_refused(tmp_path):
    snap = make_snapshot(tmp_path / "s")
    (snap / C.MANIFEST_FILE).unlink()
    with pytest.raises(PipelineError, match="snapshot manifest not found"):
        load_snapshot(snap)


def test_demo_provenance_names_the_expert_only_when_it_is_not_metaworlds():
    """Snapshots of MetaWorld's scripts keep the bytes they had before `demos.expert` existed."""
    from vla_pipeline.config import DemosConfig
    from vla_pipeline.demos import demo_settings

    assert "expert" not in demo_settings(DemosConfig())
    assert demo_settings(DemosConfig(expert="direct"))["expert"] == "direct"


def test_the_small_demo_set_keeps_the_first_n_episodes_of_each_task(tmp_path, tiny_demos):
    from vla_pipeline.data.snapshot import load_episodes
    from vla_pipeline.demos import subset_demos

    source, _ = load_episodes(tiny_demos)
    manifest = subset_demos(tiny_demos, tmp_path, 1)
    kept, _ = load_episodes(tmp_path)
    assert sorted(kept) == sorted(source)
    for task, episodes in kept.items():
        assert [(ep.variation_seed, ep.variation) for ep in episodes] == [(ep.variation_seed, ep.variation)
                                                                          for ep in source[task][:1]]
        assert episodes[0].frames == source[task][0].frames  # the same PNG bytes: the same views
        assert manifest["tasks"][task]["episodes"] == 1
    assert manifest["provenance"]["episodes_per_task"] == 1
