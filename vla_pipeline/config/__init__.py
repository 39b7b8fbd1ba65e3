"""One pydantic model per `params.yaml` section.

Unknown keys, wrong types and impossible values fail before any work starts, with one
message naming the file and the dotted key. Stages read only their own sections; the CLI
carries paths and names, never hyper-parameters.

- `base`: the `Section` base model and shared checks;
- `env`: `env` (with `render`, `ray`), `demos` / `offline_demos`, `evaluate`;
- `policy`: `policy` (with `vision`, `text`);
- `training`: `sft` / `sft_offline`, `ppo`, `bc`, `buffer`, `rounds`, `ire`, `ire_rounds`,
  `offline`, `offline_runs`;
- `params`: `Params` (the whole file), `parse_params`, `load_params`.

Validating params imports neither MetaWorld nor any other layer above this one
(task and camera names come from `vla_pipeline.metaworld_names`).
"""

from vla_pipeline.config.base import Section
from vla_pipeline.config.env import DemosConfig, EnvConfig, EvaluateConfig, RayConfig, RenderConfig
from vla_pipeline.config.params import DEFAULT_PARAMS_FILE, ROUND_NAME, SECTIONS, Params, load_params, parse_params
from vla_pipeline.config.policy import PolicyConfig, TextConfig, VisionConfig
from vla_pipeline.config.training import (
    IRE_KINDS, BCConfig, BufferConfig, IreConfig, IreRoundConfig, OfflineConfig, OfflineRunConfig, PPOConfig,
    ReportRow, RoundConfig, SFTConfig,
)

__all__ = [
    "BCConfig", "BufferConfig", "DEFAULT_PARAMS_FILE", "DemosConfig", "EnvConfig", "EvaluateConfig", "IRE_KINDS",
    "IreConfig", "IreRoundConfig", "OfflineConfig", "OfflineRunConfig", "PPOConfig", "Params", "PolicyConfig",
    "ROUND_NAME", "ReportRow", "RayConfig", "RenderConfig", "RoundConfig", "SECTIONS", "SFTConfig", "Section", "TextConfig",
    "VisionConfig", "load_params", "parse_params",
]
