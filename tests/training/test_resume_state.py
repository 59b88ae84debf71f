"""The one trainer-resume layout: what it writes, that it refuses altered tensors, that old learner runs resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from sop.checkpoint import CheckpointError
from sop.training.resume_state import STATE_JSON, load_training_state, save_training_state


def state(step: int) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    return {"w": torch.full((3,), float(step)), "rng.torch": torch.arange(4)}, {"step": step, "lr": 0.1}


def test_the_latest_save_is_read_back_and_older_tensor_files_are_removed(tmp_path: Path) -> None:
    assert load_training_state(tmp_path) is None
    save_training_state(tmp_path, *state(1))
    save_training_state(tmp_path, *state(2))
    loaded = load_training_state(tmp_path)
    assert loaded is not None
    tensors, meta = loaded
    assert torch.equal(tensors["w"], torch.full((3,), 2.0)) and meta["step"] == 2 and meta["lr"] == 0.1
    assert [p.name for p in tmp_path.glob("training_state.*.safetensors")] == [
        "training_state.000000002.safetensors"
    ]


def test_altered_tensors_are_refused(tmp_path: Path) -> None:
    save_training_state(tmp_path, *state(3))
    meta = json.loads((tmp_path / STATE_JSON).read_text())
    (tmp_path / meta["tensors_file"]).write_bytes(save(state(4)[0]))
    with pytest.raises(CheckpointError, match="sha256"):
        load_training_state(tmp_path)


def test_a_learner_version_written_in_the_earlier_layout_still_resumes(tmp_path: Path) -> None:
    tensors, meta = state(6)
    (tmp_path / "trainer_state.safetensors").write_bytes(save(tensors))
    (tmp_path / "trainer_state.json").write_text(json.dumps(meta))
    loaded = load_training_state(tmp_path)
    assert loaded is not None
    assert torch.equal(loaded[0]["w"], tensors["w"]) and loaded[1] == meta
