"""The episode store never writes outside its root, and one unreadable entry never makes it unopenable."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from sop.data.episode_store import (
    QUARANTINE_DIR,
    EpisodeNotFoundError,
    EpisodeStore,
    UnsafePathError,
)
from sop.data.synthetic_episodes import make_episode
from sop.episode import (
    ACTION,
    INTERVENTION,
    POLICY_ACTION,
    POLICY_VERSION,
    REWARD,
    STATE,
    TIMESTAMP,
    Episode,
    EpisodeError,
    new_episode_id,
)

HOSTILE_KEYS = [
    "observation.images.x/../../../../outside",
    "observation.images../episodes/zz",
    "observation.images.../../outside",
    "observation.images.top/../../../../../../tmp/sop-outside",
]


def tree(root: Path) -> set[str]:
    """Every path below `root`, relative to it (directories and files)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_nothing_new_outside(base: Path, root: Path, before: set[str]) -> None:
    root_rel = str(root.relative_to(base))
    new = {p for p in tree(base) - before if p != root_rel and not p.startswith(root_rel + os.sep)}
    assert new == set(), f"written outside the store root: {sorted(new)}"


def one_step(camera_key: str = "observation.images.top") -> dict[str, object]:
    return {
        STATE: np.zeros(39, np.float32),
        ACTION: np.zeros(4, np.float32),
        POLICY_ACTION: np.zeros(4, np.float32),
        INTERVENTION: False,
        POLICY_VERSION: np.int64(0),
        TIMESTAMP: 0.0,
        REWARD: np.float32(0.0),
        camera_key: np.zeros((8, 8, 3), np.uint8),
    }


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_append_refuses_a_hostile_camera_key_even_with_validation_bypassed(
    tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "run" / "replay"
    store = EpisodeStore(root, durable=False)
    before = tree(tmp_path)
    episode = make_episode(6)
    episode.steps[key] = episode.steps.pop("observation.images.top")
    with pytest.raises(EpisodeError, match="camera name"):
        store.append(episode)  # validate() refuses it

    monkeypatch.setattr(Episode, "validate", lambda self: None)  # a caller that skips the schema
    with pytest.raises(EpisodeError, match="camera name"):
        store.append(episode)
    assert_nothing_new_outside(tmp_path, root, before)
    assert not Path("/tmp/sop-outside").exists()
    assert len(store) == 0 and os.listdir(root / "episodes") == []
    assert len(EpisodeStore(root, create=False)) == 0  # still opens


def test_append_refuses_a_hostile_episode_id_with_validation_bypassed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "run" / "replay"
    store = EpisodeStore(root, durable=False)
    before = tree(tmp_path)
    monkeypatch.setattr(Episode, "validate", lambda self: None)
    for episode_id in ("../../outside", "../episodes/zz", new_episode_id().upper()):
        with pytest.raises(EpisodeError, match="episode_id"):
            store.append(make_episode(6, episode_id=episode_id))
        with pytest.raises(EpisodeError, match="episode_id"):
            store.begin_episode(episode_id, "robot-1", "reach-v3", "reach")
    assert_nothing_new_outside(tmp_path, root, before)
    assert len(EpisodeStore(root, create=False)) == 0


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_step_by_step_recording_refuses_a_hostile_camera_key(tmp_path: Path, key: str) -> None:
    root = tmp_path / "run" / "spool"
    store = EpisodeStore(root, durable=False)
    before = tree(tmp_path)
    writer = store.begin_episode(new_episode_id(), "robot-1", "reach-v3", "reach", flush_every=1)
    with pytest.raises(EpisodeError, match="camera name"):
        writer.add_step(one_step(key))
    writer.add_step(one_step())  # the writer is still usable with good steps
    info = writer.commit("success")
    assert_nothing_new_outside(tmp_path, root, before)
    assert store.get(info.episode_id).camera_names == ["top"]


def test_partial_operations_refuse_paths_outside_the_partial_directory(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "store", durable=False)
    info = store.append(make_episode(6))
    for name in (f"../episodes/{info.episode_id}", "..", ""):
        with pytest.raises((UnsafePathError, EpisodeNotFoundError)):
            store.discard_partial(name)
        with pytest.raises((UnsafePathError, EpisodeNotFoundError)):
            store.recover_partial(name)
    assert info.episode_id in store and store.get(info.episode_id).num_steps == 6


def test_a_symlinked_array_is_never_read_through(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "store", durable=False)
    info = store.append(make_episode(6))
    outside = tmp_path / "outside-array"
    array_dir = tmp_path / "store" / "episodes" / info.episode_id / STATE
    shutil.move(array_dir, outside)
    array_dir.symlink_to(outside, target_is_directory=True)
    # Seen by a fresh reader: quarantined at open. Seen by a reader that cached the metadata: refused read.
    with pytest.raises(UnsafePathError, match="resolves outside"):
        store.read_columns(info.episode_id, [STATE])
    reopened = EpisodeStore(tmp_path / "store", create=False, durable=False)
    assert info.episode_id not in reopened and reopened.num_quarantined == 1
    assert outside.is_dir()  # the symlink moved, not what it points to


def committed_copy(store_root: Path, source_id: str) -> tuple[str, Path]:
    """A copy of a committed episode under a fresh id (metadata rewritten to match), for tampering."""
    new_id = new_episode_id()
    target = store_root / "episodes" / new_id
    shutil.copytree(store_root / "episodes" / source_id, target)
    meta = json.loads((target / "zarr.json").read_text())
    meta["attributes"]["sop_episode"]["episode_id"] = new_id
    (target / "zarr.json").write_text(json.dumps(meta))
    return new_id, target


def plant_unreadable_entries(root: Path, good_id: str) -> dict[str, str]:
    """Entries a crash, a bug or an attacker could leave in episodes/; returns {name: expected reason}."""
    episodes = root / "episodes"
    planted: dict[str, str] = {}
    # What the `../episodes/zz` camera key used to leave behind: a zarr array named like no episode.
    (episodes / "zz").mkdir()
    (episodes / "zz" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array"}')
    planted["zz"] = "not an episode id"
    garbled_id, garbled = committed_copy(root, good_id)
    (garbled / "zarr.json").write_text("{not json")
    planted[garbled_id] = "garbled metadata"
    no_meta_id, no_meta = committed_copy(root, good_id)
    (no_meta / "zarr.json").unlink()
    planted[no_meta_id] = "no zarr.json"
    no_array_id, no_array = committed_copy(root, good_id)
    shutil.rmtree(no_array / ACTION)
    planted[no_array_id] = "missing"
    hostile_id, hostile = committed_copy(root, good_id)
    meta = json.loads((hostile / "zarr.json").read_text())
    shapes = meta["attributes"]["sop_episode"]["step_shapes"]
    shapes["observation.images.x/../../../../outside"] = shapes.pop("observation.images.top")
    (hostile / "zarr.json").write_text(json.dumps(meta))
    planted[hostile_id] = "camera name"
    file_id = new_episode_id()
    (episodes / file_id).write_text("not a directory")
    planted[file_id] = "not a directory"
    link_id = new_episode_id()
    (episodes / link_id).symlink_to(episodes / good_id, target_is_directory=True)
    planted[link_id] = "symbolic link"
    return planted


def test_unreadable_entries_are_quarantined_on_open_and_the_rest_still_loads(tmp_path: Path) -> None:
    root = tmp_path / "run" / "replay"
    store = EpisodeStore(root, durable=False)
    good = [store.append(make_episode(6, seed=i)).episode_id for i in range(2)]
    planted = plant_unreadable_entries(root, good[0])
    before = tree(tmp_path)

    reopened = EpisodeStore(root, create=False)
    assert sorted(i.episode_id for i in reopened.list()) == sorted(good)
    assert reopened.num_quarantined == len(planted)
    for episode_id in good:
        assert reopened.get(episode_id).num_steps == 6
    assert set(os.listdir(root / "episodes")) == set(good)
    quarantined = {entry.original_name: entry for entry in reopened.quarantined()}
    assert set(quarantined) == set(planted)
    for name, reason in planted.items():
        entry = quarantined[name]
        assert reason in entry.reason, (name, entry.reason)
        assert entry.path.parent == root / QUARANTINE_DIR and os.path.lexists(entry.path)
        saved = json.loads((root / QUARANTINE_DIR / f"{entry.name}.reason.json").read_text())
        assert saved["reason"] == entry.reason and saved["name"] == name and saved["time"] > 0
    assert_nothing_new_outside(tmp_path, root, before)
    assert (root / "episodes" / good[0]).is_dir()  # the symlink's target stayed where it was
    assert len(EpisodeStore(root, create=False)) == 2  # and opening again finds nothing more to move


def test_refresh_quarantines_an_entry_that_appears_later(tmp_path: Path) -> None:
    root = tmp_path / "replay"
    writer_side = EpisodeStore(root, durable=False)
    reader_side = EpisodeStore(root, durable=False)  # e.g. the trainer, in another process
    good = writer_side.append(make_episode(6)).episode_id
    garbled_id, garbled = committed_copy(root, good)
    (garbled / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    added = reader_side.refresh()
    assert [i.episode_id for i in added] == [good]
    assert garbled_id not in reader_side and reader_side.num_quarantined == 1
    assert [e.original_name for e in reader_side.quarantined()] == [garbled_id]
    # A lookup by id meets it the same way when a refresh has not (the ingest's duplicate check).
    other_id, other = committed_copy(root, good)
    shutil.rmtree(other / STATE)
    assert other_id not in writer_side
    assert {e.original_name for e in writer_side.quarantined()} == {garbled_id, other_id}


def test_quarantine_moves_a_committed_episode_aside_with_its_reason(tmp_path: Path) -> None:
    root = tmp_path / "replay"
    store = EpisodeStore(root, durable=False)
    other_process = EpisodeStore(root, durable=False)
    keep = store.append(make_episode(6, seed=1)).episode_id
    bad = store.append(make_episode(6, seed=2)).episode_id
    assert bad in other_process
    entry = store.quarantine(bad, "observation.state: the served policy expects shape (T, 39)")
    assert entry.original_name == bad and entry.name == bad
    assert bad not in store and [i.episode_id for i in store.list()] == [keep]
    with pytest.raises(EpisodeNotFoundError):
        store.get(bad)
    with pytest.raises(EpisodeNotFoundError):
        store.quarantine(bad, "again")
    other_process.refresh()
    assert [i.episode_id for i in other_process.list()] == [keep]
    (listed,) = other_process.quarantined()
    assert listed.original_name == bad and "served policy" in listed.reason
    assert (root / QUARANTINE_DIR / bad / "zarr.json").is_file()  # kept whole for a person to inspect
    # The id is free again: a robot that re-sends it is stored (the copy in quarantine/ stays).
    store.append(make_episode(6, seed=2, episode_id=bad))
    assert bad in store
    assert store.quarantine(bad, "twice").name.startswith(bad + ".")
    assert len(store.quarantined()) == 2
