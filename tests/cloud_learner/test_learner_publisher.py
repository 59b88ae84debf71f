"""Checkpoint store, announcements and fetches over real gRPC on 127.0.0.1."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from learner_fixtures import RunningLearner, auth, make_checkpoint_blob

from cloud_learner.checkpoint_store import CheckpointRecord, CheckpointStore
from cloud_learner.config import TrainerConfig
from cloud_learner.publisher import PreparedCheckpoint
from sop.checkpoint import BLOB_NAME, CheckpointError, checkpoint_from_bytes
from sop.fleet_trust import CheckpointVerifier, SignatureError, create_fleet_trust
from sop.v1 import fleet_pb2

StartLearner = Callable[..., RunningLearner]


def publish(learner: RunningLearner, version: int, size: int = 1000) -> bytes:
    blob = make_checkpoint_blob(version, version - 1, size=size, seed=version)
    record = learner.service.checkpoints.publish(blob)
    learner.service.publisher.announce(record, blob)
    return blob


def fetch(
    learner: RunningLearner, version: int = 0, offset: int = 0, robot_id: str = "robot-1"
) -> tuple[bytes, list[fleet_pb2.CheckpointChunk]]:
    chunks = list(
        learner.fleet().FetchCheckpoint(
            fleet_pb2.FetchCheckpointRequest(version=version, offset=offset),
            metadata=auth(robot_id),
            timeout=20,
        )
    )
    return b"".join(c.data for c in chunks), chunks


def test_store_keeps_the_last_n_and_survives_a_reopen(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep_last=2)
    blobs = {v: make_checkpoint_blob(v, v - 1, seed=v) for v in (1, 2, 3)}
    for version, blob in blobs.items():
        record = store.publish(blob, train_step=25 * version, metrics={"loss": 0.5})
        assert record.sha256 == hashlib.sha256(blob).hexdigest()
    assert store.versions() == [2, 3]
    reopened = CheckpointStore(tmp_path, keep_last=2)
    latest = reopened.latest()
    assert latest is not None and latest.version == 3 and latest.train_step == 75
    assert reopened.read_blob(3) == blobs[3]
    # The directory is a checkpoint in sop/checkpoint.py's format.
    assert checkpoint_from_bytes((tmp_path / "v000003" / BLOB_NAME).read_bytes()).manifest.version == 3
    with pytest.raises(CheckpointError):
        reopened.publish(make_checkpoint_blob(3))  # versions only go up


def test_store_ignores_a_half_written_version_and_detects_damage(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.publish(make_checkpoint_blob(1, 0))
    (tmp_path / ".v000002.tmp-crashed").mkdir()  # a publish killed mid-way
    (tmp_path / ".v000002.tmp-crashed" / BLOB_NAME).write_bytes(b"partial")
    blob_path = tmp_path / "v000001" / BLOB_NAME
    damaged = bytearray(blob_path.read_bytes())
    damaged[-1] ^= 0xFF
    blob_path.write_bytes(bytes(damaged))
    reader = CheckpointStore(tmp_path)
    assert reader.versions() == [1]  # the half-written version is invisible...
    assert (tmp_path / ".v000002.tmp-crashed").exists()  # ...and a reader leaves the writer's files alone
    reopened = CheckpointStore(tmp_path)
    assert reopened.remove_leftover_temporaries() == 1
    assert not (tmp_path / ".v000002.tmp-crashed").exists()
    with pytest.raises(CheckpointError, match="sha256"):
        reopened.read_blob(1)


def test_prepared_frames_cover_the_blob_from_any_offset() -> None:
    blob = make_checkpoint_blob(1, 0, size=700_000)  # 2.8 MB: three 1 MiB pieces
    record = CheckpointRecord(1, 0, hashlib.sha256(blob).hexdigest(), len(blob), created_at=0.0)
    prepared = PreparedCheckpoint.prepare(record, blob)
    for offset in (0, 1, (1 << 20) - 1, 1 << 20, len(blob) - 5, len(blob)):
        chunks = [fleet_pb2.CheckpointChunk.FromString(f) for f in prepared.frames_from(offset)]
        assert b"".join(c.data for c in chunks) == blob[offset:]
        assert all(len(c.data) <= 1 << 20 for c in chunks)
        position = offset
        for chunk in chunks:
            assert chunk.offset == position and chunk.total_bytes == len(blob)
            position += len(chunk.data)


def test_watch_announces_the_newest_at_once_then_each_new_version(start_learner: StartLearner) -> None:
    learner = start_learner()
    publish(learner, 1)
    stream = learner.fleet().WatchPolicy(
        fleet_pb2.WatchPolicyRequest(robot_id="robot-1", current_version=0), metadata=auth(), timeout=20
    )
    first = next(stream)
    assert first.version == 1 and first.parent_version == 0
    blob = publish(learner, 2)
    second = next(stream)
    assert second.version == 2
    assert second.sha256 == hashlib.sha256(blob).hexdigest() and second.size_bytes == len(blob)
    stream.cancel()


def test_announcements_are_signed_with_the_learner_key_also_after_a_restart(
    start_learner: StartLearner, tmp_path: Path
) -> None:
    trust = create_fleet_trust(tmp_path / "fleet", ["robot-1"])
    verifier = CheckpointVerifier.from_file(trust.robots["robot-1"].checkpoint_public_key)
    learner = start_learner(trainer=TrainerConfig(enabled=False, signing_key_file=str(trust.signing_key)))

    def announced(current_version: int) -> fleet_pb2.PolicyAnnouncement:
        stream = learner.fleet().WatchPolicy(
            fleet_pb2.WatchPolicyRequest(robot_id="robot-1", current_version=current_version),
            metadata=auth(),
            timeout=20,
        )
        announcement: fleet_pb2.PolicyAnnouncement = next(stream)
        stream.cancel()
        return announcement

    def verify(announcement: fleet_pb2.PolicyAnnouncement) -> None:
        verifier.verify(
            announcement.signature,
            announcement.version,
            announcement.parent_version,
            announcement.sha256,
            announcement.size_bytes,
        )

    publish(learner, 1)
    blob = publish(learner, 2)
    second = announced(1)
    assert second.version == 2 and second.sha256 == hashlib.sha256(blob).hexdigest()
    verify(second)
    learner.restart()  # the newest version comes back from disk and is announced signed again
    again = announced(0)
    assert again.version == 2
    verify(again)
    # The signature covers the announced hash: the same signature over other bytes does not verify.
    forged = fleet_pb2.PolicyAnnouncement()
    forged.CopyFrom(again)
    forged.sha256 = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(SignatureError):
        verify(forged)


def test_announcements_are_unsigned_without_a_signing_key(start_learner: StartLearner) -> None:
    learner = start_learner()
    publish(learner, 1)
    stream = learner.fleet().WatchPolicy(
        fleet_pb2.WatchPolicyRequest(robot_id="robot-1", current_version=0), metadata=auth(), timeout=20
    )
    assert next(stream).signature == b""
    stream.cancel()


def test_watch_streams_end_when_the_learner_stops(start_learner: StartLearner) -> None:
    learner = start_learner()
    publish(learner, 1)
    stream = learner.fleet().WatchPolicy(
        fleet_pb2.WatchPolicyRequest(robot_id="robot-1", current_version=1), metadata=auth(), timeout=20
    )
    assert next(stream).version == 1
    ended = threading.Event()

    def drain() -> None:
        try:
            for _ in stream:
                pass
        except grpc.RpcError:
            pass
        ended.set()

    threading.Thread(target=drain, daemon=True).start()
    learner.service.stop(grace_s=0.5)
    assert ended.wait(5)


def test_fetch_serves_verified_bytes_resumes_and_refuses_unknown_versions(
    start_learner: StartLearner,
) -> None:
    learner = start_learner()
    blob = publish(learner, 1, size=600_000)  # 2.4 MB
    data, chunks = fetch(learner)
    assert data == blob
    assert len(chunks) == 3 and all(len(c.data) <= 1 << 20 for c in chunks)
    assert all(c.sha256 == hashlib.sha256(blob).hexdigest() for c in chunks)
    resumed, _ = fetch(learner, version=1, offset=1_500_000)
    assert resumed == blob[1_500_000:]
    with pytest.raises(grpc.RpcError) as error:
        fetch(learner, version=7)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        fetch(learner, version=1, offset=len(blob) + 1)
    assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(grpc.RpcError) as error:
        list(learner.fleet().FetchCheckpoint(fleet_pb2.FetchCheckpointRequest(version=1), timeout=5))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_many_robots_fetch_the_same_checkpoint_at_once(start_learner: StartLearner) -> None:
    learner = start_learner()
    blob = publish(learner, 1, size=500_000)
    results: list[bytes] = []
    lock = threading.Lock()

    def one(robot_id: str) -> None:
        data, _ = fetch(learner, robot_id=robot_id)
        with lock:
            results.append(data)

    # Four robots, two fetches each: as many as `server.stream_limits.fetch` lets one robot hold.
    threads = [threading.Thread(target=one, args=(f"robot-{1 + i % 4}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and all(r == blob for r in results)


def test_a_restarted_learner_announces_its_newest_checkpoint(start_learner: StartLearner) -> None:
    learner = start_learner()
    publish(learner, 1)
    publish(learner, 2)
    learner.restart()
    register = learner.fleet().Register(
        fleet_pb2.RegisterRequest(robot_id="robot-1"), metadata=auth(), timeout=5
    )
    assert register.current_policy_version == 2


def test_pinning_to_an_older_version_republishes_it_and_holds_the_fleet_there(
    start_learner: StartLearner,
) -> None:
    learner = start_learner(trainer=TrainerConfig(enabled=False, keep_last=3))
    for version in (1, 2, 3):
        publish(learner, version)
    publisher = learner.service.publisher
    stream = learner.fleet().WatchPolicy(
        fleet_pb2.WatchPolicyRequest(robot_id="robot-1", current_version=3), metadata=auth(), timeout=30
    )
    assert next(stream).version == 3
    original = checkpoint_from_bytes(learner.service.checkpoints.read_blob(1))
    pin = publisher.pin(1, by="root", reason="v2 and v3 drop the cup")
    # Robots take only newer versions: v1's weights come back as v4, parent 1.
    assert (pin.version, pin.requested, pin.by) == (4, 1, "root")
    rolled_back = next(stream)
    assert (rolled_back.version, rolled_back.parent_version) == (4, 1)
    blob, _ = fetch(learner)  # "the newest" is the fleet's version
    republished = checkpoint_from_bytes(blob)
    assert republished.manifest.extra["republished_from"] == 1
    assert republished.tensors["weight"].equal(original.tensors["weight"])
    # The trainer goes on: its versions are stored, not announced, and the pinned one is never pruned.
    for _ in range(4):
        publisher.publish_next(lambda number: make_checkpoint_blob(number, number - 1, seed=number))
    assert publisher.latest is not None and publisher.latest.version == 8
    assert publisher.fleet_version is not None and publisher.fleet_version.version == 4
    assert 4 in learner.service.checkpoints.versions()
    # A restarted learner keeps the pin.
    learner.restart()
    publisher = learner.service.publisher
    assert publisher.pin_state == pin and publisher.fleet_version is not None
    assert publisher.fleet_version.version == 4
    stream = learner.fleet().WatchPolicy(
        fleet_pb2.WatchPolicyRequest(robot_id="robot-1", current_version=4), metadata=auth(), timeout=30
    )
    assert next(stream).version == 4
    newest = publisher.unpin(by="root")
    assert newest is not None and newest.version == 8 and next(stream).version == 8
    assert publisher.pin_state is None
    stream.cancel()


def test_pinning_a_version_the_learner_no_longer_holds_is_refused(start_learner: StartLearner) -> None:
    from cloud_learner.publisher import CheckpointNotFoundError

    learner = start_learner(trainer=TrainerConfig(enabled=False, keep_last=2))
    for version in (1, 2, 3):
        publish(learner, version)
    with pytest.raises(CheckpointNotFoundError, match=r"v1 is not held \(kept: \[2, 3\]\)"):
        learner.service.publisher.pin(1, by="root")
    assert learner.service.publisher.pin_state is None
