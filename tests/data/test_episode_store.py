from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sop.data.episode_store import (
    DuplicateEpisodeError,
    EpisodeNotFoundError,
    EpisodeStore,
    PartialInUseError,
)
from sop.data.synthetic_episodes import make_episode
from sop.episode import (
    ACTION,
    INTERVENTION,
    POLICY_VERSION,
    REWARD,
    STATE,
    TIMESTAMP,
    Episode,
    EpisodeError,
    Outcome,
    Source,
)


def assert_same_episode(got: Episode, want: Episode) -> None:
    for name in (
        "episode_id",
        "robot_id",
        "task",
        "instruction",
        "outcome",
        "source",
        "started_at",
        "ended_at",
        "fps",
    ):
        assert getattr(got, name) == getattr(want, name), name
    assert got.extra == want.extra
    assert sorted(got.steps) == sorted(want.steps)
    for key, values in want.steps.items():
        assert got.steps[key].dtype == values.dtype, key
        assert np.array_equal(got.steps[key], values), key


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    num_steps=st.integers(1, 60),
    state_dim=st.integers(1, 10),
    cameras=st.lists(st.sampled_from(["top", "wrist"]), unique=True, max_size=2),
    image_side=st.integers(1, 40),
    seed=st.integers(0, 1000),
)
def test_append_get_round_trip(
    tmp_path: Path, num_steps: int, state_dim: int, cameras: list[str], image_side: int, seed: int
) -> None:
    store = EpisodeStore(tmp_path / f"s{uuid.uuid4().hex}", durable=False)
    episode = make_episode(
        num_steps, state_dim=state_dim, cameras=cameras, image_size=(image_side, 7), seed=seed
    )
    episode.extra = {"note": f"seed {seed}"}
    info = store.append(episode)
    assert info.num_steps == num_steps and info.nbytes == episode.nbytes
    assert info.cameras == sorted(cameras)
    assert_same_episode(store.get(episode.episode_id), episode)
    start = num_steps // 3
    assert np.array_equal(
        store.read_steps(episode.episode_id, STATE, start, num_steps), episode.steps[STATE][start:]
    )


def test_step_by_step_recording_round_trip(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "store")
    episode = make_episode(23, cameras=("top", "wrist"), image_size=(16, 12))
    writer = store.begin_episode(
        episode.episode_id, episode.robot_id, episode.task, episode.instruction,
        source=episode.source, fps=episode.fps, started_at=episode.started_at, flush_every=5,
    )  # fmt: skip
    for t in range(episode.num_steps):
        step = {key: values[t] for key, values in episode.steps.items()}
        step[REWARD] = float(step[REWARD])  # python scalars are accepted where the cast is safe
        writer.add_step(step)
        if t == 12:
            assert writer.num_flushed == 10
            assert episode.episode_id not in store  # not visible before commit
            assert store.list() == []
    info = writer.commit(Outcome.SUCCESS, ended_at=episode.ended_at)
    assert info.num_steps == 23
    assert store.partial_episodes() == []
    assert_same_episode(store.get(episode.episode_id), episode)
    assert not any("progress" in name for name in files_under(store.root))


def test_writer_rejects_bad_steps_and_abort_leaves_nothing(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "store", durable=False)
    episode = make_episode(4)
    writer = store.begin_episode(episode.episode_id, "robot-1", "reach-v3", "reach")
    good = {key: values[0] for key, values in episode.steps.items()}
    bad_steps = {
        STATE: {**good, STATE: good[STATE].astype(np.int64)},
        ACTION: {**good, ACTION: np.full(4, np.nan, np.float32)},
        INTERVENTION: {k: v for k, v in good.items() if k != INTERVENTION},
        "observation.images.top": {**good, "observation.images.top": np.zeros((8, 8), np.uint8)},
    }
    for field, step in bad_steps.items():
        with pytest.raises(EpisodeError) as info:
            writer.add_step(step)
        assert info.value.field_name == field
    writer.add_step(good)
    with pytest.raises(EpisodeError, match="differs from the first step"):
        writer.add_step({**good, STATE: np.zeros(5, np.float32)})
    with pytest.raises(EpisodeError, match="missing"):
        writer.add_step({k: v for k, v in good.items() if k != "observation.images.top"})
    assert writer.num_steps == 1
    writer.abort()
    assert store.partial_episodes() == [] and len(store) == 0
    with pytest.raises(EpisodeError) as bad_meta:
        store.begin_episode(str(uuid.uuid4()), "", "reach-v3", "reach")
    assert bad_meta.value.field_name == "robot_id"
    with pytest.raises(EpisodeError, match="fps"):
        store.begin_episode(str(uuid.uuid4()), "robot-1", "reach-v3", "reach", fps=0.0)
    assert store.partial_episodes() == []


def test_duplicate_and_invalid_episodes_change_nothing(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "store")
    episode = make_episode(10)
    store.append(episode)
    before = files_under(store.root)
    copy = make_episode(10, seed=99, episode_id=episode.episode_id)
    with pytest.raises(DuplicateEpisodeError) as dup:
        store.append(copy)
    assert dup.value.episode_id == episode.episode_id
    with pytest.raises(DuplicateEpisodeError):
        store.begin_episode(episode.episode_id, "r", "t", "i")
    bad = make_episode(10)
    bad.steps[ACTION] = bad.steps[ACTION][:9]
    with pytest.raises(EpisodeError) as invalid:
        store.append(bad)
    assert "steps" in invalid.value.reason
    assert files_under(store.root) == before
    assert_same_episode(store.get(episode.episode_id), episode)
    with pytest.raises(EpisodeNotFoundError):
        store.get(str(uuid.uuid4()))


def test_listing_lookup_delete_and_sizes(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "store", durable=False)
    a = make_episode(5, task="reach-v3", started_at=100.0, seed=1)
    b = make_episode(7, task="push-v3", started_at=50.0, seed=2, source=Source.OFFLINE)
    c = make_episode(9, task="reach-v3", started_at=200.0, seed=3)
    for episode in (a, b, c):
        store.append(episode)
    assert [i.episode_id for i in store.list()] == [b.episode_id, a.episode_id, c.episode_id]
    assert [i.episode_id for i in store.list(task="reach-v3")] == [a.episode_id, c.episode_id]
    assert [i.episode_id for i in store.list(source=Source.OFFLINE)] == [b.episode_id]
    assert [i.episode_id for i in store.list(since=60.0, until=200.0)] == [a.episode_id]
    assert store.tasks() == ["push-v3", "reach-v3"]
    assert store.num_steps_total() == 21 and store.num_steps_total(task="reach-v3") == 14
    assert store.info(b.episode_id).step_shapes[STATE] == (39,)
    size = store.size_bytes()
    assert size >= sum(i.stored_bytes for i in store.list()) > 0
    with pytest.raises(IndexError):
        store.read_steps(a.episode_id, STATE, 3, 6)
    reader = EpisodeStore(store.root, create=False)
    assert np.array_equal(
        reader.read_steps(a.episode_id, STATE, 0, 2), a.steps[STATE][:2]
    )  # arrays now cached
    store.delete(a.episode_id)
    assert a.episode_id not in store and len(store) == 2
    with pytest.raises(EpisodeNotFoundError):  # a reader racing the delete gets an error, never zeros
        reader.read_steps(a.episode_id, STATE, 0, 2)
    assert store.size_bytes() < size
    with pytest.raises(EpisodeNotFoundError):
        store.delete(a.episode_id)
    reopened = EpisodeStore(store.root, create=False)
    assert [i.episode_id for i in reopened.list()] == [b.episode_id, c.episode_id]


def test_store_refuses_foreign_or_missing_roots(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        EpisodeStore(tmp_path / "absent", create=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        EpisodeStore(tmp_path / "other")


RECORDER = textwrap.dedent(
    """
    import sys, time
    from sop.data.episode_store import EpisodeStore
    from sop.data.synthetic_episodes import make_episode
    store = EpisodeStore(sys.argv[1])
    episode = make_episode(40, seed=7, episode_id=sys.argv[2])
    writer = store.begin_episode(episode.episode_id, "robot-1", "reach-v3", "reach", flush_every=5,
                                 started_at=episode.started_at)
    for t in range(23):
        writer.add_step({k: v[t] for k, v in episode.steps.items()})
    print(writer.num_flushed, flush=True)
    time.sleep(60)
    """
)

APPENDER = textwrap.dedent(
    """
    import sys
    from sop.data.episode_store import EpisodeStore
    from sop.data.synthetic_episodes import make_episode
    store = EpisodeStore(sys.argv[1])
    for seed in range(10_000):
        store.append(make_episode(30, seed=seed, image_size=(32, 32), started_at=seed))
        print(seed, flush=True)
    """
)


def _start(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, env={**os.environ}
    )


def test_killed_recorder_leaves_a_readable_store_and_recoverable_partial(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    store = EpisodeStore(root)
    kept = make_episode(5, seed=1)
    store.append(kept)
    episode_id = str(uuid.uuid4())
    recorder = _start(RECORDER, str(root), episode_id)
    assert recorder.stdout is not None
    flushed = int(recorder.stdout.readline())
    assert flushed == 20
    (partial,) = store.partial_episodes()
    assert partial.writer_alive and partial.num_steps_flushed == 20
    with pytest.raises(PartialInUseError):
        store.recover_partial(episode_id)
    recorder.kill()  # SIGKILL mid-episode
    recorder.wait()

    reader = EpisodeStore(root, create=False)
    assert [i.episode_id for i in reader.list()] == [kept.episode_id]
    assert episode_id not in reader
    (partial,) = reader.partial_episodes()
    assert not partial.writer_alive and partial.num_steps_flushed == 20

    info = reader.recover_partial(episode_id)
    assert info is not None and info.outcome == Outcome.ABORTED and info.num_steps == 20
    expected = make_episode(40, seed=7, episode_id=episode_id)
    recovered = reader.get(episode_id)
    recovered.validate()
    for key, values in expected.steps.items():
        assert np.array_equal(recovered.steps[key], values[:20]), key
    assert reader.partial_episodes() == []
    store.refresh()
    assert episode_id in store and store.info(episode_id).num_steps == 20


def test_discard_and_clean_partials_after_a_kill(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    EpisodeStore(root)
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    recorders = [_start(RECORDER, str(root), episode_id) for episode_id in ids]
    for recorder in recorders:
        assert recorder.stdout is not None and int(recorder.stdout.readline()) == 20
        recorder.kill()
        recorder.wait()
    store = EpisodeStore(root)
    store.discard_partial(ids[0])
    assert [p.episode_id for p in store.partial_episodes()] == [ids[1]]
    assert store.clean_partials() == [ids[1]]
    assert store.partial_episodes() == [] and len(store) == 0
    assert not any(store.root.joinpath(".partial").iterdir())


def test_appender_killed_mid_write_leaves_only_whole_episodes(tmp_path: Path) -> None:
    root = tmp_path / "replay"
    EpisodeStore(root)
    appender = _start(APPENDER, str(root))
    assert appender.stdout is not None
    for _ in range(3):  # kill while it is busy writing the next ones
        appender.stdout.readline()
    appender.kill()
    appender.wait()
    store = EpisodeStore(root)  # a new opener cleans up the dead writer's staging
    assert not any(store.root.joinpath(".staging").iterdir())
    infos = store.list()
    assert len(infos) >= 3
    for info in infos:
        episode = store.get(info.episode_id)
        episode.validate()
        assert_same_episode(episode, make_episode(30, seed=int(info.started_at), image_size=(32, 32),
                                                  started_at=info.started_at, episode_id=info.episode_id))  # fmt: skip


READER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from sop.data.episode_store import EpisodeStore
    from sop.episode import STATE
    store = EpisodeStore(sys.argv[1], create=False)
    want = int(sys.argv[2])
    deadline = time.monotonic() + 30
    while len(store.list()) < want and time.monotonic() < deadline:
        store.refresh()
        for info in store.list():
            assert store.get(info.episode_id).steps[STATE].shape[0] == info.num_steps
        time.sleep(0.01)
    print(" ".join(f"{i.episode_id}:{store.read_steps(i.episode_id, STATE, 0, 1)[0, 0]:.0f}" for i in store.list()))
    """
)


def test_reader_in_another_process_sees_committed_episodes(tmp_path: Path) -> None:
    root = tmp_path / "replay"
    store = EpisodeStore(root, durable=False)
    reader = _start(READER, str(root), "4")
    episodes = [make_episode(12, seed=s, started_at=float(s)) for s in range(4)]
    for episode in episodes:
        store.append(episode)
    out, _ = reader.communicate(timeout=60)
    assert reader.returncode == 0
    assert out.split() == [f"{e.episode_id}:0" for e in episodes]


def test_writer_state_after_commit_and_recorded_dtypes(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "store", durable=False)
    episode = make_episode(3, cameras=())
    writer = store.begin_episode(
        episode.episode_id, "robot-1", "reach-v3", "reach", started_at=episode.started_at
    )
    with pytest.raises(EpisodeError, match="no steps"):
        writer.commit(Outcome.FAILURE)
    for t in range(3):
        writer.add_step(
            {
                STATE: episode.steps[STATE][t],
                ACTION: episode.steps[ACTION][t],
                "policy_action": episode.steps["policy_action"][t],
                INTERVENTION: bool(t == 1),
                POLICY_VERSION: 4,
                TIMESTAMP: float(episode.steps[TIMESTAMP][t]),
                REWARD: np.float32(0.5),
            }
        )
    info = writer.commit(Outcome.FAILURE)
    with pytest.raises(RuntimeError, match="already committed"):
        writer.add_step({})
    got = store.get(info.episode_id)
    assert got.outcome == Outcome.FAILURE
    assert got.steps[INTERVENTION].tolist() == [False, True, False]
    assert got.steps[POLICY_VERSION].dtype == np.int64 and got.steps[POLICY_VERSION].tolist() == [4, 4, 4]
    assert got.ended_at >= got.started_at
