"""The task suite: which Meta-World tasks a robot can be given and how a person would ask for each.

A task is named exactly as Meta-World names it (`pick-place-v3`) and registered with gymnasium as
`sop/<name>`. The suite is Meta-World's MT10 set: ten manipulation skills whose scripted experts solve
them reliably, which is what the simulated operator and the offline demonstrations rely on.

Every task carries several paraphrases of its instruction; an environment picks one per episode from its
reset seed, so a language-conditioned policy sees varied wording for the same skill.
"""

from __future__ import annotations

import difflib
import enum
from dataclasses import dataclass
from typing import Final


class UnknownTaskError(ValueError):
    """A task name that is not in the suite; the message lists the names that are."""

    def __init__(self, name: object) -> None:
        known = ", ".join(TASK_NAMES)
        close = difflib.get_close_matches(str(name), TASK_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        super().__init__(f"task {name!r} is not in the Meta-World suite{hint}; known tasks: {known}")
        self.name = name


class ProgressMeasure(enum.StrEnum):
    """What the simulated operator measures to judge whether the robot is getting closer to done.

    Both are read from the 39-dim Meta-World state alone (no expert, no reward): indices 0:3 hold the
    hand (end-effector) position, 4:7 the main object's position (puck, handle, button, peg), and 36:39
    the goal position.
    """

    HAND_TO_GOAL = "hand_to_goal"  # reach: only the hand has to get somewhere
    HAND_TO_OBJECT_TO_GOAL = (
        "hand_to_object_to_goal"  # everything else: reach the object, bring it to the goal
    )


@dataclass(frozen=True)
class TaskSpec:
    """One task of the suite (its scripted expert is in `sim.scripted_experts`)."""

    name: str
    instructions: tuple[str, ...]
    progress: ProgressMeasure = ProgressMeasure.HAND_TO_OBJECT_TO_GOAL

    @property
    def env_id(self) -> str:
        """The gymnasium id: `gymnasium.make(spec.env_id)`."""
        return f"{ENV_ID_PREFIX}{self.name}"


ENV_ID_PREFIX: Final = "sop/"

# Instructions use only letters, digits, spaces and the punctuation in INSTRUCTION_CHARSET.
TASKS: Final[dict[str, TaskSpec]] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "reach-v3",
            (
                "Reach the goal position with the gripper.",
                "Move your hand to the target point.",
                "Put the end effector on the red goal marker.",
                "Go to the goal location.",
            ),
            ProgressMeasure.HAND_TO_GOAL,
        ),
        TaskSpec(
            "push-v3",
            (
                "Push the puck to the goal.",
                "Slide the puck across the table to the target.",
                "Shove the puck onto the goal marker.",
                "Move the puck to the goal by pushing it.",
            ),
        ),
        TaskSpec(
            "pick-place-v3",
            (
                "Pick up the puck and place it at the goal.",
                "Grasp the puck and put it on the target.",
                "Lift the puck and move it to the goal position.",
                "Take the puck and set it down at the goal.",
            ),
        ),
        TaskSpec(
            "door-open-v3",
            (
                "Open the door.",
                "Pull the door open by its handle.",
                "Swing the door open.",
                "Grab the door handle and open the door.",
            ),
        ),
        TaskSpec(
            "drawer-open-v3",
            (
                "Open the drawer.",
                "Pull the drawer out.",
                "Grab the drawer handle and pull it open.",
                "Slide the drawer open.",
            ),
        ),
        TaskSpec(
            "drawer-close-v3",
            (
                "Close the drawer.",
                "Push the drawer shut.",
                "Slide the open drawer closed.",
                "Push the drawer back in.",
            ),
        ),
        TaskSpec(
            "button-press-topdown-v3",
            (
                "Press the button from the top.",
                "Push the button down.",
                "Press down on the button.",
                "Push the button from above until it clicks.",
            ),
        ),
        TaskSpec(
            "peg-insert-side-v3",
            (
                "Insert the peg into the hole from the side.",
                "Pick up the peg and push it sideways into the hole.",
                "Grasp the peg and insert it into the box.",
                "Put the peg into the hole in the side of the box.",
            ),
        ),
        TaskSpec(
            "window-open-v3",
            (
                "Open the window.",
                "Slide the window open.",
                "Push the window handle to open it.",
                "Slide the window sash to the open position.",
            ),
        ),
        TaskSpec(
            "window-close-v3",
            (
                "Close the window.",
                "Slide the window shut.",
                "Push the window handle to close it.",
                "Slide the window sash closed.",
            ),
        ),
    )
}

TASK_NAMES: Final[tuple[str, ...]] = tuple(TASKS)
MT10_TASKS: Final[tuple[str, ...]] = TASK_NAMES

# Characters an instruction may contain; the observation's Text space admits exactly these.
INSTRUCTION_CHARSET: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:'-!?()"
MAX_INSTRUCTION_LENGTH: Final = 256


def get_task(name: str) -> TaskSpec:
    """The spec of a task, accepting the bare name or the gymnasium id (`sop/reach-v3`)."""
    if not isinstance(name, str):
        raise UnknownTaskError(name)
    spec = TASKS.get(name.removeprefix(ENV_ID_PREFIX))
    if spec is None:
        raise UnknownTaskError(name)
    return spec


def parse_task_list(names: str | list[str] | tuple[str, ...]) -> list[str]:
    """Task names from a list or a comma-separated string, each checked against the suite."""
    items = names.split(",") if isinstance(names, str) else list(names)
    tasks = [get_task(item.strip()).name for item in items if item.strip()]
    if not tasks:
        raise ValueError("tasks: the list is empty; name at least one task")
    return tasks
