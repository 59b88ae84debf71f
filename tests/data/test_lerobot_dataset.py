from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sop.data.episode_store import EpisodeStore
from sop.data.lerobot_dataset import (
    SIDECAR,
    export_main,
    export_store_to_lerobot,
    import_lerobot_into_store,
    import_main,
)
from sop.data.synthetic_episodes import make_episode
from sop.episode import ACTION, INTERVENTION, POLICY_ACTION, POLICY_VERSION, REWARD, STATE, TIMESTAMP, Source

torch.set_num_threads(1)


def _load(repo_id: str, root: Path):  # type: ignore[no-untyped-def]
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(repo_id, root=root, video_backend="pyav")


def _image_uint8(value: torch.Tensor) -> np.ndarray:
    return np.rint(value.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


@pytest.mark.slow
def test_export_load_and_import_round_trip(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "store", durable=False)
    intervention = np.zeros(12, np.bool_)
    intervention[3:7] = True
    episodes = [
        make_episode(12, seed=1, image_size=(16, 16), intervention=intervention, policy_version=5,
                     instruction="reach the red goal", started_at=10.0),
        make_episode(9, seed=2, image_size=(16, 16), task="push-v3", instruction="push the puck",
                     source=Source.OFFLINE, started_at=20.0),
    ]  # fmt: skip
    for episode in episodes:
        store.append(episode)

    out = tmp_path / "lerobot"
    assert export_main(["--store", str(store.root), "--out", str(out), "--repo_id", "sop/test"]) == 0
    dataset = _load("sop/test", out)
    assert dataset.num_episodes == 2 and len(dataset) == 21
    assert {INTERVENTION, POLICY_ACTION, POLICY_VERSION}.issubset(dataset.meta.features)
    assert sorted(dataset.meta.tasks.index) == ["push the puck", "reach the red goal"]
    index = 0
    for episode in episodes:
        for t in range(episode.num_steps):
            frame = dataset[index]
            index += 1
            assert frame["task"] == episode.instruction
            assert np.array_equal(frame[STATE].numpy(), episode.steps[STATE][t])
            assert np.array_equal(frame[ACTION].numpy(), episode.steps[ACTION][t])
            assert np.array_equal(frame[POLICY_ACTION].numpy(), episode.steps[POLICY_ACTION][t])
            assert bool(frame[INTERVENTION]) == bool(episode.steps[INTERVENTION][t])
            assert int(frame[POLICY_VERSION]) == int(episode.steps[POLICY_VERSION][t])
            assert np.array_equal(
                _image_uint8(frame["observation.images.top"]), episode.steps["observation.images.top"][t]
            )
    sidecar = [json.loads(line) for line in (out / SIDECAR).read_text().splitlines()]
    assert [row["episode_id"] for row in sidecar] == [e.episode_id for e in episodes]

    imported = EpisodeStore(tmp_path / "imported", durable=False)
    result = import_lerobot_into_store(out, "sop/test", imported)
    assert (result.episodes, result.frames, result.skipped) == (2, 21, 0)
    for episode in episodes:
        back = imported.get(episode.episode_id)
        assert back.source == Source.OFFLINE and back.task == episode.task
        assert back.instruction == episode.instruction and back.outcome == episode.outcome
        for key in (
            STATE,
            ACTION,
            POLICY_ACTION,
            INTERVENTION,
            POLICY_VERSION,
            REWARD,
            "observation.images.top",
        ):
            assert np.array_equal(back.steps[key], episode.steps[key]), key
        assert np.allclose(back.steps[TIMESTAMP], episode.steps[TIMESTAMP], atol=1e-5)
    # Importing again adds nothing (ids are preserved), and the CLI maps instructions to task ids.
    assert import_lerobot_into_store(out, "sop/test", imported).skipped == 2
    args = ["--root", str(out), "--repo_id", "sop/test", "--store", str(tmp_path / "cli"), "--task", "t"]
    assert import_main([*args, "--task_map", "{push the puck: push-other}"]) == 0
    by_instruction = {i.instruction: i.task for i in EpisodeStore(tmp_path / "cli").list()}
    assert by_instruction == {"push the puck": "push-other", "reach the red goal": "reach-v3"}


@pytest.mark.slow
def test_video_export_decodes_within_tolerance_and_mixed_shapes_are_refused(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "store", durable=False)
    episode = make_episode(6, image_size=(32, 32))
    smooth = np.zeros((6, 32, 32, 3), np.uint8)
    smooth[..., 0] = np.arange(32, dtype=np.uint8)[None, None, :] * 6
    smooth[..., 1] = (np.arange(6, dtype=np.uint8) * 30)[:, None, None]
    episode.steps["observation.images.top"] = smooth
    store.append(episode)
    out = tmp_path / "video"
    export_store_to_lerobot(store, out, "sop/video", use_videos=True)
    dataset = _load("sop/video", out)
    for t in range(6):
        decoded = _image_uint8(dataset[t]["observation.images.top"]).astype(int)
        assert np.abs(decoded - smooth[t]).mean() < 4, t
    store.append(make_episode(4, image_size=(8, 8), seed=3, started_at=2e9))
    with pytest.raises(ValueError, match=r"observation\.images\.top"):
        export_store_to_lerobot(store, tmp_path / "mixed", "sop/mixed")
    with pytest.raises(FileExistsError):
        export_store_to_lerobot(store, out, "sop/video")
