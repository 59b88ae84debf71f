"""The served policy's features: the contract every episode and every robot must fit.

The learner trains one policy; an episode whose state has 5 dimensions where the policy reads 39, a camera
the policy has no encoder for, or a task its task embedding does not know cannot be trained on, and letting
it into the replay stops the trainer. So ingest checks each episode against these features before the
commit, `Register` checks a robot's capabilities against them, and the trainer quarantines whatever slipped
into the replay anyway (an older run directory, an offline store).

The features are read from the checkpoint manifest (`policy_config`), so the learner needs neither torch nor
the policy code to know them. Policy types other than SOP's diffusion policy state the same keys in their
`policy_config` (`state_dim`, `action_dim`, `cameras`, `tasks`) or are not checked on that key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sop.episode import ACTION, IMAGE_PREFIX, POLICY_ACTION, STATE, Episode


class FeatureMismatchError(ValueError):
    """An episode or a robot that does not fit the served policy; names the key, expected and received."""

    def __init__(self, key: str, expected: object, received: object) -> None:
        super().__init__(f"{key}: the served policy expects {expected}, got {received}")
        self.key = key
        self.expected = expected
        self.received = received


@dataclass(frozen=True)
class PolicyFeatures:
    """What the served policy reads and writes. `None` / empty `tasks` means "not constrained"."""

    state_dim: int | None
    action_dim: int | None
    cameras: tuple[str, ...] = ()
    # Task ids the policy was trained for. Empty: any task (an instruction-conditioned policy).
    tasks: tuple[str, ...] = ()
    # (H, W) of camera frames, when the policy fixes one.
    image_size: tuple[int, int] | None = None

    @classmethod
    def from_policy_config(cls, policy_config: Mapping[str, Any]) -> PolicyFeatures:
        def optional_int(name: str) -> int | None:
            value = policy_config.get(name)
            return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

        image_size = policy_config.get("image_size")
        return cls(
            state_dim=optional_int("state_dim"),
            action_dim=optional_int("action_dim"),
            cameras=tuple(str(c) for c in policy_config.get("cameras") or ()),
            tasks=tuple(str(t) for t in policy_config.get("tasks") or ()),
            image_size=(int(image_size[0]), int(image_size[1]))
            if isinstance(image_size, Sequence) and len(image_size) == 2
            else None,
        )

    def with_tasks(self, tasks: Iterable[str]) -> PolicyFeatures:
        """The same features restricted to `tasks` (e.g. the learner's `replay.tasks`) when the policy
        itself does not constrain them."""
        tasks = tuple(tasks)
        if self.tasks or not tasks:
            return self
        return PolicyFeatures(self.state_dim, self.action_dim, self.cameras, tasks, self.image_size)

    def check_task(self, task: str) -> None:
        if self.tasks and task not in self.tasks:
            raise FeatureMismatchError("task", f"one of {list(self.tasks)}", _short(task))

    def check_episode(self, episode: Episode) -> None:
        """Raise `FeatureMismatchError` for the first key of `episode` that does not fit (schema-valid input)."""
        self.check_task(episode.task)
        steps = episode.steps
        for key, want in (
            (STATE, self.state_dim),
            (ACTION, self.action_dim),
            (POLICY_ACTION, self.action_dim),
        ):
            array = steps.get(key)
            if want is not None and array is not None and array.shape[1:] != (want,):
                raise FeatureMismatchError(key, f"shape (T, {want})", f"shape {tuple(array.shape)}")
        # Cameras the policy does not read are kept (recorded for people and for later image policies; their
        # names and number are checked by the schema); a camera it reads must be there.
        missing = sorted(c for c in self.cameras if IMAGE_PREFIX + c not in steps)
        if missing:
            raise FeatureMismatchError(f"{IMAGE_PREFIX}{missing[0]}", "a recorded camera", "no such key")
        for camera in self.cameras:
            frames: np.ndarray = steps[IMAGE_PREFIX + camera]
            if self.image_size is not None and tuple(frames.shape[1:3]) != self.image_size:
                raise FeatureMismatchError(
                    IMAGE_PREFIX + camera,
                    f"frames of {self.image_size[0]}x{self.image_size[1]}",
                    f"shape {tuple(frames.shape)}",
                )

    def capability_problems(
        self, *, tasks: Sequence[str], state_dim: int, action_dim: int, cameras: Sequence[str]
    ) -> list[str]:
        """What a robot announcing these capabilities would record that the policy cannot use; empty: fits.

        Dimensions of 0 mean "not announced" (older daemons) and are not checked.
        """
        problems: list[str] = []
        if self.state_dim is not None and state_dim and state_dim != self.state_dim:
            problems.append(
                f"state_dim: the served policy expects {self.state_dim}, the robot has {state_dim}"
            )
        if self.action_dim is not None and action_dim and action_dim != self.action_dim:
            problems.append(
                f"action_dim: the served policy expects {self.action_dim}, the robot has {action_dim}"
            )
        missing = sorted(set(self.cameras) - set(cameras))
        if missing:
            problems.append(
                f"cameras: the served policy reads {list(self.cameras)}, the robot lacks {missing}"
            )
        unknown = [t for t in tasks if self.tasks and t not in self.tasks]
        if unknown:
            problems.append(
                f"tasks: {[_short(t) for t in unknown[:4]]} are not among the served policy's {list(self.tasks)}"
            )
        return problems


def _short(value: str, limit: int = 64) -> str:
    """A client string as it may appear inside an error message: repr-quoted and cut."""
    return repr(value[:limit]) + ("..." if len(value) > limit else "")
