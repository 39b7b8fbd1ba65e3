"""DVC stage `snapshot@<round>`: the self-BC buffer after a round: buffer_in + the round's
successes -> data/buffers/<round>; tasks the round did not change reuse their shard's bytes."""

from pathlib import Path

import typer

from stages.common import PARAMS, echo_json, run, stage_app, user_errors
from vla_pipeline.config import load_params
from vla_pipeline.constants import ROOT_BUFFERS
from vla_pipeline.data.snapshot import load_episodes
from vla_pipeline.training.rounds import (buffer_dir, open_buffer, replay_successes, rollouts_dir, round_item,
                                    write_round_buffer)

app = stage_app(__doc__)


@app.command()
@user_errors
def snapshot(
    round_name: str = typer.Option(..., "--round", help="Round name (a key of `rounds` in params.yaml)."),
    data: Path = typer.Option(Path("data"), help="Root of buffers/ and rollouts/."),
    params_file: Path = PARAMS,
):
    """Self-BC buffer after a round: buffer_in + the round's successes -> data/buffers/<round>."""
    params = load_params(params_file)
    item = round_item(params, round_name)
    params = params.round_params(round_name)  # the round's `set` applied to the buffer's admission
    source = buffer_dir(item.buffer_in, data)
    buffer, filtered = open_buffer(params, item.buffer_in, source)
    successes, _ = load_episodes(rollouts_dir(round_name, data))
    replay_successes(buffer, successes)
    seeded = not (item.buffer_in in ROOT_BUFFERS and not params.buffer.seed_with_demos)
    provenance = {"source": "self-bc buffer", "round": round_name, "buffer_in": item.buffer_in,
                  "buffer": params.buffer.model_dump()}
    manifest = write_round_buffer(data, round_name, buffer, source if seeded else None, filtered, provenance,
                                  params.env.cameras, params.env.image_size)
    echo_json({"round": round_name, **buffer.stats(), "changed_tasks": sorted(buffer.changed_tasks | filtered),
               "shards": len(manifest["shards"])})


if __name__ == "__main__":
    run(app, __spec__.name)
