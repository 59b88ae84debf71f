"""lerobot's policy folder <-> SOP checkpoint, both ways, through lerobot's own save and load code.

    sop policy import-lerobot --folder DIR --out CKPT [--version 0] [--tasks a,b] [--warm_start true]
    sop policy export-lerobot --checkpoint CKPT --out DIR

A lerobot policy folder (what `lerobot-train` writes and `PreTrainedPolicy.from_pretrained` reads) holds
`config.json`, `model.safetensors` and the processor pipelines (`policy_preprocessor.json`,
`policy_postprocessor.json` and their statistics). An SOP checkpoint (sop/checkpoint.py) holds the same
weights and config with SOP's statistics in its manifest; the robots and the learner load only that format.

Import reads the folder with lerobot (`PreTrainedConfig.from_pretrained`, the policy class's
`from_pretrained`, `make_pre_post_processors(pretrained_path=...)`) and takes the normalizer's statistics
as SOP's: the state statistics from the STATE / ENV inputs (SOP feeds them one state vector, so they must
agree) and the action's. A VLA's backbone (`vlm_model_name`) must be a local folder (no hub access): its
config and tokenizer files go into the checkpoint, its weights are the folder's `model.safetensors`.

Export writes the folder with lerobot's `save_pretrained` (policy and both pipelines, SOP's statistics in
the normalizer steps); a VLA's backbone folder is written beside it (`vlm_backbone/`) and named in
`config.json` by absolute path, so `from_pretrained` on that folder works offline.
"""

from __future__ import annotations

import copy
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sop.config import parse_config
from sop.episode import ACTION, STATE
from sop.normalization import FeatureStats, NormalizationStats
from sop.policies.lerobot_adapter import (
    FlowWarmStart,
    LeRobotPolicyAdapter,
    lerobot_dataset_stats,
    register_lerobot_plugins,
)

BACKBONE_DIR = "vlm_backbone"


def _as_array(value: Any) -> np.ndarray:
    """A statistic from lerobot (tensor, array or list) as a flat float64 array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array: np.ndarray = np.asarray(value, dtype=np.float64).reshape(-1)
    return array


def _feature_stats(values: Mapping[str, Any], key: str) -> FeatureStats:
    """lerobot's per-feature statistics (any of mean/std/min/max/count) as SOP's complete set."""
    arrays: dict[str, np.ndarray] = {
        name: _as_array(values[name]) for name in ("mean", "std", "min", "max") if name in values
    }
    if not arrays:
        raise ValueError(f"{key}: the folder's normalizer has no mean/std/min/max for it")
    if "mean" not in arrays and {"min", "max"} <= arrays.keys():
        arrays["mean"] = (arrays["min"] + arrays["max"]) / 2.0
    if "std" not in arrays and {"min", "max"} <= arrays.keys():
        arrays["std"] = (arrays["max"] - arrays["min"]) / 2.0
    if "min" not in arrays and {"mean", "std"} <= arrays.keys():
        arrays["min"], arrays["max"] = arrays["mean"] - arrays["std"], arrays["mean"] + arrays["std"]
    missing = {"mean", "std", "min", "max"} - arrays.keys()
    if missing:
        raise ValueError(f"{key}: the folder's normalizer lacks {sorted(missing)}")
    count = values.get("count")
    frames = int(_as_array(count)[0]) if count is not None else 1
    return FeatureStats(
        min=arrays["min"], max=arrays["max"], mean=arrays["mean"], std=arrays["std"], count=max(frames, 1)
    )


def _folder_stats(preprocessor: Any, config: Any) -> NormalizationStats:
    from lerobot.processor import NormalizerProcessorStep

    normalizer = next((s for s in preprocessor.steps if isinstance(s, NormalizerProcessorStep)), None)
    if normalizer is None or not normalizer.stats:
        raise ValueError("the folder's preprocessor has no normalizer statistics; SOP needs them")
    stats = normalizer.stats
    state_keys = [
        k
        for k, f in config.input_features.items()
        if str(getattr(f.type, "value", f.type)) in ("STATE", "ENV") and k in stats
    ]
    action_key = next(iter(config.output_features))
    if not state_keys or action_key not in stats:
        raise ValueError(f"the folder's normalizer has no statistics for a state input or for {action_key!r}")
    state = _feature_stats(stats[state_keys[0]], state_keys[0])
    for key in state_keys[1:]:
        other = _feature_stats(stats[key], key)
        if other.dim != state.dim or not np.allclose(other.mean, state.mean):
            raise ValueError(
                f"{key} and {state_keys[0]} have different statistics; SOP feeds every state input one "
                "vector and cannot import this policy"
            )
    return NormalizationStats(features={STATE: state, ACTION: _feature_stats(stats[action_key], action_key)})


def import_lerobot_policy(
    folder: str | Path,
    *,
    version: int = 0,
    tasks: tuple[str, ...] = (),
    warm_start: FlowWarmStart | None = None,
) -> LeRobotPolicyAdapter:
    """An SOP policy around the lerobot policy saved in `folder` (read offline)."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    directory = Path(folder)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: no config.json; not a lerobot policy folder")
    register_lerobot_plugins()
    config = PreTrainedConfig.from_pretrained(str(directory))
    backbone = getattr(config, "vlm_model_name", None)
    if isinstance(backbone, str):
        if not Path(backbone).is_dir():
            raise FileNotFoundError(
                f"{directory}: vlm_model_name {backbone!r} is not a local folder; download the backbone's "
                "config and tokenizer files into a folder and name it in config.json (no hub access here)"
            )
        config.load_vlm_weights = False  # the backbone's weights are in the folder's model.safetensors
    policy = get_policy_class(config.type).from_pretrained(str(directory), config=config)
    preprocessor, _ = make_pre_post_processors(config, pretrained_path=str(directory))
    return LeRobotPolicyAdapter(
        policy, _folder_stats(preprocessor, config), version, tasks=tasks, warm_start=warm_start
    )


def export_lerobot_policy(policy: LeRobotPolicyAdapter, folder: str | Path) -> Path:
    """Write `policy` as a lerobot policy folder (a new directory)."""
    from lerobot.policies.factory import make_pre_post_processors

    directory = Path(folder)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory}: already exists and is not empty; choose a new folder")
    directory.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(policy.lerobot_config)
    backbone = getattr(config, "vlm_model_name", None)
    if isinstance(backbone, str) and Path(backbone).is_dir():
        target = shutil.copytree(backbone, directory / BACKBONE_DIR)
        config.vlm_model_name = str(Path(target).resolve())
    network = copy.copy(policy.network)
    network.config = config
    network.save_pretrained(directory)
    preprocessor, postprocessor = make_pre_post_processors(
        config, dataset_stats=lerobot_dataset_stats(policy.stats, config)
    )
    preprocessor.save_pretrained(directory)
    postprocessor.save_pretrained(directory)
    return directory


# ---- commands --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportPolicyConfig:
    folder: str = field(
        default="", metadata={"help": "lerobot policy folder (config.json, model.safetensors)"}
    )
    out: str = field(default="", metadata={"help": "SOP checkpoint directory to write"})
    version: int = field(default=0, metadata={"help": "the checkpoint's version"})
    tasks: list[str] = field(default_factory=list, metadata={"help": "task ids the policy was trained on"})
    warm_start: bool = field(
        default=False, metadata={"help": "flow-matching warm starts (RTI) with the default FlowWarmStart"}
    )

    def __post_init__(self) -> None:
        for name in ("folder", "out"):
            if not getattr(self, name):
                raise ValueError(f"{name}: is required")


@dataclass(frozen=True)
class ExportPolicyConfig:
    checkpoint: str = field(
        default="", metadata={"help": "SOP checkpoint (directory or file) of a lerobot policy"}
    )
    out: str = field(default="", metadata={"help": "new lerobot policy folder to write"})

    def __post_init__(self) -> None:
        for name in ("checkpoint", "out"):
            if not getattr(self, name):
                raise ValueError(f"{name}: is required")


def import_main(argv: list[str]) -> int:
    """`sop policy import-lerobot`: wrap a lerobot policy folder as an SOP checkpoint."""
    from sop.checkpoint import CheckpointError

    config = parse_config(ImportPolicyConfig, argv)
    try:
        policy = import_lerobot_policy(
            config.folder,
            version=config.version,
            tasks=tuple(config.tasks),
            warm_start=FlowWarmStart() if config.warm_start else None,
        )
    except ValueError as exc:  # statistics SOP cannot hold, a config lerobot refuses
        raise CheckpointError(f"{config.folder}: {exc}") from None
    out = policy.save(config.out)
    print(f"wrote {policy.lerobot_config.type} policy from {config.folder} as SOP checkpoint {out}")
    return 0


def export_main(argv: list[str]) -> int:
    """`sop policy export-lerobot`: write an SOP checkpoint of a lerobot policy as a lerobot folder."""
    from sop.checkpoint import CheckpointError
    from sop.policies import load_policy

    config = parse_config(ExportPolicyConfig, argv)
    policy = load_policy(config.checkpoint)
    if not isinstance(policy, LeRobotPolicyAdapter):
        raise CheckpointError(
            f"{config.checkpoint}: holds a {policy.policy_type!r} policy; only lerobot policies export to "
            "lerobot's folder format"
        )
    out = export_lerobot_policy(policy, config.out)
    print(f"wrote {config.checkpoint} as lerobot policy folder {out}", file=sys.stdout)
    return 0
