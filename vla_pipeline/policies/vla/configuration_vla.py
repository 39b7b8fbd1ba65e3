"""`VLAConfig`: everything needed to rebuild the VLA without downloading anything."""

from __future__ import annotations

import math
from typing import Optional

from transformers import PretrainedConfig

from vla_pipeline.constants import ACTION_DIM, PRIVILEGED_DIM, PROPRIO_DIM

BYT5_VOCAB_SIZE = 384  # 256 bytes + 3 specials + 125 sentinels: the offline byte tokenizer


def default_vision_config() -> dict:
    """A small transformers ResNet: ~1k samples/s fwd+bwd at 84 px on 2 CPU threads."""
    return {"model_type": "resnet", "num_channels": 3, "embedding_size": 32,
            "hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 1, 1], "layer_type": "basic",
            "downsample_in_first_stage": False}


def default_text_config() -> dict:
    """A tiny T5 encoder over ByT5 byte tokens (no vocabulary file, works offline)."""
    return {"model_type": "t5", "vocab_size": BYT5_VOCAB_SIZE, "d_model": 64, "d_kv": 16,
            "d_ff": 128, "num_layers": 1, "num_heads": 4, "dropout_rate": 0.0,
            "feed_forward_proj": "relu", "is_encoder_decoder": False, "use_cache": False}


class VLAConfig(PretrainedConfig):
    model_type = "vla_pipeline_vla"

    def __init__(
        self,
        chunk_len: int = 4,
        action_dim: int = ACTION_DIM,
        proprio_dim: int = PROPRIO_DIM,
        image_size: int = 84,
        cameras: Optional[list] = None,
        coord_channels: bool = False,
        vision_tokens: str = "grid",
        keypoints: int = 32,
        privileged_state: bool = False,
        aux_state: bool = False,
        act_on_estimate: bool = False,
        d_model: int = 128,
        fusion_layers: int = 2,
        fusion_heads: int = 4,
        fusion_ff: int = 256,
        dropout: float = 0.0,
        init_log_std: float = math.log(0.25),
        vision_config: Optional[dict] = None,
        text_config: Optional[dict] = None,
        text_max_length: int = 48,
        text_tokens: str = "pooled",
        freeze_text: bool = False,
        value_stop_gradient: bool = True,
        task_names: Optional[list] = None,
        instructions: Optional[list] = None,
        env_spec: Optional[dict] = None,
        **kwargs,
    ):
        self.chunk_len = chunk_len
        self.action_dim = action_dim
        self.proprio_dim = proprio_dim
        self.image_size = image_size
        self.cameras = list(cameras or ["corner4"])  # one view per camera, in this order
        self.coord_channels = coord_channels  # x/y planes appended to the pixels
        self.vision_tokens = vision_tokens  # "grid" (feature map cells) or "keypoints" (spatial softmax)
        self.keypoints = keypoints
        # Diagnosis only: the object and goal xyz from MetaWorld's state join the proprio input.
        self.privileged_state = privileged_state
        # An auxiliary head that predicts the object and goal xyz from the fused tokens (a training
        # target, never an input): it makes the encoder localise what the pixels must show.
        self.aux_state = aux_state
        # The action readout also gets that head's object/goal estimate and the proprio, through a
        # small MLP added to the action token (needs `aux_state`): the policy acts on where it reads
        # the object and goal to be, still from pixels alone.
        self.act_on_estimate = act_on_estimate
        self.d_model = d_model
        self.fusion_layers = fusion_layers
        self.fusion_heads = fusion_heads
        self.fusion_ff = fusion_ff
        self.dropout = dropout
        self.init_log_std = init_log_std
        self.vision_config = vision_config if vision_config is not None else default_vision_config()
        self.text_config = text_config if text_config is not None else default_text_config()
        self.text_max_length = text_max_length
        self.text_tokens = text_tokens  # "pooled" (one token) or "all" (one per byte)
        self.freeze_text = freeze_text
        # The critic reads the fused value token through a stop-gradient: value-loss gradients
        # through the shared trunk wrecked the SFT actor in our first PPO runs (KL ~ 11).
        self.value_stop_gradient = value_stop_gradient
        self.task_names = list(task_names or [])
        self.instructions = list(instructions or [])
        # Camera, image size, render flags, MetaWorld/MuJoCo versions the policy was trained with.
        self.env_spec = dict(env_spec or {})
        super().__init__(**kwargs)

    def to_dict(self) -> dict:
        # A flag that is off stays out of config.json: checkpoints written before it existed are
        # byte-identical to new ones of the same params (DVC keeps their hashes).
        out = super().to_dict()
        if not out.get("act_on_estimate"):
            out.pop("act_on_estimate", None)
        return out

    @property
    def proprio_input_dim(self) -> int:
        return self.proprio_dim + (PRIVILEGED_DIM if self.privileged_state else 0)
