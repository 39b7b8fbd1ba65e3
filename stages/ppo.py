"""DVC stage `ppo@<round>`: one round of action-chunked PPO with self-BC: the round's policy and
buffer in (named by `rounds.<round>` in params.yaml), its checkpoint, successes and curve out."""

from pathlib import Path

import typer

from stages.common import PARAMS, echo_json, run, stage_app, user_errors
from vla_pipeline import preflight
from vla_pipeline.config import load_params

app = stage_app(__doc__)


@app.command()
@user_errors
def ppo(
    round_name: str = typer.Option(..., "--round", help="Round name (a key of `rounds` in params.yaml)."),
    data: Path = typer.Option(Path("data"), help="Root of checkpoints/, buffers/, rollouts/."),
    curve: Path = typer.Option(None, help="Per-iteration learning curve (default data/metrics/train-<round>.json)."),
    params_file: Path = PARAMS,
):
    """One round of action-chunked PPO with self-BC: policy + buffer in, checkpoint + rollouts out."""
    preflight.check_rendering()  # before the imports below load MuJoCo
    import torch

    from vla_pipeline import distributed
    from vla_pipeline.checkpoint import load_policy
    from vla_pipeline.data.snapshot import read_manifest
    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.fits import check_policy_fits_env, check_snapshot_fits_env
    from vla_pipeline.training.rounds import (buffer_dir, checkpoint_dir, open_buffer, round_item, round_outputs,
                                              write_round)
    from vla_pipeline.training.ppo.trainer import run_round

    params = load_params(params_file)
    item = round_item(params, round_name)
    params = params.round_params(round_name)  # the round's `set` applied to ppo / bc / buffer
    preflight.check_devices(params, ("ppo.device",))
    distributed.init_from_env(params.ppo.device)  # under torchrun: data-parallel updates (README)
    outputs = round_outputs(data, round_name, curve) if distributed.is_main() else None  # writable, before the work
    torch.set_num_threads(distributed.threads_per_rank(params.ppo.num_threads))
    policy = load_policy(checkpoint_dir(item.policy_in, data), params.ppo.device)
    check_policy_fits_env(policy, params.env, resolve_tasks(params.env), checkpoint_dir(item.policy_in, data))
    source = buffer_dir(item.buffer_in, data)
    if source.exists():
        check_snapshot_fits_env(source, read_manifest(source), params.env)
    buffer, _ = open_buffer(params, item.buffer_in, source)
    result = run_round(policy, buffer, params, round_name)
    if not distributed.is_main():  # rank 0 writes
        return distributed.shutdown()
    meta = {"stage": "ppo", "round": round_name, "policy_in": item.policy_in, "buffer_in": item.buffer_in,
            "iterations": params.ppo.iterations, "final": result.curve[-1] if result.curve else None}
    with outputs:  # checkpoint, rollouts and curve: all or none
        write_round(data, round_name, policy, meta, result.successes, result.curve, params.env.cameras,
                    params.env.image_size, curve)
    echo_json({"round": round_name, "successes": len(result.successes), "buffer": buffer.stats(), **result.counters})
    distributed.shutdown()


if __name__ == "__main__":
    run(app, __spec__.name)
