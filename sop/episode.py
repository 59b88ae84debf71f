"""The episode schema: the one definition of what a robot records and the learner trains on.

One record per control step, kept as column arrays (one array per key, time first) because that is how
the zarr store, the wire codec and the window sampler all want it. Keeping both the policy's proposal
(`policy_action`) and the executed `action`, the `intervention` flag and the `policy_version` per frame is
what HG-DAgger and RECAP need and what no peer keeps.
"""

from __future__ import annotations

import enum
import itertools
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from sop.safe_logging import client_str

# Per-step keys every episode carries. Images are optional and named `observation.images.<camera>`.
# How these storage names map to the robot's `Observation` and the policy's input dict: `sop.policies.base`.
STATE: Final = "observation.state"
IMAGE_PREFIX: Final = "observation.images."
ACTION: Final = "action"
POLICY_ACTION: Final = "policy_action"
INTERVENTION: Final = "intervention"
POLICY_VERSION: Final = "policy_version"
TIMESTAMP: Final = "timestamp"
REWARD: Final = "reward"

REQUIRED_STEP_KEYS: Final = (STATE, ACTION, POLICY_ACTION, INTERVENTION, POLICY_VERSION, TIMESTAMP, REWARD)

# The dtype each per-step key must have, and whether its values must be finite.
STEP_DTYPES: Final[dict[str, np.dtype]] = {
    STATE: np.dtype(np.float32),
    ACTION: np.dtype(np.float32),
    POLICY_ACTION: np.dtype(np.float32),
    INTERVENTION: np.dtype(np.bool_),
    POLICY_VERSION: np.dtype(np.int64),
    TIMESTAMP: np.dtype(np.float64),
    REWARD: np.dtype(np.float32),
}
IMAGE_DTYPE: Final = np.dtype(np.uint8)

# Upper bounds a well-behaved robot never reaches; they protect the learner from a runaway or hostile client.
MAX_STEPS: Final = 100_000
MAX_STATE_DIM: Final = 4096
MAX_ACTION_DIM: Final = 256
MAX_IMAGE_SIDE: Final = 1024
MAX_CAMERAS: Final = 8
# `extra` is free-form text kept in the episode's metadata (never a path or a key): bounded, strings only.
MAX_EXTRA_ENTRIES: Final = 256
MAX_EXTRA_CHARS: Final = 65_536

# A camera name becomes a directory name in the episode store and a key in the policy, so it is held to a
# whitelist: no separators, no dots (no `..`), nothing a filesystem or a log line treats specially.
CAMERA_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Outcome(enum.StrEnum):
    """How an episode ended: from the simulator's success flag, or from an operator's label."""

    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"
    ABORTED = "aborted"


class Source(enum.StrEnum):
    """Where an episode came from; the learner mixes the two per task (SOP data mixing)."""

    ONLINE = "online"  # recorded by a robot running the policy (with operator interventions)
    OFFLINE = "offline"  # a demonstration (scripted expert, teleoperation, an imported LeRobotDataset)


class EpisodeError(ValueError):
    """An episode that breaks the schema. The message names the field and what is wrong with it."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field_name = field_name
        self.reason = reason


def check_episode_id(episode_id: object) -> str:
    """Return `episode_id` if it is a UUID in canonical form (lowercase, hyphenated), else `EpisodeError`.

    The id names the episode's directory in every store, so only the 36-character canonical spelling
    `new_episode_id` produces is accepted: `uuid.UUID` alone also takes braces, `urn:uuid:` and upper case.
    """
    try:
        canonical = str(uuid.UUID(episode_id))  # type: ignore[arg-type]
    except (ValueError, AttributeError, TypeError):
        raise EpisodeError("episode_id", f"{client_str(episode_id)} is not a UUID") from None
    if canonical != episode_id:
        raise EpisodeError(
            "episode_id", f"{client_str(episode_id)} is not a UUID in canonical form (use {canonical!r})"
        )
    return canonical


def check_step_key(key: object) -> str:
    """Return `key` if it is a per-step key of the schema, else `EpisodeError` naming it (quoted, cut).

    A key becomes an array directory in the episode store, so this is the whitelist every path is built
    from: the fixed keys, or `observation.images.<camera>` with a camera name of `CAMERA_NAME_PATTERN`.
    """
    if not isinstance(key, str):
        raise EpisodeError(client_str(key), f"step key must be a string, got {type(key).__name__}")
    if key in STEP_DTYPES:
        return key
    if key.startswith(IMAGE_PREFIX):
        camera = key.removeprefix(IMAGE_PREFIX)
        if CAMERA_NAME_PATTERN.fullmatch(camera) is None:
            raise EpisodeError(
                client_str(key),
                "camera name must be 1-64 characters of letters, digits, '_' or '-' (e.g. 'top', 'wrist_1')",
            )
        return key
    raise EpisodeError(client_str(key), "is not a key of the episode schema")


def check_extra(extra: object) -> dict[str, str]:
    """Return `extra` as a dict if it maps strings to strings within the caps, else `EpisodeError`."""
    if not isinstance(extra, dict):
        raise EpisodeError("extra", f"must be a mapping of strings, got {type(extra).__name__}")
    if len(extra) > MAX_EXTRA_ENTRIES:
        raise EpisodeError("extra", f"{len(extra)} entries exceed the cap of {MAX_EXTRA_ENTRIES}")
    for key, value in extra.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise EpisodeError(f"extra.{client_str(key, 64)}", "keys and values must be strings")
        if len(key) + len(value) > MAX_EXTRA_CHARS:
            raise EpisodeError(
                f"extra.{client_str(key, 64)}", f"entry is longer than {MAX_EXTRA_CHARS} characters"
            )
    return dict(extra)


# Which operator drove which frames: `extra[OPERATOR_FRAMES]` holds JSON `{"<operator id>": [[start, stop], ...]}`
# with half-open step ranges, sorted, not overlapping, every frame in them an intervention frame. The id is
# the console user's name, or `local:<kind>` for an input on the robot's own machine (a leader arm, the
# simulated operator). Kept in `extra` (text metadata) rather than a per-step column because it changes a
# few times per episode at most and is read by people and by effort accounting, not by training.
OPERATOR_FRAMES: Final = "operator_frames"
OPERATOR_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.@:-]{1,64}")
MAX_OPERATOR_RANGES: Final = 1024


def encode_operator_frames(drivers: list[str | None]) -> str:
    """The `extra[OPERATOR_FRAMES]` text for per-step drivers (None: the policy drove that step).

    An id that is not of `OPERATOR_ID_PATTERN` is recorded as `unknown` rather than copied."""
    ranges: dict[str, list[list[int]]] = {}
    start = 0
    for index in range(1, len(drivers) + 1):
        if index < len(drivers) and drivers[index] == drivers[start]:
            continue
        driver = drivers[start]
        if driver is not None:
            name = driver if OPERATOR_ID_PATTERN.fullmatch(driver) else "unknown"
            ranges.setdefault(name, []).append([start, index])
        start = index
    return json.dumps(ranges, separators=(",", ":"), sort_keys=True)


def operator_frames(
    extra: dict[str, str], num_steps: int, intervention: np.ndarray | None = None
) -> dict[str, list[tuple[int, int]]]:
    """The checked `{operator id: [(start, stop), ...]}` of an episode; {} when it records none.

    `EpisodeError` when the entry is not JSON of that shape, names an id outside `OPERATOR_ID_PATTERN`, has
    ranges outside the episode's `num_steps`, overlapping or out of order, or (given the episode's
    `intervention` flags) attributes a frame the policy drove."""
    text = extra.get(OPERATOR_FRAMES)
    if text is None:
        return {}
    field_name = f"extra.{OPERATOR_FRAMES}"
    try:
        document = json.loads(text)
    except ValueError:
        raise EpisodeError(field_name, "is not JSON") from None
    if not isinstance(document, dict):
        raise EpisodeError(field_name, 'must be a JSON object {"<operator id>": [[start, stop], ...]}')
    result: dict[str, list[tuple[int, int]]] = {}
    spans: list[tuple[int, int]] = []
    for operator_id, ranges in document.items():
        if OPERATOR_ID_PATTERN.fullmatch(operator_id) is None:
            raise EpisodeError(
                field_name, f"operator id {client_str(operator_id, 64)} is not 1-64 of [A-Za-z0-9_.@:-]"
            )
        if not isinstance(ranges, list) or not ranges:
            raise EpisodeError(field_name, f"{operator_id}: must be a non-empty list of [start, stop] ranges")
        checked = []
        for span in ranges:
            if (
                not isinstance(span, list)
                or len(span) != 2
                or not all(type(v) is int for v in span)
                or not 0 <= span[0] < span[1] <= num_steps
            ):
                raise EpisodeError(
                    field_name, f"{operator_id}: {client_str(span, 40)} is not a range within 0..{num_steps}"
                )
            checked.append((span[0], span[1]))
        if checked != sorted(checked):
            raise EpisodeError(field_name, f"{operator_id}: ranges are not in order")
        result[operator_id] = checked
        spans.extend(checked)
    if len(spans) > MAX_OPERATOR_RANGES:
        raise EpisodeError(field_name, f"{len(spans)} ranges exceed the cap of {MAX_OPERATOR_RANGES}")
    spans.sort()
    for (_, stop), (start, _) in itertools.pairwise(spans):
        if start < stop:
            raise EpisodeError(field_name, "two operators' ranges overlap")
    if intervention is None:
        return result
    for start, stop in spans:
        if not intervention[start:stop].all():
            raise EpisodeError(field_name, f"frames {start}..{stop} include steps the policy drove")
    return result


def new_episode_id() -> str:
    """Episode ids are random UUIDs chosen by the robot, so two robots never collide without coordination."""
    return str(uuid.uuid4())


@dataclass
class Episode:
    """A whole episode: per-episode metadata plus per-step column arrays (time on axis 0).

    The instruction (a paraphrase chosen per episode) and the task id are constant within an episode and are
    kept once here rather than repeated per step.
    """

    episode_id: str
    robot_id: str
    task: str
    instruction: str
    outcome: Outcome
    started_at: float
    ended_at: float
    steps: dict[str, np.ndarray]
    source: Source = Source.ONLINE
    fps: float = 30.0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(self.steps[ACTION].shape[0])

    @property
    def camera_names(self) -> list[str]:
        return sorted(k.removeprefix(IMAGE_PREFIX) for k in self.steps if k.startswith(IMAGE_PREFIX))

    @property
    def nbytes(self) -> int:
        return sum(int(v.nbytes) for v in self.steps.values())

    def validate(self, check_values: bool = True) -> None:
        """Raise `EpisodeError` naming the first field that breaks the schema.

        `check_values=False` checks shapes and metadata only, for stand-ins whose arrays hold no data
        (`EpisodeInfo.stand_in_episode`)."""
        check_episode_id(self.episode_id)
        for name in ("robot_id", "task", "instruction"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise EpisodeError(name, "must be a non-empty string")
            if len(value) > 1024:
                raise EpisodeError(name, f"is {len(value)} characters long, more than 1024")
        if not isinstance(self.outcome, Outcome):
            raise EpisodeError("outcome", f"{self.outcome!r} is not one of {[o.value for o in Outcome]}")
        if not isinstance(self.source, Source):
            raise EpisodeError("source", f"{self.source!r} is not one of {[s.value for s in Source]}")
        for name in ("started_at", "ended_at", "fps"):
            if not math.isfinite(float(getattr(self, name))):
                raise EpisodeError(name, "must be finite")
        if self.ended_at < self.started_at:
            raise EpisodeError("ended_at", "is before started_at")
        if self.fps <= 0:
            raise EpisodeError("fps", "must be positive")
        check_extra(self.extra)
        validate_steps(self.steps)
        operator_frames(self.extra, self.num_steps, self.steps[INTERVENTION] if check_values else None)


def validate_steps(steps: dict[str, np.ndarray]) -> int:
    """Check per-step arrays against the schema and return the number of steps."""
    if not isinstance(steps, dict):
        raise EpisodeError("steps", f"must be a dict of arrays, got {type(steps).__name__}")
    missing = [k for k in REQUIRED_STEP_KEYS if k not in steps]
    if missing:
        raise EpisodeError(missing[0], "required key is missing")
    num_steps: int | None = None
    cameras = 0
    for key, array in steps.items():
        check_step_key(key)
        if not isinstance(array, np.ndarray):
            raise EpisodeError(key, f"must be a numpy array, got {type(array).__name__}")
        if key.startswith(IMAGE_PREFIX):
            cameras += 1
            if array.dtype != IMAGE_DTYPE:
                raise EpisodeError(key, f"dtype {array.dtype} is not uint8")
            if array.ndim != 4 or array.shape[3] != 3:
                raise EpisodeError(key, f"shape {array.shape} is not (T, H, W, 3)")
            if max(array.shape[1:3]) > MAX_IMAGE_SIDE:
                raise EpisodeError(key, f"image side {max(array.shape[1:3])} exceeds {MAX_IMAGE_SIDE}")
        elif key in STEP_DTYPES:
            expected = STEP_DTYPES[key]
            if array.dtype != expected:
                raise EpisodeError(key, f"dtype {array.dtype} is not {expected}")
            want_rank = 2 if key in (STATE, ACTION, POLICY_ACTION) else 1
            if array.ndim != want_rank:
                raise EpisodeError(key, f"rank {array.ndim} is not {want_rank} (shape {array.shape})")
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise EpisodeError(key, "contains NaN or infinite values")
        if num_steps is None:
            num_steps = int(array.shape[0])
        elif array.shape[0] != num_steps:
            raise EpisodeError(key, f"has {array.shape[0]} steps, other keys have {num_steps}")
    assert num_steps is not None
    if num_steps == 0:
        raise EpisodeError(ACTION, "episode has no steps")
    if num_steps > MAX_STEPS:
        raise EpisodeError(ACTION, f"{num_steps} steps exceed the cap of {MAX_STEPS}")
    if cameras > MAX_CAMERAS:
        raise EpisodeError(IMAGE_PREFIX + "*", f"{cameras} cameras exceed the cap of {MAX_CAMERAS}")
    if steps[STATE].shape[1] > MAX_STATE_DIM:
        raise EpisodeError(STATE, f"dimension {steps[STATE].shape[1]} exceeds {MAX_STATE_DIM}")
    for key in (ACTION, POLICY_ACTION):
        if steps[key].shape[1] > MAX_ACTION_DIM:
            raise EpisodeError(key, f"dimension {steps[key].shape[1]} exceeds {MAX_ACTION_DIM}")
    if steps[ACTION].shape[1] != steps[POLICY_ACTION].shape[1]:
        raise EpisodeError(POLICY_ACTION, "dimension differs from action")
    return num_steps
