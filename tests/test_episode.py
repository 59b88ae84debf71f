from __future__ import annotations

import numpy as np
import pytest

from sop.episode import (
    ACTION,
    IMAGE_PREFIX,
    INTERVENTION,
    OPERATOR_FRAMES,
    POLICY_ACTION,
    POLICY_VERSION,
    REWARD,
    STATE,
    TIMESTAMP,
    Episode,
    EpisodeError,
    Outcome,
    check_episode_id,
    check_step_key,
    encode_operator_frames,
    new_episode_id,
    operator_frames,
)
from sop.safe_logging import client_str


def make_episode(num_steps: int = 5) -> Episode:
    steps = {
        STATE: np.zeros((num_steps, 39), np.float32),
        ACTION: np.zeros((num_steps, 4), np.float32),
        POLICY_ACTION: np.zeros((num_steps, 4), np.float32),
        INTERVENTION: np.zeros(num_steps, np.bool_),
        POLICY_VERSION: np.zeros(num_steps, np.int64),
        TIMESTAMP: np.arange(num_steps, dtype=np.float64),
        REWARD: np.zeros(num_steps, np.float32),
        "observation.images.top": np.zeros((num_steps, 8, 8, 3), np.uint8),
    }
    return Episode(
        new_episode_id(), "robot-1", "reach-v3", "reach the goal", Outcome.SUCCESS, 0.0, 1.0, steps
    )


def test_valid_episode_passes() -> None:
    episode = make_episode()
    episode.validate()
    assert episode.num_steps == 5
    assert episode.camera_names == ["top"]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e.steps.pop(POLICY_ACTION), POLICY_ACTION),
        (lambda e: e.steps.__setitem__(ACTION, np.zeros((5, 4), np.float64)), ACTION),
        (lambda e: e.steps.__setitem__(STATE, np.full((5, 39), np.nan, np.float32)), STATE),
        (lambda e: e.steps.__setitem__(REWARD, np.zeros(4, np.float32)), REWARD),
        (
            lambda e: e.steps.__setitem__("observation.images.top", np.zeros((5, 8, 8), np.uint8)),
            "observation.images.top",
        ),
        # A key the client made up is named quoted (sop.safe_logging.client_str).
        (lambda e: e.steps.__setitem__("pickle_me", np.zeros(5, np.float32)), "'pickle_me'"),
        (lambda e: setattr(e, "episode_id", "not-a-uuid"), "episode_id"),
        (lambda e: setattr(e, "episode_id", "../episodes/zz"), "episode_id"),
        (lambda e: setattr(e, "episode_id", e.episode_id.upper()), "episode_id"),  # not canonical
        (lambda e: setattr(e, "extra", {"note": 3}), "extra.'note'"),
        (lambda e: setattr(e, "extra", {f"k{i}": "" for i in range(300)}), "extra"),
        (lambda e: setattr(e, "task", ""), "task"),
        (lambda e: setattr(e, "ended_at", -1.0), "ended_at"),
    ],
)
def test_schema_violations_name_the_field(mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    episode = make_episode()
    mutate(episode)
    with pytest.raises(EpisodeError) as info:
        episode.validate()
    assert info.value.field_name == field
    assert field in str(info.value)


@pytest.mark.parametrize(
    "camera",
    [
        "x/../../../../outside",
        "../episodes/zz",
        "..",
        ".",
        "",
        "top\nforged log line",
        "top\u202e",  # bidi override
        "a" * 65,
        "caméra",
        "top.left",
        "/abs",
    ],
)
def test_camera_names_off_the_whitelist_are_refused_naming_the_key(camera: str) -> None:
    episode = make_episode()
    key = IMAGE_PREFIX + camera
    episode.steps[key] = episode.steps.pop("observation.images.top")
    with pytest.raises(EpisodeError, match="camera name") as info:
        episode.validate()
    assert info.value.field_name == client_str(key)
    assert "\n" not in str(info.value) and "\u202e" not in str(info.value)


@pytest.mark.parametrize("camera", ["top", "wrist_1", "Cam-2", "a" * 64])
def test_camera_names_on_the_whitelist_pass(camera: str) -> None:
    episode = make_episode()
    episode.steps[IMAGE_PREFIX + camera] = episode.steps.pop("observation.images.top")
    episode.validate()
    assert check_step_key(IMAGE_PREFIX + camera) == IMAGE_PREFIX + camera


def test_only_canonical_uuids_are_episode_ids() -> None:
    episode_id = new_episode_id()
    assert check_episode_id(episode_id) == episode_id
    for bad in (
        episode_id.upper(),
        "{" + episode_id + "}",
        "urn:uuid:" + episode_id,
        episode_id.replace("-", ""),
    ):
        with pytest.raises(EpisodeError, match="canonical"):
            check_episode_id(bad)
    with pytest.raises(EpisodeError, match="not a UUID"):
        check_episode_id("../" + episode_id)


def test_operator_frames_round_trip_as_half_open_ranges_per_operator() -> None:
    drivers: list[str | None] = [None, "alice", "alice", None, "local:simulated", "alice", "bob/../x"]
    text = encode_operator_frames(drivers)
    episode = make_episode(7)
    episode.steps[INTERVENTION] = np.array([d is not None for d in drivers])
    episode.extra = {OPERATOR_FRAMES: text}
    episode.validate()
    assert operator_frames(episode.extra, 7, episode.steps[INTERVENTION]) == {
        "alice": [(1, 3), (5, 6)],
        "local:simulated": [(4, 5)],
        "unknown": [(6, 7)],  # an id off the pattern is not copied into the record
    }
    assert encode_operator_frames([None, None]) == "{}"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "is not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"al ice": [[1, 2]]}', "is not 1-64 of"),
        ('{"alice": []}', "non-empty list"),
        ('{"alice": [[2, 9]]}', "not a range within 0..5"),
        ('{"alice": [[3, 2]]}', "not a range"),
        ('{"alice": [[1.0, 2]]}', "not a range"),
        ('{"alice": [[3, 4], [1, 2]]}', "not in order"),
        ('{"alice": [[1, 3]], "bob": [[2, 4]]}', "overlap"),
        ('{"alice": [[0, 2]]}', "include steps the policy drove"),
    ],
)
def test_malformed_operator_frames_are_refused_naming_the_problem(text: str, problem: str) -> None:
    episode = make_episode(5)
    episode.steps[INTERVENTION] = np.array([False, True, True, True, False])
    episode.extra = {OPERATOR_FRAMES: text}
    with pytest.raises(EpisodeError, match=problem) as caught:
        episode.validate()
    assert caught.value.field_name == f"extra.{OPERATOR_FRAMES}"


def test_shape_only_validation_skips_the_frames_it_cannot_see() -> None:
    episode = make_episode(5)  # no intervention at all, as a stand-in's zeros would say
    episode.extra = {OPERATOR_FRAMES: '{"alice": [[1, 3]]}'}
    episode.validate(check_values=False)
    with pytest.raises(EpisodeError, match="policy drove"):
        episode.validate()
