"""DVC stage `ire_round@<round>`: one iRe-VLA round. `rl` (trunk frozen, no BC) or `ppo` (trunk
trainable) -> checkpoint + D_RL with its successes; `sl` (whole model on demos + D_RL) ->
checkpoint, D_RL passed on. The round's kind and inputs come from `ire_rounds.<round>`."""

from pathlib import Path

import typer

from stages.common import PARAMS, echo_json, run, stage_app, user_errors
from vla_pipeline import preflight
from vla_pipeline.config import load_params

app = stage_app(__doc__)


@app.command()
@user_errors
def ire_round(
    round_name: str = typer.Option(..., "--round", help="Round name (a key of `ire_rounds` in params.yaml)."),
    data: Path = typer.Option(Path("data"), help="Root of checkpoints/ and buffers/."),
    demos: Path = typer.Option(None, help="Expert demos (what an sl round learns besides D_RL); "
                                        "default <data>/buffers/<the round's `demos`>."),
    curve: Path = typer.Option(None, help="Training curve (default data/metrics/train-<round>.json)."),
    params_file: Path = PARAMS,
):
    """One iRe-VLA round (rl, ppo or sl) -> checkpoint + D_RL."""
    preflight.check_rendering()  # before the imports below load MuJoCo
    import torch

    from vla_pipeline.checkpoint import load_policy
    from vla_pipeline.data.snapshot import load_snapshot, read_manifest
    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.fits import check_policy_fits_env, check_snapshot_fits_env
    from vla_pipeline.io import write_json_atomic
    from vla_pipeline.outputs import curve_path, write_checkpoint
    from vla_pipeline.training.ire import ire_round_item, open_d_rl, run_rl_round, run_sl_round
    from vla_pipeline.training.rounds import buffer_dir, checkpoint_dir, round_outputs, write_round_buffer

    params = load_params(params_file)
    item = ire_round_item(params, round_name)
    trains_as = "sft" if item.kind == "sl" else "ppo"  # SL rounds train as SFT does, RL rounds as PPO
    section = getattr(params, trains_as)
    preflight.check_devices(params, (f"{trains_as}.device",))
    outputs = round_outputs(data, round_name, curve, ("checkpoints", "buffers"))  # writable, before the work
    torch.set_num_threads(section.num_threads)
    policy = load_policy(checkpoint_dir(item.policy_in, data), section.device)
    tasks = resolve_tasks(params.env)
    check_policy_fits_env(policy, params.env, tasks, checkpoint_dir(item.policy_in, data))
    demos = demos or buffer_dir(item.demos, data)
    source = None if item.buffer_in == item.demos else buffer_dir(item.buffer_in, data)
    if source is not None:
        check_snapshot_fits_env(source, read_manifest(source), params.env)
    d_rl, filtered = open_d_rl(params, source)
    size, cameras = params.env.image_size, tuple(params.env.cameras)
    meta = {"stage": "ire", "kind": item.kind, "round": round_name, "policy_in": item.policy_in,
            "buffer_in": item.buffer_in}
    if item.kind == "sl":
        table, manifest = load_snapshot(demos, tasks)
        check_snapshot_fits_env(demos, manifest, params.env)
        rl_table = d_rl.step_table(cameras, (size, size, 3)) if len(d_rl) else None
        result, fraction = run_sl_round(policy, table, rl_table, params, round_name)
        summary = {"final_loss": result.final_loss, "steps": params.ire.sl_steps, "rl_fraction": fraction,
                   "d_rl": d_rl.stats(), "skipped_batches": result.skipped_batches}
    else:
        result = run_rl_round(policy, d_rl, params, round_name, item.kind)
        summary = {"successes": len(result.successes), "d_rl": d_rl.stats(), "iterations": params.ire.rl_iterations,
                   "final": result.curve[-1] if result.curve else None}
        echo_json({"round": round_name, **result.counters})
    d_rl_info = {"key": params.ire.d_rl_key, "capacity": params.ire.d_rl_capacity}
    with outputs:  # checkpoint, D_RL and curve: all or none
        write_checkpoint(checkpoint_dir(round_name, data), policy, {**meta, **summary})
        write_round_buffer(data, round_name, d_rl, source, filtered,
                           {"source": "iRe-VLA D_RL", **meta, "d_rl": d_rl_info}, cameras, size)
        write_json_atomic(curve or curve_path(data, round_name), result.curve)
    echo_json({**meta, **{k: v for k, v in summary.items() if k != "final"}})


if __name__ == "__main__":
    run(app, __spec__.name)
