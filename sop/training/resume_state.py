"""Trainer resume state on disk: the one layout `sop train bc` and the cloud learner both write and read.

A trainer's state (weights, EMA, optimizer moments, schedule position, RNG states) is tensors plus JSON
(`BCTrainer.training_state()`). It is stored in a directory as

    training_state.json                      the JSON part, plus `tensors_file` and `tensors_sha256`
    training_state.<step:09d>.safetensors    the tensors

`sop train bc` keeps it in its output directory and rewrites it every `save_every` steps; the cloud learner
writes it into each published checkpoint version (`cloud_learner/checkpoint_store.py`). Saving is crash-safe
on its own: the tensors go to a new step-named file first, then the JSON naming that file (and its hash) is
renamed into place, which is the commit; older tensor files are removed only after that. A reader checks the
hash, so a tensor file altered or swapped after the fact is refused rather than resumed from.

Learners before this module wrote `trainer_state.safetensors` + `trainer_state.json` (no hash) into each
checkpoint version; `load_training_state` still reads that layout so such a run directory resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import torch
from safetensors.torch import load_file, save

from sop.checkpoint import CheckpointError, weights_sha256
from sop.durable_files import write_atomically, write_json_atomically

STATE_JSON: Final = "training_state.json"
TENSORS_GLOB: Final = "training_state.*.safetensors"
# The learner's layout before this module (read only).
LEGACY_TENSORS: Final = "trainer_state.safetensors"
LEGACY_JSON: Final = "trainer_state.json"


def save_training_state(directory: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write `tensors` and `meta` into `directory` (created if needed), replacing any earlier state there."""
    directory.mkdir(parents=True, exist_ok=True)
    tensor_name = f"training_state.{int(meta.get('step', 0)):09d}.safetensors"
    document = dict(meta, tensors_file=tensor_name, tensors_sha256=weights_sha256(tensors))
    write_atomically(directory / tensor_name, save(tensors), durable=True, private=True)
    write_json_atomically(
        directory / STATE_JSON, document, durable=True, private=True, indent=1, sort_keys=True
    )
    for old in directory.glob(TENSORS_GLOB):
        if old.name != tensor_name:
            old.unlink(missing_ok=True)


def load_training_state(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The state saved in `directory`, or None when there is none; CheckpointError when it is inconsistent."""
    json_path = directory / STATE_JSON
    if not json_path.is_file():
        return _load_legacy(directory)
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{json_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("tensors_file"), str):
        raise CheckpointError(f"{json_path}: field 'tensors_file' is missing")
    tensor_path = directory / Path(meta["tensors_file"]).name
    if not tensor_path.is_file():
        raise CheckpointError(f"{tensor_path}: named by {json_path.name} but missing")
    tensors = load_file(tensor_path)
    if weights_sha256(tensors) != meta.get("tensors_sha256"):
        raise CheckpointError(
            f"{tensor_path}: its sha256 does not match {json_path.name}; the file was altered"
        )
    return tensors, meta


def _load_legacy(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The learner's earlier layout (`trainer_state.*`), or None when it is not there either."""
    tensor_path, json_path = directory / LEGACY_TENSORS, directory / LEGACY_JSON
    if not tensor_path.is_file() or not json_path.is_file():
        return None
    try:
        meta = json.loads(json_path.read_text())
        tensors = load_file(tensor_path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}: training state cannot be read ({exc})") from None
    return tensors, meta
