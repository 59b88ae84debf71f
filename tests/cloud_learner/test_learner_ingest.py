"""Episode ingest over real gRPC on 127.0.0.1: exactly-once commits, refusals that change nothing, resume."""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from learner_fixtures import HeldStream, RunningLearner, auth, chunks_of, upload, wait_for

from cloud_learner.config import IngestConfig
from sop.credentials import call_metadata
from sop.data.codec import encode_episode
from sop.data.synthetic_episodes import make_episode
from sop.data.upload_chunks import split_into_chunks
from sop.episode import ACTION, Source
from sop.v1 import fleet_pb2

StartLearner = Callable[..., RunningLearner]


def assert_nothing_written(learner: RunningLearner) -> None:
    assert len(learner.service.store) == 0
    assert learner.service.staging.episode_ids() == []


def test_upload_commits_the_episode_and_answers_after_the_commit(start_learner: StartLearner) -> None:
    learner = start_learner()
    episode = make_episode(40, seed=1)
    receipt = upload(learner.fleet(), chunks_of(episode, max_chunk_bytes=4096))
    assert receipt.committed and not receipt.duplicate
    assert receipt.num_steps == 40
    stored = learner.service.store.get(episode.episode_id)
    np.testing.assert_array_equal(stored.steps[ACTION], episode.steps[ACTION])
    assert learner.service.staging.episode_ids() == []


def test_duplicate_uploads_commit_once(start_learner: StartLearner) -> None:
    learner = start_learner()
    stub = learner.fleet()
    episode = make_episode(30, seed=2)
    chunks = chunks_of(episode, max_chunk_bytes=2048)
    receipts: list[fleet_pb2.UploadReceipt] = []
    lock = threading.Lock()

    def send() -> None:
        receipt = upload(stub, chunks)
        with lock:
            receipts.append(receipt)

    threads = [threading.Thread(target=send) for _ in range(6)]
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
    learner = start_learner()
    chunks = chunks_of(make_episode(20, seed=3), max_chunk_bytes=1024)
    chunks[-1].sha256 = "0" * 64
    with pytest.raises(grpc.RpcError) as error:
        upload(learner.fleet(), chunks)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sha256" in error.value.details()
    assert_nothing_written(learner)


def test_malformed_episode_is_refused_naming_the_field(start_learner: StartLearner) -> None:
    learner = start_learner()
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
    learner = start_learner()
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
    learner = start_learner(ingest=IngestConfig(max_chunk_bytes=4096, max_episode_bytes=64 * 1024))
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
    learner = start_learner()
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
    learner = start_learner()
    stub = learner.fleet()
    foreign = make_episode(20, seed=11, robot_id="robot-2")
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, chunks_of(foreign), robot_id="robot-1")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "robot_id" in error.value.details()
    assert_nothing_written(learner)
    # A demonstration (offline) may name another recorder; the robot's own online episode is fine.
    demo = make_episode(20, seed=12, robot_id="teleop-station", source=Source.OFFLINE)
    assert upload(stub, chunks_of(demo), robot_id="robot-1").committed
    assert upload(stub, chunks_of(foreign), robot_id="robot-2").committed


def test_register_checks_the_robot_id_and_reports_limits(start_learner: StartLearner) -> None:
    learner = start_learner()
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
    learner = start_learner()
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
    learner = start_learner()
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
    learner = start_learner(ingest=IngestConfig(max_pending_uploads=1))
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
        ingest=IngestConfig(max_chunk_bytes=4096, max_episode_bytes=48 * 1024, max_pending_bytes=48 * 1024)
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
    learner = start_learner()
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

    learner = start_learner()
    stub = health_pb2_grpc.HealthStub(learner.channel())
    for service in ("", "sop.v1.Fleet", "sop.v1.Operator"):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_heartbeat_records_the_robot(start_learner: StartLearner) -> None:
    learner = start_learner()
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
