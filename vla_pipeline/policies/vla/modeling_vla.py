"""`VLAPolicy`: images + instruction + proprio -> a Gaussian over a chunk of K actions, and a value.

Tokens (Octo-style): vision tokens from a transformers vision encoder shared by every camera
(the cells of its last feature map, or spatial-softmax keypoints of it, each with a learned
position-and-camera embedding), text tokens from a transformers T5 encoder, one proprio
token, and two learned readout tokens.
A small transformer fuses them; the action head reads the action readout, the critic the
value readout. Proprio/action normalisation statistics are buffers, so they travel inside
the safetensors checkpoint.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, ByT5Tokenizer, PreTrainedModel, T5Config, T5EncoderModel
from transformers.utils import ModelOutput

from vla_pipeline import constants as C
from vla_pipeline.policies.distributions import step_log_probs
from vla_pipeline.policies.vla.configuration_vla import VLAConfig

LOG_STD_MIN, LOG_STD_MAX = -5.0, 1.0


@dataclass
class VLAOutput(ModelOutput):
    action_mean: torch.Tensor = None  # (B, K, A), normalised action space
    action_log_std: torch.Tensor = None  # (K, A)
    aux_state: torch.Tensor = None  # (B, 6) predicted object + goal xyz (normalised), if the head exists
    value: torch.Tensor = None  # (B,)


def tokenize_instructions(instructions: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    tokenizer = ByT5Tokenizer()  # byte-level: no vocabulary download
    enc = tokenizer(list(instructions), padding="max_length", truncation=True, max_length=max_length)
    return np.asarray(enc["input_ids"], np.int64), np.asarray(enc["attention_mask"], np.int64)


def build_vision_encoder(vision_config: dict) -> nn.Module:
    cfg = dict(vision_config)
    model_type = cfg.pop("model_type")
    return AutoModel.from_config(AutoConfig.for_model(model_type, **cfg))


def build_text_encoder(text_config: dict) -> nn.Module:
    cfg = dict(text_config)
    cfg.pop("model_type", None)
    return T5EncoderModel(T5Config(**cfg))


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


def coordinate_planes(batch: int, height: int, width: int, device) -> torch.Tensor:
    """(batch, 2, H, W): x and y in [-1, 1] (CoordConv): lets convolutions know where they are."""
    ys = torch.linspace(-1.0, 1.0, height, device=device)
    xs = torch.linspace(-1.0, 1.0, width, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y]).expand(batch, -1, -1, -1)


class SpatialSoftmax(nn.Module):
    """Keypoints from a feature map: the expected (x, y) of a softmax over each learned map.

    Precise positions of small things (a goal marker) survive however coarse the map is,
    which is what a few pooled tokens lose (robomimic / Levine et al. 2016).
    """

    def __init__(self, channels: int, keypoints: int):
        super().__init__()
        self.maps = nn.Conv2d(channels, keypoints, kernel_size=1)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, keypoints, 2) in [-1, 1]."""
        n, _, h, w = features.shape
        attention = (self.maps(features).flatten(2) / self.log_temperature.exp()).softmax(-1)
        coords = coordinate_planes(1, h, w, features.device)[0].flatten(1).T  # (h*w, 2)
        return attention @ coords


class VLAPolicy(PreTrainedModel):
    config_class = VLAConfig
    base_model_prefix = "vla"
    main_input_name = "images"

    def __init__(self, config: VLAConfig):
        super().__init__(config)
        d = config.d_model
        self.vision = build_vision_encoder(config.vision_config)
        self.text = build_text_encoder(config.text_config)
        channels = 3 + (2 if config.coord_channels else 0)
        with torch.no_grad():  # the feature map's shape decides the tokens (eval: BatchNorm on one image)
            self.vision.eval()
            probe = self.vision(pixel_values=torch.zeros(1, channels, config.image_size, config.image_size))
            self.vision.train()
        feature_map = probe.last_hidden_state
        vision_dim = feature_map.shape[1] if feature_map.ndim == 4 else feature_map.shape[-1]
        self.vision_proj = nn.Linear(vision_dim, d)
        if config.vision_tokens == "keypoints":
            if feature_map.ndim != 4:
                raise ValueError("keypoint tokens need a convolutional vision encoder (a spatial feature map)")
            self.keypoint_layer = SpatialSoftmax(vision_dim, config.keypoints)
            self.keypoint_proj = mlp(2, d, d)
            per_view = config.keypoints + 1  # keypoints + the pooled feature vector
        else:
            per_view = feature_map.shape[2] * feature_map.shape[3] if feature_map.ndim == 4 else feature_map.shape[1]
        self.vision_pos = nn.Parameter(torch.zeros(1, len(config.cameras) * per_view, d))
        self.text_proj = nn.Linear(self.text.config.d_model, d)
        self.proprio_proj = mlp(config.proprio_input_dim, d, d)
        # Readout tokens: [action, value] (+ [aux] with an auxiliary state head).
        self.readouts = nn.Parameter(torch.zeros(1, 3 if config.aux_state else 2, d))
        self.type_embed = nn.Parameter(torch.zeros(4, d))  # vision, text, proprio, readout
        layer = nn.TransformerEncoderLayer(d, config.fusion_heads, config.fusion_ff, config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.fusion = nn.TransformerEncoder(layer, config.fusion_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(d)
        self.action_head = mlp(d, d, config.chunk_len * config.action_dim)
        self.value_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        if config.aux_state:
            # Training-time target only: the object and goal positions the pixels must be read for.
            self.aux_head = mlp(d, d, C.PRIVILEGED_DIM)
            self.register_buffer("aux_mean", torch.zeros(C.PRIVILEGED_DIM))
            self.register_buffer("aux_std", torch.ones(C.PRIVILEGED_DIM))
        if config.act_on_estimate:
            if not config.aux_state:
                raise ValueError("act_on_estimate needs the aux state head (policy.aux_state_weight > 0)")
            # Why: the aux readout places the pick-place puck to ~0.6 cm, yet the cloned actions
            # close the fingers 1-2 cm off it, where the expert's own grasp fails (README).
            self.estimate_to_action = mlp(C.PRIVILEGED_DIM + config.proprio_input_dim, d, d)
        self.action_log_std = nn.Parameter(torch.full((config.chunk_len, config.action_dim), float(config.init_log_std)))
        # Normalisation statistics (set from data by `set_normalization`).
        self.register_buffer("proprio_mean", torch.zeros(config.proprio_input_dim))
        self.register_buffer("proprio_std", torch.ones(config.proprio_input_dim))
        self.register_buffer("action_mean", torch.zeros(config.action_dim))
        self.register_buffer("action_std", torch.ones(config.action_dim))
        ids, mask = tokenize_instructions(config.instructions or [""], config.text_max_length)
        self.register_buffer("instruction_ids", torch.from_numpy(ids))
        self.register_buffer("instruction_mask", torch.from_numpy(mask))
        nn.init.normal_(self.vision_pos, std=0.02)
        nn.init.normal_(self.readouts, std=0.02)
        nn.init.normal_(self.type_embed, std=0.02)
        # Small last layers: the initial chunk mean is ~0 and the critic starts near 0.
        small_last = [self.action_head, self.value_head] + ([self.estimate_to_action] if config.act_on_estimate else [])
        for head in small_last:
            nn.init.zeros_(head[-1].bias)
            head[-1].weight.data.mul_(0.1)
        if config.freeze_text:
            self.text.requires_grad_(False)
        self._instruction_cache = None  # a dict inside `instruction_cache()`
        self.post_init()

    # transformers calls this for weights missing from a checkpoint; our own init is in __init__.
    def _init_weights(self, module):
        pass

    # ------------------------------------------------------------------ encoders
    def _vision_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, H, W) -> (B, V * tokens per view, d): one shared encoder for all cameras."""
        batch, views = pixels.shape[:2]
        flat = pixels.flatten(0, 1)
        if self.config.coord_channels:
            flat = torch.cat([flat, coordinate_planes(flat.shape[0], *flat.shape[2:], flat.device)], 1)
        hidden = self.vision(pixel_values=flat).last_hidden_state
        if self.config.vision_tokens == "keypoints":
            keypoints = self.keypoint_proj(self.keypoint_layer(hidden))
            pooled = self.vision_proj(hidden.mean((2, 3))).unsqueeze(1)
            tokens = torch.cat([pooled, keypoints], 1)
        else:
            if hidden.ndim == 4:  # CNN: (N, C, h, w) -> (N, h*w, C)
                hidden = hidden.flatten(2).transpose(1, 2)
            tokens = self.vision_proj(hidden)
        return tokens.reshape(batch, views * tokens.shape[1], tokens.shape[2])

    def _text_tokens(self, task_index, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode instructions; with `task_index`, each distinct instruction is encoded once."""
        if input_ids is None:
            unique, inverse = torch.unique(task_index, return_inverse=True)
            cache = self._instruction_cache if not (self.training or torch.is_grad_enabled()) else None
            key = tuple(unique.tolist())
            encoded = cache.get(key) if cache is not None else None
            if encoded is None:
                encoded = self._encode_text(self.instruction_ids[unique], self.instruction_mask[unique])
                if cache is not None:
                    cache[key] = encoded
            hidden, mask = encoded
            return hidden[inverse], mask[inverse]
        return self._encode_text(input_ids, attention_mask)

    @contextlib.contextmanager
    def instruction_cache(self):
        """While acting with fixed weights, reuse the text encoding of each set of instructions.

        Keyed by the exact set a batch holds, so a reused encoding is the very computation the
        batch would repeat: outputs stay bit-identical. Only used in eval mode without grad.
        """
        previous, self._instruction_cache = self._instruction_cache, {}
        try:
            yield
        finally:
            self._instruction_cache = previous

    def _encode_text(self, input_ids, attention_mask):
        hidden = self.text_proj(self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state)
        if self.config.text_tokens == "pooled":  # one token: much cheaper fusion on CPU
            weights = attention_mask.unsqueeze(-1).float()
            hidden = (hidden * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp_min(1.0)
            attention_mask = torch.ones(hidden.shape[0], 1, dtype=attention_mask.dtype, device=hidden.device)
        return hidden, attention_mask

    def preprocess_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, V, H, W, 3) -> float (B, V, 3, H, W) centred around 0."""
        if images.ndim != 5 or images.shape[1] != len(self.config.cameras):
            raise ValueError(f"expected images (B, {len(self.config.cameras)} cameras, H, W, 3), "
                             f"got {tuple(images.shape)}")
        return (images.permute(0, 1, 4, 2, 3).float() / 255.0 - 0.5) / 0.25

    def proprio_features(self, proprio, state=None):
        """The low-dimensional input: proprio, plus object and goal xyz for a privileged policy.

        Works on numpy arrays (normalisation statistics) and tensors alike.
        """
        if not self.config.privileged_state:
            return proprio
        if state is None:
            raise ValueError("this policy was built with privileged_state: it needs the MetaWorld state")
        parts = [proprio, self.privileged_targets(state)]
        return torch.cat(parts, -1) if torch.is_tensor(proprio) else np.concatenate(parts, -1)

    def normalize_proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        return (proprio - self.proprio_mean) / self.proprio_std

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_mean) / self.action_std

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return actions * self.action_std + self.action_mean

    def privileged_targets(self, state):
        """Object and goal xyz from MetaWorld's state (numpy or tensor): the auxiliary target."""
        parts = [state[:, a:b] for a, b in C.PRIVILEGED_SLICES]
        return torch.cat(parts, -1) if torch.is_tensor(state) else np.concatenate(parts, -1)

    @torch.no_grad()
    def set_normalization(self, proprio: np.ndarray, actions: np.ndarray, states: np.ndarray | None = None,
                          min_std: float = 1e-2) -> None:
        stats = [("proprio", proprio), ("action", actions)]
        if self.config.aux_state and states is not None:
            stats.append(("aux", self.privileged_targets(states)))
        for name, values in stats:
            values = torch.as_tensor(np.asarray(values, np.float64))
            getattr(self, f"{name}_mean").copy_(values.mean(0))
            getattr(self, f"{name}_std").copy_(values.std(0).clamp_min(min_std))

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: torch.Tensor,
        proprio: torch.Tensor,
        task_index: Optional[torch.Tensor] = None,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        pixels: Optional[torch.Tensor] = None,
        state: Optional[torch.Tensor] = None,
    ) -> VLAOutput:
        """`images` uint8 (B,V,H,W,3) (or ready `pixels`); text by `task_index` or token ids;
        `state` (B, 39) is read only by a privileged policy."""
        readouts = self.readout_tokens(images, proprio, task_index, input_ids, attention_mask, pixels, state)
        return self.heads(readouts)

    def readout_tokens(self, images, proprio, task_index=None, input_ids=None, attention_mask=None,
                       pixels=None, state=None) -> torch.Tensor:
        """The trunk: all inputs -> the fused readout tokens (B, readouts, d): [action, value(, aux)].

        Everything the heads read; CO-RFT caches it once per frame to train heads on a frozen trunk.
        """
        if pixels is None:
            pixels = self.preprocess_images(images)
        batch = pixels.shape[0]
        vis = self._vision_tokens(pixels) + self.vision_pos + self.type_embed[0]
        txt, attention_mask = self._text_tokens(task_index, input_ids, attention_mask)
        txt = txt + self.type_embed[1]
        low_dim = self.proprio_features(proprio.float(), None if state is None else state.float())
        low_dim = self.normalize_proprio(low_dim)
        pro = self.proprio_proj(low_dim).unsqueeze(1) + self.type_embed[2]
        read = self.readouts.expand(batch, -1, -1) + self.type_embed[3]
        tokens = torch.cat([vis, txt, pro, read], dim=1)
        pad = torch.zeros(batch, tokens.shape[1], dtype=torch.bool, device=tokens.device)
        pad[:, vis.shape[1]:vis.shape[1] + txt.shape[1]] = attention_mask == 0
        fused = self.final_norm(self.fusion(tokens, src_key_padding_mask=pad))
        readouts = fused[:, -self.readouts.shape[1]:]
        return self._act_on_estimate(readouts, low_dim) if self.config.act_on_estimate else readouts

    def _act_on_estimate(self, readouts: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """Add the aux head's object/goal estimate (normalised) and the normalised proprio to the
        action token: the low-dimensional path a proportional controller would use."""
        estimate = self.aux_head(readouts[:, -1])
        action = readouts[:, 0] + self.estimate_to_action(torch.cat([estimate, proprio], -1))
        return torch.cat([action.unsqueeze(1), readouts[:, 1:]], 1)

    def action_chunk_mean(self, action_token: torch.Tensor) -> torch.Tensor:
        """The action readout (B, d) -> the chunk mean (B, K, A) in normalised action units."""
        return self.action_head(action_token).view(action_token.shape[0], self.config.chunk_len,
                                                   self.config.action_dim)

    def heads(self, readouts: torch.Tensor) -> VLAOutput:
        """Fused readout tokens -> action chunk mean, log-std, value (and the aux state)."""
        action_token, value_token = readouts[:, 0], readouts[:, 1]
        if self.config.value_stop_gradient:
            value_token = value_token.detach()
        mean = self.action_chunk_mean(action_token)
        value = self.value_head(value_token).squeeze(-1)
        log_std = self.action_log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        aux = self.aux_head(readouts[:, -1]) if self.config.aux_state else None
        return VLAOutput(action_mean=mean, action_log_std=log_std, value=value, aux_state=aux)

    # ------------------------------------------------------------------ acting
    def obs_to_tensors(self, obs: dict) -> dict:
        device = self.action_log_std.device
        tensors = {
            "images": torch.as_tensor(np.asarray(obs[C.OBS_IMAGE]), device=device),
            "proprio": torch.as_tensor(np.asarray(obs[C.OBS_PROPRIO], np.float32), device=device),
            "task_index": torch.as_tensor(np.asarray(obs[C.OBS_TASK_INDEX], np.int64), device=device),
        }
        if C.OBS_STATE in obs:
            tensors["state"] = torch.as_tensor(np.asarray(obs[C.OBS_STATE], np.float32), device=device)
        return tensors

    @torch.no_grad()
    def act(self, obs: dict, deterministic: bool = True, generator: Optional[torch.Generator] = None,
            with_log_probs: bool = False) -> dict:
        """Batched action chunks for env observations; returns numpy arrays.

        The Gaussian sample lives in normalised action space and is scored unclipped; only
        the executed actions are clipped to [-1, 1] (CleanRL's convention).
        """
        out = self(**self.obs_to_tensors(obs))
        mean, log_std = out.action_mean, out.action_log_std
        if deterministic:
            sample = mean
        else:
            noise = torch.randn(mean.shape, generator=generator).to(mean.device)  # CPU RNG: same draws on any device
            sample = mean + log_std.exp() * noise
        actions = self.unnormalize_actions(sample).clamp(-1.0, 1.0)
        result = {"actions": actions.cpu().numpy(), "actions_normalized": sample.cpu().numpy(),
                  "value": out.value.cpu().numpy()}
        if with_log_probs:
            result["step_log_probs"] = step_log_probs(mean, log_std, sample).cpu().numpy()
        return result
