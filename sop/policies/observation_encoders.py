"""Observation encoders: what turns (state, images, instruction) into the U-Net's FiLM condition.

- state: an MLP per observed step;
- images (optional): a small CNN with GroupNorm (batch statistics are meaningless in a 1-robot rollout) and a
  spatial softmax that reduces each feature map to the expected (x, y) of its activation, as in Diffusion
  Policy's ResNet encoder, but small enough for a CPU;
- instruction: a learned projection of the frozen sentence embedding, or a learned per-task embedding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sop.policies.configuration_diffusion import DiffusionPolicyConfig, InstructionEncoderKind
from sop.policies.instruction_encoder import SENTENCE_EMBEDDING_DIM


class StateEncoder(nn.Module):
    def __init__(self, state_dim: int, hidden_dim: int, feature_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(state_dim, hidden_dim),
            nn.Mish(),
            nn.Linear(hidden_dim, feature_dim),
            nn.LayerNorm(feature_dim),
        )

    def forward(self, state: Tensor) -> Tensor:
        """(..., state_dim) normalized state -> (..., feature_dim)."""
        out: Tensor = self.mlp(state)
        return out


class SpatialSoftmax(nn.Module):
    """(B, C, H, W) feature maps -> (B, 2K) expected keypoint coordinates in [-1, 1]."""

    def __init__(self, channels: int, keypoints: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(channels, keypoints, 1)

    def forward(self, features: Tensor) -> Tensor:
        maps = self.project(features)
        batch, keypoints, height, width = maps.shape
        ys = torch.linspace(-1.0, 1.0, height, device=maps.device, dtype=maps.dtype)
        xs = torch.linspace(-1.0, 1.0, width, device=maps.device, dtype=maps.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        weights = torch.softmax(maps.reshape(batch, keypoints, height * width), dim=-1)
        expected_x = (weights * grid_x.reshape(1, 1, -1)).sum(-1)
        expected_y = (weights * grid_y.reshape(1, 1, -1)).sum(-1)
        return torch.cat([expected_x, expected_y], dim=-1)


class ImageEncoder(nn.Module):
    """uint8 (B, H, W, 3) camera frames -> (B, feature_dim)."""

    def __init__(self, channels: tuple[int, ...], num_groups: int, keypoints: int, feature_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 3
        for index, width in enumerate(channels):
            stride = 2 if index < 2 else 1
            layers += [
                nn.Conv2d(previous, width, 3, stride=stride, padding=1),
                nn.GroupNorm(num_groups, width),
                nn.Mish(),
            ]
            previous = width
        self.backbone = nn.Sequential(*layers)
        self.keypoints = SpatialSoftmax(previous, keypoints)
        self.head = nn.Sequential(nn.Linear(2 * keypoints, feature_dim), nn.LayerNorm(feature_dim))

    def forward(self, images: Tensor) -> Tensor:
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        out: Tensor = self.head(self.keypoints(self.backbone(x)))
        return out


class InstructionConditioner(nn.Module):
    """The instruction's share of the condition: projected sentence embedding or learned task embedding."""

    def __init__(self, kind: InstructionEncoderKind, tasks: tuple[str, ...], feature_dim: int) -> None:
        super().__init__()
        self.kind = kind
        self.tasks = tasks
        if kind is InstructionEncoderKind.SENTENCE:
            self.encoder: nn.Module = nn.Sequential(nn.Linear(SENTENCE_EMBEDDING_DIM, feature_dim), nn.Mish())
        else:
            self.encoder = nn.Embedding(len(tasks), feature_dim)

    def forward(self, instruction_input: Tensor) -> Tensor:
        """(B, 384) float embeddings for 'sentence', (B,) long task indices for 'task' -> (B, feature_dim)."""
        out: Tensor = self.encoder(instruction_input)
        return out


def global_condition_dim(config: DiffusionPolicyConfig) -> int:
    per_step = config.state_feature_dim + len(config.cameras) * config.image_feature_dim
    return config.observation_horizon * per_step + config.instruction_feature_dim


class ObservationEncoder(nn.Module):
    """Everything observed -> one (B, global_condition_dim) vector for FiLM."""

    def __init__(self, config: DiffusionPolicyConfig) -> None:
        super().__init__()
        self.config = config
        self.state = StateEncoder(config.state_dim, config.state_hidden_dim, config.state_feature_dim)
        self.images = nn.ModuleDict(
            {
                camera: ImageEncoder(
                    config.image_channels, config.num_groups, config.image_keypoints, config.image_feature_dim
                )
                for camera in config.cameras
            }
        )
        self.instruction = InstructionConditioner(
            config.instruction_encoder, config.tasks, config.instruction_feature_dim
        )

    def forward(self, state: Tensor, images: dict[str, Tensor], instruction_input: Tensor) -> Tensor:
        """state (B, To, D) normalized; images camera -> (B, To, H, W, 3) uint8; instruction as above."""
        batch, steps = state.shape[:2]
        features = [self.state(state)]
        for camera, encoder in self.images.items():
            frames = images[camera]
            encoded = encoder(frames.reshape(batch * steps, *frames.shape[2:]))
            features.append(encoded.reshape(batch, steps, -1))
        per_step = torch.cat(features, dim=-1).reshape(batch, -1)
        return torch.cat([per_step, self.instruction(instruction_input)], dim=-1)
