"""Episode ingest over real gRPC on 127.0.0.1: exactly-once commits, refusals that change nothing, resume."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from learner_fixtures import (
    HeldStream,
    RunningLearner,
    auth,
    chunks_of,
    upload,
    wait_for,
    write_base_checkpoint,
)

from cloud_learner.config import IngestConfig, ReplayConfig, TrainerConfig
from cloud_learner.ingest import META_NAME
from sop.credentials import call_metadata
from sop.data.codec import encode_episode
from sop.data.episode_store import EpisodeStore
from sop.data.synthetic_episodes import make_episode
from sop.data.upload_chunks import split_into_chunks
from sop.episode import ACTION, STATE, Source
from sop.policy_features import PolicyFeatures
from sop.v1 import fleet_pb2

StartLearner = Callable[..., RunningLearner]


def small_chunks(**overrides: Any) -> IngestConfig:
    """The ingest config of these tests: chunks down to 1 KiB (`ingest.min_chunk_bytes`), so that small
    episodes travel in several chunks; every other key as a user runs it unless overridden."""
    return IngestConfig(**{"min_chunk_bytes": 1024, **overrides})


def assert_nothing_written(learner: RunningLearner) -> None:
    assert len(learner.service.store) == 0
    assert learner.service.staging.episode_ids() == []


def test_upload_commits_the_episode_and_answers_after_the_commit(start_learner: StartLearner) -> None:
    learner = start_learner(ingest=small_chunks())
    episode = make_episode(40, seed=1)
    receipt = upload(learner.fleet(), chunks_of(episode, max_chunk_bytes=4096))
    assert receipt.committed and not receipt.duplicate
    assert receipt.num_steps == 40
    stored = learner.service.store.get(episode.episode_id)
    np.testing.assert_array_equal(stored.steps[ACTION], episode.steps[ACTION])
    assert learner.service.staging.episode_ids() == []


def test_duplicate_uploads_commit_once(start_learner: StartLearner) -> None:
    learner = start_learner(ingest=small_chunks())
    stub = learner.fleet()
    episode = make_episode(30, seed=2)
    chunks = chunks_of(episode, max_chunk_bytes=2048)
    receipts: list[fleet_pb2.UploadReceipt] = []
    lock = threading.Lock()

    def send() -> None:
        receipt = upload(stub, chunks)
        with lock:
            receipts.append(receipt)

    threads = [threading.Thread(target=send) for _ in range(4)]  # server.stream_limits.upload allows 4
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    receipts.append(upload(stub, chunks))  # and once more after all of them
    assert all(r.committed for r in receipts)
    assert sum(not r.duplicate for r in receipts) == 1
    assert len(learner.service.store) == 1
    assert learner.service.ingest.counters.committed == 1


def test_wrong_hash_is_refused_and_changes_nothing(start_learner: StartLearner) -> None:
    # FAILED_PRECONDITION, not INVALID_ARGUMENT: at the learner a wrong hash looks like a damaged chunk, and
    # the robot re-sends from chunk 0 a few times before it gives the episode up.
    learner = start_learner(ingest=small_chunks())
    chunks = chunks_of(make_episode(20, seed=3), max_chunk_bytes=1024)
    chunks[-1].sha256 = "0" * 64
    with pytest.raises(grpc.RpcError) as error:
        upload(learner.fleet(), chunks)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "sha256" in error.value.details() and "chunk 0" in error.value.details()
    assert_nothing_written(learner)


def test_malformed_episode_is_refused_naming_the_field(start_learner: StartLearner) -> None:
    learner = start_learner(ingest=small_chunks())
    episode = make_episode(20, seed=4)
    episode.steps[ACTION][3, 1] = np.nan
    chunks = split_into_chunks(episode.episode_id, encode_episode(episode, validate=False))
    with pytest.raises(grpc.RpcError) as error:
        upload(learner.fleet(), chunks)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ACTION in error.value.details() and "NaN" in error.value.details()
    assert_nothing_written(learner)
    # The server keeps serving: a good episode right after goes through.
    assert upload(learner.fleet(), chunks_of(make_episode(20, seed=5))).committed


def test_garbage_payload_and_bad_chunk_fields_are_refused(start_learner: StartLearner) -> None:
    learner = start_learner(ingest=small_chunks())
    stub = learner.fleet()
    episode_id = make_episode(5).episode_id
    garbage = split_into_chunks(episode_id, b"\xff" * 5000, 1024)
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, garbage)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_seq = chunks_of(make_episode(20, seed=6), 1024)
    bad_seq[0].seq = 999
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, bad_seq)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "seq" in error.value.details()
    not_uuid = chunks_of(make_episode(20, seed=7), 1024)
    for chunk in not_uuid:
        chunk.episode_id = "../../etc/passwd"
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, not_uuid)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "episode_id" in error.value.details()
    assert_nothing_written(learner)


def test_oversize_episode_and_oversize_chunk_are_refused(start_learner: StartLearner) -> None:
    learner = start_learner(ingest=small_chunks(max_chunk_bytes=4096, max_episode_bytes=64 * 1024))
    stub = learner.fleet()
    big = make_episode(100, seed=8, image_size=(32, 32))  # ~300 KB serialized
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, chunks_of(big, max_chunk_bytes=4096))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "total_bytes" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, chunks_of(make_episode(30, seed=9), max_chunk_bytes=8192))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "4096" in error.value.details()
    assert_nothing_written(learner)


def test_unauthenticated_calls_are_refused_and_change_nothing(start_learner: StartLearner) -> None:
    learner = start_learner(ingest=small_chunks())
    stub = learner.fleet()
    chunks = chunks_of(make_episode(20, seed=10))
    for metadata in (
        (),
        call_metadata("robot-1", "wrong-token"),
        call_metadata("robot-99", "token-of-robot-1"),
    ):
        with pytest.raises(grpc.RpcError) as error:
            stub.UploadEpisode(iter(chunks), metadata=metadata, timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as error:
            stub.Register(fleet_pb2.RegisterRequest(robot_id="robot-1"), metadata=metadata, timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert_nothing_written(learner)


def test_online_episode_must_come_from_its_own_robot(start_learner: StartLearner) -> None:
    learner = start_learner(ingest=small_chunks())
    stub = learner.fleet()
    foreign = make_episode(20, seed=11, robot_id="robot-2")
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, chunks_of(foreign), robot_id="robot-1")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "robot_id" in error.value.details()
    assert_nothing_written(learner)
    # The robot's own online episode is fine.
    assert upload(stub, chunks_of(foreign), robot_id="robot-2").committed


def test_register_checks_the_robot_id_and_reports_limits(start_learner: StartLearner) -> None:
    learner = start_learner(ingest=small_chunks())
    stub = learner.fleet()
    response = stub.Register(
        fleet_pb2.RegisterRequest(robot_id="robot-1"), metadata=auth("robot-1"), timeout=5
    )
    assert response.max_chunk_bytes == 1 << 20
    assert response.current_policy_version == 0
    with pytest.raises(grpc.RpcError) as error:
        stub.Register(fleet_pb2.RegisterRequest(robot_id="robot-2"), metadata=auth("robot-1"), timeout=5)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_partial_upload_resumes_after_a_learner_restart(start_learner: StartLearner) -> None:
    learner = start_learner(ingest=small_chunks())
    episode = make_episode(60, seed=13)
    chunks = chunks_of(episode, max_chunk_bytes=1024)
    half = len(chunks) // 2
    receipt = upload(learner.fleet(), chunks[:half])
    assert not receipt.committed
    learner.restart()
    stub = learner.fleet()
    query = stub.QueryUpload(
        fleet_pb2.QueryUploadRequest(episode_id=episode.episode_id), metadata=auth(), timeout=5
    )
    assert not query.committed
    assert list(query.received_seqs) == list(range(half))
    assert query.total_chunks == len(chunks)
    missing = [c for c in chunks if c.seq not in set(query.received_seqs)]
    receipt = upload(stub, missing)
    assert receipt.committed and receipt.num_steps == 60
    assert learner.service.staging.episode_ids() == []
    query = stub.QueryUpload(
        fleet_pb2.QueryUploadRequest(episode_id=episode.episode_id), metadata=auth(), timeout=5
    )
    assert query.committed


def test_chunks_that_contradict_staged_ones_are_a_failed_precondition(start_learner: StartLearner) -> None:
    learner = start_learner(ingest=small_chunks())
    stub = learner.fleet()
    episode = make_episode(40, seed=14)
    chunks = chunks_of(episode, max_chunk_bytes=1024)
    upload(stub, chunks[:3])
    other = split_into_chunks(episode.episode_id, encode_episode(make_episode(41, seed=15)), 1024)
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, other[3:5])
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The stale pieces are gone, so a clean re-upload from chunk 0 commits.
    assert learner.service.staging.episode_ids() == []
    assert upload(stub, chunks).committed


def test_full_ingest_queue_answers_resource_exhausted(start_learner: StartLearner) -> None:
    learner = start_learner(ingest=small_chunks(max_pending_uploads=1))
    stub = learner.fleet()
    held_episode = make_episode(40, seed=16)
    held = HeldStream(chunks_of(held_episode, 1024)[:2])
    future = stub.UploadEpisode.future(iter(held), metadata=auth(), timeout=20)
    wait_for(lambda: learner.service.ingest.uploads_in_progress == 1)  # the learner admitted it
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, chunks_of(make_episode(20, seed=17)))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    held.release.set()
    assert not future.result().committed  # the held upload ended partial; its chunks are staged
    assert upload(stub, chunks_of(make_episode(20, seed=18))).committed


def test_uploads_beyond_the_pending_byte_budget_are_shed(start_learner: StartLearner) -> None:
    learner = start_learner(
        ingest=small_chunks(max_chunk_bytes=4096, max_episode_bytes=48 * 1024, max_pending_bytes=48 * 1024)
    )
    stub = learner.fleet()
    first = chunks_of(make_episode(200, seed=30, cameras=()), 4096)
    second = chunks_of(make_episode(200, seed=31, cameras=()), 4096)
    assert first[0].total_bytes + second[0].total_bytes > 48 * 1024
    held = HeldStream(first[:1])
    future = stub.UploadEpisode.future(iter(held), metadata=auth(), timeout=20)
    wait_for(lambda: learner.service.ingest.pending_bytes == first[0].total_bytes)  # reserved by the learner
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, second)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_pending_bytes" in error.value.details()
    held.release.set()
    future.result()
    assert upload(stub, second).committed  # the budget is free again


def test_a_silent_uploader_does_not_block_others_and_is_cut(start_learner: StartLearner) -> None:
    learner = start_learner(ingest=small_chunks())
    stub = learner.fleet()
    silent_episode = make_episode(40, seed=19)
    silent = HeldStream(chunks_of(silent_episode, 1024)[:2])
    future = stub.UploadEpisode.future(iter(silent), metadata=auth("robot-2"), timeout=30)
    wait_for(lambda: learner.service.ingest.uploads_in_progress == 1)  # the silent stream holds a slot
    for seed in range(20, 25):
        assert upload(stub, chunks_of(make_episode(20, seed=seed)), timeout=5).committed
    # The watchdog cancels the silent stream after the idle timeout (1.5 s here) and keeps its chunks.
    with pytest.raises(grpc.RpcError) as error:
        future.result(timeout=10)
    assert error.value.code() == grpc.StatusCode.CANCELLED
    silent.release.set()
    query = stub.QueryUpload(
        fleet_pb2.QueryUploadRequest(episode_id=silent_episode.episode_id),
        metadata=auth("robot-2"),
        timeout=5,
    )
    assert list(query.received_seqs) == [0, 1]


def test_health_is_serving_without_credentials(start_learner: StartLearner) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    learner = start_learner(ingest=small_chunks())
    stub = health_pb2_grpc.HealthStub(learner.channel())
    for service in ("", "sop.v1.Fleet", "sop.v1.Operator"):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_heartbeat_records_the_robot(start_learner: StartLearner) -> None:
    learner = start_learner(ingest=small_chunks())
    stub = learner.fleet()
    session = stub.Register(
        fleet_pb2.RegisterRequest(robot_id="robot-3"), metadata=auth("robot-3"), timeout=5
    )
    response = stub.Heartbeat(
        fleet_pb2.HeartbeatRequest(
            robot_id="robot-3",
            session_id=session.session_id,
            policy_version=0,
            spool_depth=4,
            metrics={"p99_ms": 1.5},
        ),
        metadata=auth("robot-3"),
        timeout=5,
    )
    assert response.server_time > 0
    status = learner.service.roster.get("robot-3")
    assert status is not None and status.spool_depth == 4 and status.metrics == {"p99_ms": 1.5}


# The served policy --------------------------------------------------------------------------------------------


def test_episode_that_does_not_fit_the_served_policy_is_refused(
    start_learner: StartLearner, tmp_path: Path
) -> None:
    # The base policy reads a 39-dim state, writes 4-dim actions and knows the task "reach-v3" only.
    base = write_base_checkpoint(tmp_path / "base", [make_episode(30, seed=s, cameras=()) for s in range(2)])
    learner = start_learner(
        ingest=small_chunks(), trainer=TrainerConfig(base_checkpoint=str(base), enabled=False)
    )
    stub = learner.fleet()
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, chunks_of(make_episode(20, seed=40, state_dim=5), 1024))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.value.details()
    assert STATE in details and "(T, 39)" in details and "(20, 5)" in details  # key, expected, received
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, chunks_of(make_episode(20, seed=41, task="my-own-task")))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "task" in error.value.details() and "my-own-task" in error.value.details()
    assert_nothing_written(learner)  # the misfit's staged chunks were dropped too
    assert upload(stub, chunks_of(make_episode(20, seed=42))).committed


def test_new_features_apply_to_the_next_upload(start_learner: StartLearner) -> None:
    learner = start_learner(ingest=small_chunks())
    stub = learner.fleet()
    assert upload(stub, chunks_of(make_episode(20, seed=43))).committed
    # A newly published checkpoint reads a 7-dim state: the 39-dim episodes robots still record no longer fit.
    learner.service.ingest.set_features(PolicyFeatures(state_dim=7, action_dim=4))
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, chunks_of(make_episode(20, seed=44)))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "(T, 7)" in error.value.details()
    assert len(learner.service.store) == 1


def test_tasks_are_those_of_the_offline_demonstrations(start_learner: StartLearner, tmp_path: Path) -> None:
    # No policy constrains tasks (instruction-conditioned) and replay.tasks is empty: the demonstrations decide.
    demos = EpisodeStore(tmp_path / "demos", create=True, durable=False)
    demos.append(make_episode(20, seed=45, source=Source.OFFLINE, task="reach-v3", robot_id="teleop-station"))
    learner = start_learner(ingest=small_chunks(), replay=ReplayConfig(offline_stores=[str(demos.root)]))
    stub = learner.fleet()
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, chunks_of(make_episode(20, seed=46, task="invented-task")))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invented-task" in error.value.details() and "reach-v3" in error.value.details()
    assert learner.service.store.tasks() == ["reach-v3"]
    assert upload(stub, chunks_of(make_episode(20, seed=47, task="reach-v3"))).committed


# Roles -------------------------------------------------------------------------------------------------------


def test_offline_episodes_need_the_demonstrator_role(start_learner: StartLearner) -> None:
    learner = start_learner(ingest=small_chunks())
    stub = learner.fleet()
    demo = make_episode(20, seed=12, robot_id="teleop-station", source=Source.OFFLINE)
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, chunks_of(demo, 1024), robot_id="robot-1")
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'demonstrator'" in error.value.details() and "'robot'" in error.value.details()
    # A demonstrator token may not pass off an online episode, and an operator token uploads nothing.
    online = make_episode(20, seed=48, robot_id="teleop-station")
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, chunks_of(online), robot_id="teleop-station")
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED and "'robot'" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, chunks_of(make_episode(20, seed=49, robot_id="operator-1")), robot_id="operator-1")
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED and "'operator'" in error.value.details()
    assert_nothing_written(learner)
    assert upload(stub, chunks_of(demo), robot_id="teleop-station").committed


# Per-robot limits --------------------------------------------------------------------------------------------


def test_tiny_chunks_are_refused_except_the_last(start_learner: StartLearner) -> None:
    learner = start_learner()  # ingest.min_chunk_bytes as users run it: 64 KiB
    stub = learner.fleet()
    episode = make_episode(100, seed=50, image_size=(32, 32))
    assert len(encode_episode(episode)) > 2 * 64 * 1024
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, chunks_of(episode, 1024))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ingest.min_chunk_bytes" in error.value.details()
    assert_nothing_written(learner)
    # Chunks of exactly the minimum, with a smaller last one, and a small episode in one chunk go through.
    assert upload(stub, chunks_of(episode, 64 * 1024)).committed
    assert upload(stub, chunks_of(make_episode(5, seed=51))).committed


def test_staged_bytes_are_capped_per_robot(start_learner: StartLearner) -> None:
    quota = 64 * 1024
    learner = start_learner(
        ingest=small_chunks(max_chunk_bytes=4096, max_episode_bytes=quota, max_staged_bytes_per_robot=quota)
    )
    stub = learner.fleet()
    ingest = learner.service.ingest
    idle = chunks_of(make_episode(150, seed=52, cameras=()), 4096)  # 8 chunks
    running = chunks_of(make_episode(200, seed=53, cameras=()), 4096)  # 11 chunks
    third = chunks_of(make_episode(150, seed=54, cameras=()), 4096)  # 8 chunks
    assert not upload(stub, idle[:-1]).committed  # 7 x 4 KiB staged, nobody resuming it
    held = HeldStream(running[:9])  # 9 x 4 KiB in a stream that stays open
    future = stub.UploadEpisode.future(iter(held), metadata=auth(), timeout=20)
    wait_for(lambda: ingest.staged_bytes("robot-1") == quota)
    # A third upload: the idle staged one is dropped to make room, then the two running ones pass the quota.
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, third)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "ingest.max_staged_bytes_per_robot" in error.value.details()
    assert ingest.staged_bytes("robot-1") == quota
    assert learner.service.staging.episode_ids() == [third[0].episode_id]  # the running one is in memory

    def received(chunks: Sequence[fleet_pb2.EpisodeChunk]) -> list[int]:
        request = fleet_pb2.QueryUploadRequest(episode_id=chunks[0].episode_id)
        return list(stub.QueryUpload(request, metadata=auth(), timeout=5).received_seqs)

    assert received(third) == list(range(7))  # what the cut upload sent within the quota is staged
    assert received(idle) == []  # the robot re-sends this one from chunk 0
    # The quota is per robot: another robot uploads meanwhile.
    other = make_episode(200, seed=55, cameras=(), robot_id="robot-2")
    assert upload(stub, chunks_of(other, 4096), robot_id="robot-2").committed
    # Every upload can still be finished, one after the other.
    held.release.set()
    assert not future.result().committed
    assert upload(stub, third[7:]).committed
    assert upload(stub, [c for c in running if c.seq not in set(received(running))]).committed
    assert upload(stub, idle).committed
    assert ingest.staged_bytes("robot-1") == 0
    assert learner.service.staging.episode_ids() == []


class SteppedStream:
    """Sends `chunks[:first]`, then waits for `go` before sending the rest (a robot on a slow link)."""

    def __init__(self, chunks: Sequence[fleet_pb2.EpisodeChunk], first: int) -> None:
        self.chunks = list(chunks)
        self.first = first
        self.go = threading.Event()

    def __iter__(self) -> Iterator[fleet_pb2.EpisodeChunk]:
        yield from self.chunks[: self.first]
        self.go.wait(30)
        yield from self.chunks[self.first :]


@pytest.mark.parametrize(
    ("limits", "key"),
    [
        ({"max_upload_s": 100.0}, "ingest.max_upload_s"),
        ({"min_upload_bytes_per_s": 1000.0, "upload_rate_grace_s": 5.0}, "ingest.min_upload_bytes_per_s"),
    ],
)
def test_a_slow_upload_is_cut_and_resumes(
    start_learner: StartLearner, limits: dict[str, float], key: str
) -> None:
    learner = start_learner(ingest=small_chunks(**limits))
    now = [1000.0]
    learner.service.ingest.clock = lambda: now[0]  # the learner's clock, moved by the test
    stub = learner.fleet()
    chunks = chunks_of(make_episode(40, seed=55), 1024)
    stream = SteppedStream(chunks, first=2)
    future = stub.UploadEpisode.future(iter(stream), metadata=auth(), timeout=20)
    wait_for(lambda: learner.service.ingest.staged_bytes("robot-1") == 2048)  # the learner holds 2 chunks
    now[0] += 101.0  # 3 KiB in 101 s: past the lifetime, and 30 bytes/s
    stream.go.set()
    with pytest.raises(grpc.RpcError) as error:
        future.result()
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and key in error.value.details()
    assert learner.service.ingest.counters.cut == 1
    query = stub.QueryUpload(
        fleet_pb2.QueryUploadRequest(episode_id=chunks[0].episode_id), metadata=auth(), timeout=5
    )
    assert list(query.received_seqs) == [0, 1, 2]  # staged, the chunk that arrived late included
    assert upload(stub, chunks[3:]).committed


def test_abandoned_staging_is_pruned_in_the_background(start_learner: StartLearner) -> None:
    learner = start_learner(
        ingest=small_chunks(staging_prune_interval_s=0.05, staging_abandoned_after_s=3600.0)
    )
    stub = learner.fleet()
    abandoned = chunks_of(make_episode(40, seed=56), 1024)
    recent = chunks_of(make_episode(40, seed=57), 1024)
    upload(stub, abandoned[:3])
    upload(stub, recent[:3])
    staging = learner.service.staging
    assert staging.episode_ids() == sorted([abandoned[0].episode_id, recent[0].episode_id])
    two_hours_ago = time.time() - 7200
    os.utime(staging.root / abandoned[0].episode_id / META_NAME, (two_hours_ago, two_hours_ago))
    wait_for(lambda: staging.episode_ids() == [recent[0].episode_id])  # removed by the pruner, the other kept
    assert learner.service.ingest.counters.pruned == 1
    assert learner.service.ingest.staged_bytes("robot-1") == 3 * 1024
    learner.service.stop()
    assert not [t for t in threading.enumerate() if t.name == "ingest-staging-pruner"]


# Resume after corruption -------------------------------------------------------------------------------------


def test_a_damaged_staged_chunk_makes_the_robot_resend_from_chunk_0(start_learner: StartLearner) -> None:
    learner = start_learner(ingest=small_chunks())
    stub = learner.fleet()
    episode = make_episode(40, seed=58)
    chunks = chunks_of(episode, 1024)
    assert not upload(stub, chunks[:5]).committed
    # A power loss: the staged file of chunk 2 comes back zero-filled (its length intact).
    damaged = learner.service.staging.root / episode.episode_id / "000002.chunk"
    damaged.write_bytes(bytes(damaged.stat().st_size))
    query = stub.QueryUpload(
        fleet_pb2.QueryUploadRequest(episode_id=episode.episode_id), metadata=auth(), timeout=5
    )
    assert list(query.received_seqs) == [0, 1, 2, 3, 4]  # nothing can tell yet
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, chunks[5:])
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "chunk 0" in error.value.details()
    query = stub.QueryUpload(
        fleet_pb2.QueryUploadRequest(episode_id=episode.episode_id), metadata=auth(), timeout=5
    )
    assert not query.committed and list(query.received_seqs) == []  # the staged chunks were dropped
    assert upload(stub, chunks).committed  # what the robot's uploader does next: everything from chunk 0
    np.testing.assert_array_equal(
        learner.service.store.get(episode.episode_id).steps[ACTION], episode.steps[ACTION]
    )
