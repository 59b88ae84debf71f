"""Policies behind one interface (`sop.policies.base.Policy`): SOP's diffusion policy and lerobot adapters.

`load_policy` reads any SOP checkpoint (directory, file or the wire blob) and builds the policy its
manifest names; lerobot is imported only when a checkpoint asks for it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sop.checkpoint import Checkpoint, CheckpointError, checkpoint_from_bytes, load_checkpoint
from sop.policies.base import ActionChunk, Observation, ObservationError, Policy
from sop.policies.configuration_diffusion import (
    ColdStartConfig,
    DDIMColdStartConfig,
    DDIMSamplerConfig,
    DDPMColdStartConfig,
    DDPMSamplerConfig,
    DiffusionPolicyConfig,
    RTISamplerConfig,
    SamplerConfig,
    SamplerKind,
)

__all__ = [
    "ActionChunk",
    "ColdStartConfig",
    "DDIMColdStartConfig",
    "DDIMSamplerConfig",
    "DDPMColdStartConfig",
    "DDPMSamplerConfig",
    "DiffusionPolicyConfig",
    "Observation",
    "ObservationError",
    "Policy",
    "RTISamplerConfig",
    "SamplerConfig",
    "SamplerKind",
    "load_policy",
    "policy_from_checkpoint",
]


def policy_from_checkpoint(
    checkpoint: Checkpoint, sampler: SamplerConfig | None = None, device: str | torch.device = "cpu"
) -> Policy:
    """Build the policy a verified checkpoint describes; `sampler` applies to diffusion policies."""
    policy_type = checkpoint.manifest.policy_type
    if policy_type == "diffusion":
        from sop.policies.modeling_diffusion import DiffusionPolicy

        return DiffusionPolicy.from_checkpoint(checkpoint, sampler, device)
    if policy_type == "lerobot":
        from sop.policies.lerobot_adapter import LeRobotPolicyAdapter

        return LeRobotPolicyAdapter.from_checkpoint(checkpoint, device)
    raise CheckpointError(f"policy_type {policy_type!r} is not one this build knows ('diffusion', 'lerobot')")


def load_policy(
    source: str | Path | bytes,
    sampler: SamplerConfig | None = None,
    device: str | torch.device = "cpu",
    expected_sha256: str | None = None,
) -> Policy:
    """A policy from a checkpoint directory / file, or from the blob received over the wire."""
    if isinstance(source, bytes):
        checkpoint = checkpoint_from_bytes(source, expected_sha256)
    else:
        checkpoint = load_checkpoint(source, expected_sha256)
    return policy_from_checkpoint(checkpoint, sampler, device)
