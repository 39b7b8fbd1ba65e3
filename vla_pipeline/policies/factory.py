"""Build a fresh VLA from the `policy` and `env` params sections."""

from __future__ import annotations

from vla_pipeline.config import EnvConfig, PolicyConfig
from vla_pipeline.envs.tasks import instruction_for
from vla_pipeline.errors import PipelineError
from vla_pipeline.policies.vla import VLAConfig, VLAPolicy
from vla_pipeline.policies.vla.configuration_vla import default_text_config, default_vision_config
from vla_pipeline.provenance import env_spec


def _pretrained_config(name_or_path: str, what: str) -> dict:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=False).to_dict()
    except Exception as exc:
        raise PipelineError(f"cannot load the {what} config from {name_or_path!r}: {exc}") from None


def build_policy(policy: PolicyConfig, env: EnvConfig, tasks: list[str]) -> VLAPolicy:
    vision_config = default_vision_config()
    vision_config.update(embedding_size=policy.vision.embedding_size,
                         hidden_sizes=list(policy.vision.hidden_sizes), depths=list(policy.vision.depths),
                         num_channels=3 + (2 if policy.vision.coord_channels else 0))
    text_config = default_text_config()
    text_config.update(d_model=policy.text.d_model, num_layers=policy.text.num_layers,
                       num_heads=policy.text.num_heads, d_kv=policy.text.d_model // policy.text.num_heads,
                       d_ff=2 * policy.text.d_model)
    if policy.vision.pretrained:
        if policy.vision.coord_channels:
            raise PipelineError("policy.vision.coord_channels needs an encoder built from config, "
                                "not policy.vision.pretrained (its stem takes 3 channels)")
        vision_config = _pretrained_config(policy.vision.pretrained, "vision encoder")
    if policy.text.pretrained:
        text_config = _pretrained_config(policy.text.pretrained, "text encoder")
    config = VLAConfig(
        chunk_len=policy.chunk_len, image_size=env.image_size, cameras=list(env.cameras),
        coord_channels=policy.vision.coord_channels, vision_tokens=policy.vision.tokens,
        keypoints=policy.vision.keypoints, privileged_state=policy.privileged_state,
        aux_state=policy.aux_state_weight > 0, act_on_estimate=policy.act_on_estimate, d_model=policy.d_model,
        fusion_layers=policy.fusion_layers, fusion_heads=policy.fusion_heads, fusion_ff=policy.fusion_ff,
        dropout=policy.dropout, init_log_std=policy.init_log_std, value_stop_gradient=policy.value_stop_gradient, vision_config=vision_config,
        text_config=text_config, text_max_length=policy.text.max_length, text_tokens=policy.text.tokens,
        freeze_text=policy.text.freeze, task_names=list(tasks),
        instructions=[instruction_for(t, env.instruction_style) for t in tasks], env_spec=env_spec(env),
    )
    model = VLAPolicy(config)
    if policy.vision.pretrained:
        _load_submodule(model.vision, policy.vision.pretrained, "vision encoder")
    if policy.text.pretrained:
        _load_submodule(model.text, policy.text.pretrained, "text encoder")
    return model


def _load_submodule(module, name_or_path: str, what: str) -> None:
    from transformers import AutoModel

    try:
        pretrained = AutoModel.from_pretrained(name_or_path, trust_remote_code=False, use_safetensors=True)
        module.load_state_dict(pretrained.state_dict(), strict=False)
    except Exception as exc:
        raise PipelineError(f"cannot load the {what} weights from {name_or_path!r}: {exc}") from None
