"""DVC stage `offline@<run>`: CO-RFT step 2, chunked offline RL (critic ensemble over chunks,
Cal-QL, TD3+BC) from the imitation checkpoint -> checkpoint (policy, and the critic beside it),
kept at its best validation check. The run's settings come from `offline_runs.<run>`."""

from pathlib import Path

import typer

from stages.common import PARAMS, echo_json, run, stage_app, user_errors
from vla_pipeline import preflight
from vla_pipeline.config import load_params
from vla_pipeline.errors import PipelineError

app = stage_app(__doc__)


@app.command()
@user_errors
def offline(
    run_name: str = typer.Option(..., "--run", help="Run name (a key of `offline_runs` in params.yaml)."),
    policy_in: Path = typer.Option(Path("data/checkpoints/sft-offline"), "--policy",
                                   help="The imitation checkpoint (CO-RFT step 1)."),
    demos: Path = typer.Option(Path("data/buffers/demos-offline"), help="Demo snapshot with a frame at every step."),
    data: Path = typer.Option(Path("data"), help="Root of checkpoints/ and metrics/."),
    params_file: Path = PARAMS,
):
    """CO-RFT step 2: chunked offline RL -> checkpoint (policy + critic) at its best validation check."""
    preflight.check_rendering()  # the validation rollouts render; before the imports below load MuJoCo
    import torch
    from safetensors.torch import save_file

    from vla_pipeline.checkpoint import load_policy
    from vla_pipeline.data.snapshot import load_snapshot
    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.fits import check_policy_fits_env, check_snapshot_fits_env
    from vla_pipeline.io import StageOutputs, write_json_atomic
    from vla_pipeline.outputs import curve_path, write_checkpoint
    from vla_pipeline.evaluation import validation_rollouts
    from vla_pipeline.training.corft.critic import CRITIC_CONFIG_FILE, CRITIC_FILE
    from vla_pipeline.training.corft.loop import train_offline

    params = load_params(params_file)
    cfg = params.offline_run(run_name)
    preflight.check_device(cfg.device, f"offline_runs.{run_name} device")
    outputs = StageOutputs(data / "checkpoints" / run_name, curve_path(data, run_name))  # writable, before the work
    torch.set_num_threads(cfg.num_threads)
    policy = load_policy(policy_in, cfg.device)
    tasks = resolve_tasks(params.env)
    check_policy_fits_env(policy, params.env, tasks, policy_in)
    if cfg.td_chunk > policy.config.chunk_len:
        raise PipelineError(f"offline_runs.{run_name}: td_chunk {cfg.td_chunk} is longer than {policy_in}'s chunk "
                            f"({policy.config.chunk_len})")
    table, manifest = load_snapshot(demos, tasks)
    check_snapshot_fits_env(demos, manifest, params.env)
    validate = validation_rollouts(params, cfg.validation_episodes, desc=f"{run_name} validation")
    result = train_offline(policy, table, cfg, validate)
    meta = {"stage": "offline", "run": run_name, "policy_in": str(policy_in), "offline": cfg.model_dump(),
            "best_step": result.best_step, "validation": result.validation, "transitions": result.transitions,
            "demos": manifest["tasks"]}
    with outputs:  # checkpoint and curve: both or neither
        write_checkpoint(data / "checkpoints" / run_name, policy, meta, {
            CRITIC_FILE: lambda path: save_file(result.training_state(), path),
            CRITIC_CONFIG_FILE: lambda path: write_json_atomic(path, result.critic.describe())})
        write_json_atomic(curve_path(data, run_name), result.curve)
    echo_json({k: meta[k] for k in ("run", "best_step", "validation", "transitions")})


if __name__ == "__main__":
    run(app, __spec__.name)
