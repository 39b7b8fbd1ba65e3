"""Policy checkpoints: `config.json` + `model.safetensors` (+ `training_state.json`).

Loading never unpickles and never runs remote code: the config is plain JSON, checked for
our model type, the weights are safetensors, and every tensor name and shape must match
the model the config describes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from vla_pipeline.constants import TRAINING_STATE_FILE
from vla_pipeline.errors import PipelineError
from vla_pipeline.io import read_json, write_json_atomic
from vla_pipeline.policies.vla import VLAConfig, VLAPolicy

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def check_finite(policy: torch.nn.Module) -> None:
    for name, tensor in policy.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise PipelineError(f"refusing to save a diverged model: '{name}' has non-finite values")


def check_loadable_values(weights: dict, weights_path: Path) -> None:
    """A diverged or corrupted checkpoint is refused when loaded, naming its file: a NaN/inf
    weight, or an action scale (`action_std`, what normalised actions are divided by and
    multiplied with) that is not a positive finite number."""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise PipelineError(f"{weights_path}: tensor '{name}' has non-finite values (a diverged or corrupted "
                                "checkpoint); retrain it or restore it (`dvc checkout`)")
    std = weights.get("action_std")
    if std is not None and not bool((std > 0).all()):
        raise PipelineError(f"{weights_path}: action_std has zero or negative entries ({std.tolist()}): actions "
                            "cannot be scaled with it; retrain it or restore it (`dvc checkout`)")


def _tied_aliases(expected: dict, weights: dict) -> set[str]:
    """Keys save_pretrained drops because they share storage with a saved key (tied embeddings)."""
    saved_ptrs = {expected[k].data_ptr() for k in weights if k in expected}
    return {k for k, t in expected.items() if k not in weights and t.data_ptr() in saved_ptrs}


def save_policy(policy: VLAPolicy, out_dir: Path, training_state: dict) -> None:
    """Write into `out_dir` (the caller makes it atomic with `io.atomic_directory`)."""
    check_finite(policy)
    policy.save_pretrained(out_dir, safe_serialization=True)
    write_json_atomic(out_dir / TRAINING_STATE_FILE, training_state)


def load_policy(path: str | Path, device: str = "cpu") -> VLAPolicy:
    path = Path(path)
    if not path.is_dir():
        raise PipelineError(f"checkpoint not found: {path}")
    raw = read_json(path / CONFIG_FILE, "checkpoint config")
    if not isinstance(raw, dict) or raw.get("model_type") != VLAConfig.model_type:
        found = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        raise PipelineError(f"{path / CONFIG_FILE}: model_type {found!r} is not {VLAConfig.model_type!r}")
    try:
        config = VLAConfig.from_dict(raw)
        policy = VLAPolicy(config)
    except Exception as exc:  # a config we cannot build a model from
        raise PipelineError(f"{path / CONFIG_FILE}: cannot build the model ({exc})") from None
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise PipelineError(f"checkpoint weights missing: {weights_path}")
    try:
        weights = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise PipelineError(f"{weights_path}: unreadable safetensors ({exc}); truncated?") from None
    expected = policy.state_dict()
    missing = sorted(set(expected) - set(weights) - _tied_aliases(expected, weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise PipelineError(
            f"{weights_path} does not match {path / CONFIG_FILE}: "
            f"{len(missing)} missing tensors {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
        )
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise PipelineError(
                f"{weights_path}: tensor '{name}' has shape {tuple(tensor.shape)}, "
                f"the config expects {tuple(expected[name].shape)}"
            )
    check_loadable_values(weights, weights_path)
    policy.load_state_dict(weights, strict=False)  # tied aliases share storage with loaded keys
    return policy.to(device).eval()
