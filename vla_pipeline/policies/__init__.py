"""Policies. Each lives in its own folder as configuration_* + modeling_* (LeRobot style)."""

from vla_pipeline.policies.vla import VLAConfig, VLAPolicy

POLICY_REGISTRY = {VLAConfig.model_type: (VLAConfig, VLAPolicy)}

__all__ = ["POLICY_REGISTRY", "VLAConfig", "VLAPolicy"]
