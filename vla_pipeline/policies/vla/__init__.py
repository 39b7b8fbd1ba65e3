from transformers import AutoConfig, AutoModel

from vla_pipeline.policies.vla.configuration_vla import VLAConfig
from vla_pipeline.policies.vla.modeling_vla import VLAOutput, VLAPolicy

# Importing the package teaches transformers' Auto classes our model type, so a checkpoint folder
# loads with `AutoModel.from_pretrained(path)` like any hub model (no trust_remote_code: the code
# is this installed package, not the folder). `exist_ok` keeps a re-import harmless.
AutoConfig.register(VLAConfig.model_type, VLAConfig, exist_ok=True)
AutoModel.register(VLAConfig, VLAPolicy, exist_ok=True)

__all__ = ["VLAConfig", "VLAPolicy", "VLAOutput"]
