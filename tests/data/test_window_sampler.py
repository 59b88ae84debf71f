from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sop.data.episode_store import EpisodeInfo, EpisodeStore
from sop.data.synthetic_episodes import make_episode
from sop.data.window_sampler import NoSampleableFramesError, WindowSampler
from sop.episode import ACTION, STATE, Source


@pytest.fixture
def store(tmp_path: Path) -> EpisodeStore:
    return EpisodeStore(tmp_path / "store", durable=False)


def test_windows_pad_at_both_edges(store: EpisodeStore) -> None:
    episode = make_episode(5, image_size=(4, 4), policy_version=3)
    store.append(episode)
    sampler = WindowSampler(store, obs_horizon=2, action_horizon=4, image_keys=["top"])
    batch = sampler.sample(64, np.random.default_rng(0))
    assert batch[STATE].shape == (64, 2, 39) and batch[STATE].dtype == np.float32
    assert batch[ACTION].shape == (64, 4, 4) and batch["action_is_pad"].shape == (64, 4)
    assert batch["observation.images.top"].shape == (64, 2, 4, 4, 3)
    assert batch["policy_version"].tolist() == [3] * 64
    assert set(batch["frame_index"].tolist()) == set(range(5))  # every anchor occurs in 64 draws
    for b, t in enumerate(batch["frame_index"]):
        obs = np.clip([t - 1, t], 0, 4)
        act = np.arange(t - 1, t + 3)
        assert batch[STATE][b, :, 0].tolist() == obs.tolist()
        assert np.array_equal(batch[STATE][b], episode.steps[STATE][obs])
        assert batch[ACTION][b, :, 0].tolist() == np.clip(act, 0, 4).tolist()
        assert batch["action_is_pad"][b].tolist() == ((act < 0) | (act > 4)).tolist()
        assert np.array_equal(
            batch["observation.images.top"][b], episode.steps["observation.images.top"][obs]
        )
    assert batch["episode_id"] == [episode.episode_id] * 64
    assert batch["instruction"] == ["reach the goal"] * 64


def test_tasks_are_weighted_equally_and_sources_by_share(store: EpisodeStore) -> None:
    for seed in range(4):  # reach: many frames, online and offline
        store.append(make_episode(50, seed=seed, task="reach-v3", cameras=()))
    store.append(make_episode(50, seed=10, task="reach-v3", cameras=(), source=Source.OFFLINE))
    store.append(make_episode(10, seed=11, task="push-v3", cameras=()))
    sampler = WindowSampler(store, 1, 1, source_weights={"online": 0.8, "offline": 0.2})
    rng = np.random.default_rng(1)
    batch = sampler.sample(4000, rng)
    tasks = np.array(batch["task"])
    assert abs((tasks == "push-v3").mean() - 0.5) < 0.04
    reach_sources = np.array(batch["source"])[tasks == "reach-v3"]
    assert abs((reach_sources == "offline").mean() - 0.2) < 0.04
    sampler.set_source_weights("reach-v3", {"online": 0.3, "offline": 0.7})
    batch = sampler.sample(4000, rng)
    reach_sources = np.array(batch["source"])[np.array(batch["task"]) == "reach-v3"]
    assert abs((reach_sources == "offline").mean() - 0.7) < 0.04
    sampler.set_task_weights({"push-v3": 3.0})
    assert abs((np.array(sampler.sample(4000, rng)["task"]) == "push-v3").mean() - 0.75) < 0.04
    with pytest.raises(ValueError, match="source_weights"):
        sampler.set_source_weights("reach-v3", {"online": -1.0})
    with pytest.raises(ValueError, match="unknown sources"):
        sampler.set_source_weights("reach-v3", {"sim": 1.0})


def test_autonomous_frames_can_be_excluded_hg_dagger_style(store: EpisodeStore) -> None:
    intervention = np.zeros(20, np.bool_)
    intervention[[4, 5, 6, 15]] = True
    online = make_episode(20, intervention=intervention, cameras=())
    offline = make_episode(8, source=Source.OFFLINE, cameras=(), seed=5)
    store.append(online)
    store.append(offline)
    sampler = WindowSampler(store, 2, 3, autonomous_frame_weight=0.0)
    assert sampler.num_frames(source=Source.ONLINE) == 4
    assert sampler.num_frames(source="offline") == 8 and sampler.num_frames() == 12
    batch = sampler.sample(500, np.random.default_rng(2))
    online_anchors = batch["frame_index"][np.array(batch["source"]) == "online"]
    assert set(online_anchors.tolist()) == {4, 5, 6, 15}
    half = WindowSampler(store, 1, 1, autonomous_frame_weight=0.5, frame_weight_mode="loss")
    batch = half.sample(500, np.random.default_rng(3))
    online = np.array(batch["source"]) == "online"
    expected = np.where(intervention[batch["frame_index"][online]], 1.0, 0.5)
    assert np.array_equal(batch["weight"][online], expected)
    assert (batch["weight"][~online] == 1.0).all()


def test_custom_frame_weights_and_task_filter(store: EpisodeStore) -> None:
    store.append(make_episode(10, cameras=(), task="reach-v3"))
    store.append(make_episode(10, cameras=(), task="push-v3", seed=1))

    def last_three(info, columns):  # type: ignore[no-untyped-def]
        weights = np.zeros(info.num_steps)
        weights[-3:] = 1.0
        return weights

    sampler = WindowSampler(store, 1, 2, tasks=["push-v3"], frame_weight_fn=last_three)
    batch = sampler.sample(100, np.random.default_rng(4))
    assert set(batch["task"]) == {"push-v3"} and sampler.tasks == ["push-v3"]
    assert set(batch["frame_index"].tolist()) == {7, 8, 9}


def test_refresh_picks_up_new_episodes_and_reads_images_lazily(
    store: EpisodeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sampler = WindowSampler(store, 2, 2, image_keys=["observation.images.top"])
    with pytest.raises(ValueError, match="no sampleable frames"):
        sampler.sample(1, np.random.default_rng(0))
    other = EpisodeStore(store.root, durable=False)  # e.g. the ingest side of the learner
    other.append(make_episode(30, image_size=(6, 6)))
    assert sampler.num_frames() == 0
    assert sampler.refresh() == 1 and sampler.refresh() == 0
    assert sampler.num_frames() == 30

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the sampler must not read whole episodes")

    reads: list[tuple[str, int, int]] = []
    original = store.read_steps

    def counting(episode_id: str, key: str, start: int, stop: int) -> np.ndarray:
        reads.append((key, start, stop))
        return original(episode_id, key, start, stop)

    monkeypatch.setattr(store, "get", refuse)
    monkeypatch.setattr(store, "read_columns", refuse)
    monkeypatch.setattr(store, "read_steps", counting)
    sampler.sample(8, np.random.default_rng(0))
    assert len(reads) == 8 and all(stop - start <= 2 for _, start, stop in reads)


def test_episodes_of_different_shapes_are_refused(store: EpisodeStore) -> None:
    store.append(make_episode(5, cameras=(), state_dim=39))
    store.append(make_episode(5, cameras=(), state_dim=7, seed=1, started_at=2e9))
    with pytest.raises(ValueError, match=r"observation\.state"):
        WindowSampler(store, 1, 1)
    with pytest.raises(ValueError, match="action_horizon"):
        WindowSampler(store, 2, 1, tasks=[])


def corrupt_chunks(store: EpisodeStore, episode_id: str, key: str) -> None:
    """Overwrite every chunk of one array with bytes Blosc cannot decode (a damaged disk)."""
    for chunk in (store.root / "episodes" / episode_id / key).glob("c.*"):
        chunk.write_bytes(b"\x00garbage" * 8)


def test_unusable_episodes_are_quarantined_and_the_rest_sampled(store: EpisodeStore) -> None:
    good = [store.append(make_episode(10, seed=i, started_at=1e9 + i)).episode_id for i in range(2)]
    narrow = store.append(make_episode(10, seed=3, state_dim=5, started_at=2e9)).episode_id
    no_camera = store.append(make_episode(10, seed=4, cameras=("side",), started_at=2e9 + 1)).episode_id
    damaged = store.append(make_episode(10, seed=5, started_at=2e9 + 2)).episode_id
    corrupt_chunks(store, damaged, "observation.images.top")
    refused_task = store.append(make_episode(10, seed=6, task="made-up-v1", started_at=2e9 + 3)).episode_id

    def known_tasks_only(info: EpisodeInfo) -> None:
        if info.task != "reach-v3":
            raise ValueError(f"task: {info.task!r} is not one the policy knows")

    sampler = WindowSampler(
        store,
        2,
        4,
        image_keys=["top"],
        episode_check=known_tasks_only,
        on_unusable="quarantine",
    )
    assert sampler.num_episodes == 2 and sampler.num_quarantined == 4
    reasons = {entry.original_name: entry.reason for entry in store.quarantined()}
    assert set(reasons) == {narrow, no_camera, damaged, refused_task}
    assert "observation.state" in reasons[narrow] and "one shape" in reasons[narrow]
    assert "no such camera" in reasons[no_camera]
    assert "decompression" in reasons[damaged]
    assert "made-up-v1" in reasons[refused_task]
    assert {episode_id for episode_id, _ in sampler.recently_quarantined} == set(reasons)
    batch = sampler.sample(64, np.random.default_rng(0))
    assert set(batch["episode_id"]) == set(good)
    assert sorted(i.episode_id for i in store.list()) == sorted(good)
    assert sampler.refresh() == 0 and sampler.num_quarantined == 4


def test_an_episode_whose_images_break_while_sampling_is_dropped(store: EpisodeStore) -> None:
    good = store.append(make_episode(10, seed=1, started_at=1e9)).episode_id
    breaks = store.append(make_episode(10, seed=2, started_at=2e9)).episode_id
    sampler = WindowSampler(store, 2, 4, image_keys=["top"], on_unusable="quarantine")
    assert sampler.num_episodes == 2
    corrupt_chunks(store, breaks, "observation.images.top")
    for seed in range(3):
        batch = sampler.sample(32, np.random.default_rng(seed))
        assert set(batch["episode_id"]) == {good}
    assert sampler.num_quarantined == 1 and [e.original_name for e in store.quarantined()] == [breaks]
    assert sampler.num_frames() == 10


def test_by_default_an_unusable_episode_raises_and_nothing_is_moved(store: EpisodeStore) -> None:
    store.append(make_episode(10, seed=1, started_at=1e9))
    damaged = store.append(make_episode(10, seed=2, started_at=2e9)).episode_id
    corrupt_chunks(store, damaged, "observation.images.top")
    with pytest.raises(RuntimeError, match="decompression"):
        WindowSampler(store, 2, 4, image_keys=["top"])
    assert store.quarantined() == [] and damaged in store


def test_online_frames_held_per_task_are_bounded_oldest_evicted_first(store: EpisodeStore) -> None:
    """A learner receiving data forever holds a bounded index: the oldest online episodes of a task leave it,
    offline episodes and other tasks stay, and what is sampled still matches the store."""
    store.append(make_episode(30, seed=100, task="reach-v3", cameras=(), source=Source.OFFLINE))
    store.append(make_episode(10, seed=101, task="push-v3", cameras=()))
    sampler = WindowSampler(store, 2, 4, max_online_frames_per_task=100)
    for seed in range(4):
        store.append(make_episode(20, seed=seed, task="reach-v3", cameras=()))
    sampler.refresh()
    assert sampler.held_frames("reach-v3", Source.ONLINE) == 80 and sampler.num_evicted == 0
    for seed in range(4, 12):  # 240 online reach frames in all: evicted down to <= 90 (90 % of the bound)
        store.append(make_episode(20, seed=seed, task="reach-v3", cameras=()))
        sampler.refresh()
        assert sampler.held_frames("reach-v3", Source.ONLINE) <= 100
    assert sampler.held_frames("reach-v3", Source.OFFLINE) == 30
    assert sampler.held_frames("push-v3") == 10
    batch = sampler.sample(2000, np.random.default_rng(3))
    reach_online = {
        episode_id
        for episode_id, task, source in zip(batch["episode_id"], batch["task"], batch["source"], strict=True)
        if task == "reach-v3" and source == "online"
    }
    by_id = {info.episode_id: info for info in store.list()}
    newest = sorted(info.started_at for info in store.list(task="reach-v3", source=Source.ONLINE))[-4:]
    assert {by_id[e].started_at for e in reach_online} == set(newest)  # the four newest, 80 frames
    assert sampler.num_evicted == 8
    for b, episode_id in enumerate(batch["episode_id"]):  # windows still come from the right episodes
        frames = store.read_columns(episode_id, [STATE])[STATE]
        t = batch["frame_index"][b]
        assert np.array_equal(batch[STATE][b], frames[np.clip([t - 1, t], 0, len(frames) - 1)])
    store.append(make_episode(20, seed=0, task="reach-v3", cameras=(), episode_id=None, started_at=1.0))
    assert sampler.refresh() == 1  # a late episode with an old start time: arrival order decides eviction
    assert sampler.held_frames("reach-v3", Source.ONLINE) <= 100


def test_the_newest_episode_stays_when_it_alone_exceeds_the_bound(store: EpisodeStore) -> None:
    sampler = WindowSampler(store, 1, 1, max_online_frames_per_task=10)
    store.append(make_episode(25, seed=1, cameras=()))
    store.append(make_episode(30, seed=2, cameras=()))
    sampler.refresh()
    assert sampler.held_frames(source=Source.ONLINE) == 30 and sampler.num_evicted == 1
    with pytest.raises(ValueError, match="max_online_frames_per_task"):
        WindowSampler(store, 1, 1, max_online_frames_per_task=0)


def test_episodes_without_a_sampleable_frame_are_not_held(store: EpisodeStore) -> None:
    store.append(make_episode(40, seed=1, cameras=()))  # autonomous only: nothing for HG-DAgger
    intervention = np.zeros(20, np.bool_)
    intervention[5:8] = True
    store.append(make_episode(20, seed=2, cameras=(), intervention=intervention))
    sampler = WindowSampler(store, 2, 3, autonomous_frame_weight=0.0)
    assert sampler.held_frames() == 20 and sampler.num_frames() == 3
    assert sampler.refresh() == 0  # both were seen; neither is indexed again


def test_episodes_indexed_after_the_only_one_was_dropped_sample_their_own_frames(store: EpisodeStore) -> None:
    """Dropping every held episode empties the index; windows of episodes indexed later still come from them."""
    breaks = store.append(make_episode(6, seed=1, image_size=(4, 4), started_at=1e9)).episode_id
    sampler = WindowSampler(store, 1, 1, image_keys=["top"], on_unusable="quarantine")
    corrupt_chunks(store, breaks, "observation.images.top")
    store.append(make_episode(7, seed=2, image_size=(4, 4), started_at=2e9))
    store.append(make_episode(8, seed=3, image_size=(4, 4), started_at=3e9))
    with pytest.raises(NoSampleableFramesError):  # the image read fails, the only episode is dropped
        sampler.sample(8, np.random.default_rng(0))
    assert sampler.held_frames() == 0 and sampler.num_quarantined == 1
    assert sampler.refresh() == 2
    batch = sampler.sample(200, np.random.default_rng(1))
    assert len(set(batch["episode_id"])) == 2
    for b, episode_id in enumerate(batch["episode_id"]):
        frames = store.read_columns(episode_id, [STATE])[STATE]
        assert np.array_equal(batch[STATE][b, 0], frames[batch["frame_index"][b]])
