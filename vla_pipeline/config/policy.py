"""params.yaml sections of the policy's shape: `policy` with its `vision` and `text` parts."""

from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import Field, model_validator

from vla_pipeline.config.base import Section


class VisionConfig(Section):
    pretrained: Optional[str] = None  # local path or hub id of a transformers vision model
    embedding_size: int = Field(32, ge=1)
    hidden_sizes: list[int] = Field(default_factory=lambda: [32, 64, 128, 256], min_length=1)
    depths: list[int] = Field(default_factory=lambda: [1, 1, 1, 1], min_length=1)
    coord_channels: bool = False  # append x/y coordinate planes to the pixels (CoordConv)
    # What the fusion gets per camera: the last feature map as a grid of tokens, or
    # spatial-softmax keypoints (expected x/y of `keypoints` learned feature maps, robomimic-style).
    tokens: Literal["grid", "keypoints"] = "grid"
    keypoints: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _same_length(self) -> "VisionConfig":
        if len(self.hidden_sizes) != len(self.depths):
            raise ValueError("hidden_sizes and depths must have the same length")
        if min(self.hidden_sizes) < 1 or min(self.depths) < 1:
            raise ValueError("hidden_sizes and depths must be positive")
        return self


class TextConfig(Section):
    pretrained: Optional[str] = None  # local path or hub id of a T5-style encoder
    d_model: int = Field(64, ge=8)
    num_layers: int = Field(1, ge=1)
    num_heads: int = Field(4, ge=1)
    max_length: int = Field(48, ge=4)
    tokens: Literal["pooled", "all"] = "pooled"  # fuse one pooled token or every byte token
    freeze: bool = False


class PolicyConfig(Section):
    """The VLA's shape: what `VLAConfig` is built from."""

    chunk_len: int = Field(4, ge=1, le=64)
    d_model: int = Field(128, ge=8)
    fusion_layers: int = Field(2, ge=1)
    fusion_heads: int = Field(4, ge=1)
    fusion_ff: int = Field(256, ge=8)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    init_log_std: float = Field(math.log(0.25), ge=-10, le=2)
    value_stop_gradient: bool = True  # critic does not train the shared trunk
    # Diagnosis only, never a default: append the object and goal xyz from MetaWorld's state
    # to the proprio input (PRIVILEGED). Separates "cannot see the goal" from "cannot act".
    privileged_state: bool = False
    # Auxiliary target (not an input): weight of an MSE loss on the object and goal xyz, predicted
    # from the fused tokens by an extra readout, in every cloning loss (SFT, self-BC). 0 = no head.
    aux_state_weight: float = Field(0.0, ge=0.0)
    # The action readout also gets the aux head's object/goal estimate and the proprio (a small
    # MLP added to the action token). Still pixels only at run time; needs aux_state_weight > 0.
    act_on_estimate: bool = False
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()

    @model_validator(mode="after")
    def _heads_divide(self) -> "PolicyConfig":
        if self.d_model % self.fusion_heads:
            raise ValueError("d_model must be divisible by fusion_heads")
        if self.text.d_model % self.text.num_heads:
            raise ValueError("text.d_model must be divisible by text.num_heads")
        if self.act_on_estimate and self.aux_state_weight <= 0:
            raise ValueError("act_on_estimate acts on the aux head's estimate: set aux_state_weight > 0")
        return self
