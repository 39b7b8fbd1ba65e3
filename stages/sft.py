"""DVC stages `sft` and `sft_offline`: supervised warm start of the VLA on a demo snapshot."""

from pathlib import Path

import torch
import typer

from stages.common import PARAMS, echo_json, run, stage_app, user_errors
from vla_pipeline import distributed, preflight
from vla_pipeline.config import load_params
from vla_pipeline.data.snapshot import load_snapshot
from vla_pipeline.envs.tasks import resolve_tasks
from vla_pipeline.errors import PipelineError
from vla_pipeline.evaluation import validation_rollouts
from vla_pipeline.fits import check_snapshot_fits_env
from vla_pipeline.io import StageOutputs, write_json_atomic
from vla_pipeline.outputs import write_checkpoint
from vla_pipeline.policies.factory import build_policy
from vla_pipeline.training.supervised import train_sft

app = stage_app(__doc__)


@app.command()
@user_errors
def sft(
    demos: Path = typer.Option(Path("data/buffers/demos"), help="Demo snapshot to clone."),
    out: Path = typer.Option(Path("data/checkpoints/sft"), help="Checkpoint directory to write."),
    curve: Path = typer.Option(Path("data/metrics/train-sft.json"), help="Loss curve (JSON records)."),
    recipe: str = typer.Option("sft", help="Params section of the training settings: sft, or sft_offline "
                                           "(CO-RFT's small demo set: sft with the keys it names replaced)."),
    params_file: Path = PARAMS,
):
    """Supervised warm start of the VLA on the demo snapshot."""
    params = load_params(params_file)
    params = params.model_copy(update={"sft": params.sft_recipe(recipe)})  # what follows reads params.sft
    preflight.check_devices(params, ("sft.device",))
    distributed.init_from_env(params.sft.device)
    outputs = StageOutputs(out, curve) if distributed.is_main() else None  # writable? checked before the work  # under torchrun: data-parallel ranks (README)
    torch.set_num_threads(distributed.threads_per_rank(params.sft.num_threads))
    tasks = resolve_tasks(params.env)
    table, manifest = load_snapshot(demos, tasks)
    missing = sorted(set(tasks) - set(table.task))
    if missing:
        raise PipelineError(f"{demos} has no demos for tasks {missing}")
    check_snapshot_fits_env(demos, manifest, params.env)
    torch.manual_seed(params.sft.seed)  # the random init is part of the reproducible result
    policy = build_policy(params.policy, params.env, tasks)
    result = train_sft(policy, table, params, validation_rollouts(params) if params.sft.validate_every else None)
    if not distributed.is_main():  # rank 0 writes
        return distributed.shutdown()
    with outputs:  # both or neither
        write_checkpoint(out, policy, {"stage": "sft", "steps": params.sft.steps, "best_step": result.best_step,
                                       "final_loss": result.final_loss, "validation": result.validation,
                                       "skipped_batches": result.skipped_batches, "demos": manifest["tasks"]})
        write_json_atomic(curve, result.curve)
    echo_json({"final_loss": result.final_loss, "best_step": result.best_step, "validation": result.validation,
               "skipped_batches": result.skipped_batches})
    distributed.shutdown()


if __name__ == "__main__":
    run(app, __spec__.name)
