from vla_pipeline.policies.vla.configuration_vla import VLAConfig
from vla_pipeline.policies.vla.modeling_vla import VLAOutput, VLAPolicy

__all__ = ["VLAConfig", "VLAPolicy", "VLAOutput"]
