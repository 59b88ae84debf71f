"""The task suite: which Meta-World tasks a robot can be given and how a person would ask for each.

A task is named exactly as Meta-World names it (`pick-place-v3`) and registered with gymnasium as
`sop/<name>`. All 50 Meta-World v3 tasks (`MT50_TASKS`) are registered, each with its scripted expert.
Not all of those experts solve their task reliably, and the simulated operator and the offline
demonstrations rely on them: `benchmarks/results/suite_fitness.json` records, per task, how often the
expert and the operator solve it (`python -m benchmarks.suite_fitness` measures it), and only the tasks it
marks fit belong in a demo (39 of 50; README, "The task suite"). The MT10 set (`MT10_TASKS`), ten skills
whose experts all solve them, is what the demo, the benchmarks and the operator's per-task tests use
(`TASK_NAMES`).

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
        known = ", ".join(MT50_TASKS)
        close = difflib.get_close_matches(str(name), MT50_TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        super().__init__(f"task {name!r} is not in the Meta-World suite{hint}; known tasks: {known}")
        self.name = name


class ProgressMeasure(enum.StrEnum):
    """What the simulated operator measures to judge whether the robot is getting closer to done.

    Both are read from the 39-dim Meta-World state alone (no expert, no reward): indices 0:3 hold the
    hand (end-effector) position, 4:7 the main object's position (puck, handle, button, peg), and 36:39
    the goal position.
    """

    HAND_TO_GOAL = "hand_to_goal"  # reach, reach-wall: only the hand has to get somewhere
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
        # The other 40 tasks of Meta-World's MT50, in alphabetical order.
        TaskSpec(
            "assembly-v3",
            (
                "Put the ring on the peg.",
                "Pick up the nut and fit it over the peg.",
                "Grasp the round nut by its handle and drop it onto the peg.",
                "Assemble the nut onto the peg.",
            ),
        ),
        TaskSpec(
            "basketball-v3",
            (
                "Dunk the ball into the basket.",
                "Pick up the basketball and put it through the hoop.",
                "Grab the ball and drop it in the basket.",
                "Score a basket with the ball.",
            ),
        ),
        TaskSpec(
            "bin-picking-v3",
            (
                "Move the puck from one bin to the other.",
                "Pick the puck out of the bin and place it in the other bin.",
                "Grasp the puck and transfer it to the second bin.",
                "Lift the puck out of its bin and drop it into the empty one.",
            ),
        ),
        TaskSpec(
            "box-close-v3",
            (
                "Close the box with its lid.",
                "Pick up the lid and put it on the box.",
                "Grasp the box cover and close the box.",
                "Place the lid on top of the box.",
            ),
        ),
        TaskSpec(
            "button-press-topdown-wall-v3",
            (
                "Press the button from the top, past the wall.",
                "Reach over the wall and push the button down.",
                "Get around the wall and press down on the button.",
                "Push the button from above without hitting the wall.",
            ),
        ),
        TaskSpec(
            "button-press-v3",
            (
                "Press the button.",
                "Push the button in from the front.",
                "Press the button on the box horizontally.",
                "Push the button until it goes in.",
            ),
        ),
        TaskSpec(
            "button-press-wall-v3",
            (
                "Press the button behind the wall.",
                "Reach past the wall and push the button in.",
                "Get around the wall and press the button.",
                "Push the button from the front, avoiding the wall.",
            ),
        ),
        TaskSpec(
            "coffee-button-v3",
            (
                "Press the button on the coffee machine.",
                "Push the coffee machine's button.",
                "Start the coffee machine by pressing its button.",
                "Press the coffee button.",
            ),
        ),
        TaskSpec(
            "coffee-pull-v3",
            (
                "Pull the mug out from under the coffee machine.",
                "Take the mug away from the coffee machine.",
                "Grasp the cup and pull it out of the coffee machine.",
                "Slide the mug out from under the spout.",
            ),
        ),
        TaskSpec(
            "coffee-push-v3",
            (
                "Push the mug under the coffee machine.",
                "Slide the cup under the coffee spout.",
                "Grasp the mug and move it into the coffee machine.",
                "Put the mug under the coffee machine.",
            ),
        ),
        TaskSpec(
            "dial-turn-v3",
            (
                "Turn the dial.",
                "Rotate the dial half a turn.",
                "Spin the knob around.",
                "Turn the dial to the target.",
            ),
        ),
        TaskSpec(
            "disassemble-v3",
            (
                "Take the ring off the peg.",
                "Pick the nut up off the peg.",
                "Grasp the nut by its handle and lift it off the peg.",
                "Disassemble the nut from the peg.",
            ),
        ),
        TaskSpec(
            "door-close-v3",
            (
                "Close the door.",
                "Push the door shut.",
                "Swing the open door closed.",
                "Shut the door.",
            ),
        ),
        TaskSpec(
            "door-lock-v3",
            (
                "Lock the door.",
                "Turn the lock on the door to lock it.",
                "Rotate the door lock down.",
                "Push the lock lever down to lock the door.",
            ),
        ),
        TaskSpec(
            "door-unlock-v3",
            (
                "Unlock the door.",
                "Turn the lock on the door to unlock it.",
                "Rotate the door lock back.",
                "Push the lock up to unlock the door.",
            ),
        ),
        TaskSpec(
            "faucet-close-v3",
            (
                "Turn the faucet off.",
                "Close the faucet.",
                "Rotate the faucet handle to close it.",
                "Swing the tap handle shut.",
            ),
        ),
        TaskSpec(
            "faucet-open-v3",
            (
                "Turn the faucet on.",
                "Open the faucet.",
                "Rotate the faucet handle to open it.",
                "Swing the tap handle open.",
            ),
        ),
        TaskSpec(
            "hammer-v3",
            (
                "Hammer the nail into the wall.",
                "Pick up the hammer and drive the nail in.",
                "Grab the hammer and hit the nail.",
                "Use the hammer to knock the nail into the wall.",
            ),
        ),
        TaskSpec(
            "hand-insert-v3",
            (
                "Put the puck into the hole.",
                "Push the puck into the hole in the table.",
                "Insert the puck into the hole with your hand.",
                "Move the puck into the hole.",
            ),
        ),
        TaskSpec(
            "handle-press-side-v3",
            (
                "Press the handle down from the side.",
                "Push the side handle down.",
                "Press down on the handle from the side.",
                "Push the handle down sideways.",
            ),
        ),
        TaskSpec(
            "handle-press-v3",
            (
                "Press the handle down.",
                "Push the handle down.",
                "Press down on the handle.",
                "Push the handle all the way down.",
            ),
        ),
        TaskSpec(
            "handle-pull-side-v3",
            (
                "Pull the handle up from the side.",
                "Lift the side handle up.",
                "Pull up on the handle from the side.",
                "Raise the handle sideways.",
            ),
        ),
        TaskSpec(
            "handle-pull-v3",
            (
                "Pull the handle up.",
                "Lift the handle up.",
                "Pull up on the handle.",
                "Raise the handle all the way up.",
            ),
        ),
        TaskSpec(
            "lever-pull-v3",
            (
                "Pull the lever up.",
                "Raise the lever.",
                "Lift the lever all the way.",
                "Swing the lever up.",
            ),
        ),
        TaskSpec(
            "peg-unplug-side-v3",
            (
                "Unplug the peg from the side.",
                "Pull the peg out of the hole sideways.",
                "Grasp the peg and pull it out of the box.",
                "Take the peg out of the side of the box.",
            ),
        ),
        TaskSpec(
            "pick-out-of-hole-v3",
            (
                "Pick the puck out of the hole.",
                "Lift the puck out of the hole and move it to the goal.",
                "Grasp the puck in the hole and take it out.",
                "Take the puck out of the hole.",
            ),
        ),
        TaskSpec(
            "pick-place-wall-v3",
            (
                "Pick up the puck and place it at the goal behind the wall.",
                "Lift the puck over the wall and put it on the target.",
                "Grasp the puck and carry it past the wall to the goal.",
                "Take the puck over the wall and set it down at the goal.",
            ),
        ),
        TaskSpec(
            "plate-slide-back-side-v3",
            (
                "Slide the plate out of the cabinet sideways.",
                "Pull the plate out of the cabinet from the side.",
                "Get the plate back from the cabinet from the side.",
                "Slide the plate sideways out of the cabinet.",
            ),
        ),
        TaskSpec(
            "plate-slide-back-v3",
            (
                "Slide the plate out of the cabinet.",
                "Pull the plate back out of the cabinet.",
                "Get the plate back from the cabinet.",
                "Slide the plate back toward you.",
            ),
        ),
        TaskSpec(
            "plate-slide-side-v3",
            (
                "Slide the plate into the cabinet sideways.",
                "Push the plate into the cabinet from the side.",
                "Slide the plate sideways into the goal.",
                "Push the plate sideways into the cabinet.",
            ),
        ),
        TaskSpec(
            "plate-slide-v3",
            (
                "Slide the plate into the cabinet.",
                "Push the plate into the cabinet.",
                "Slide the plate forward into the goal.",
                "Push the plate across the table into the cabinet.",
            ),
        ),
        TaskSpec(
            "push-back-v3",
            (
                "Pull the puck back to the goal.",
                "Slide the puck toward you to the target.",
                "Move the puck back to the goal.",
                "Drag the puck back onto the goal marker.",
            ),
        ),
        TaskSpec(
            "push-wall-v3",
            (
                "Push the puck around the wall to the goal.",
                "Slide the puck past the wall to the target.",
                "Push the puck to the goal behind the wall.",
                "Move the puck around the wall by pushing it.",
            ),
        ),
        TaskSpec(
            "reach-wall-v3",
            (
                "Reach over the wall to the goal position.",
                "Move your hand past the wall to the target point.",
                "Go around the wall to the goal location.",
                "Put the gripper on the goal behind the wall.",
            ),
            ProgressMeasure.HAND_TO_GOAL,
        ),
        TaskSpec(
            "shelf-place-v3",
            (
                "Put the block on the shelf.",
                "Pick up the block and place it on the shelf.",
                "Grasp the block and set it on the shelf.",
                "Lift the block onto the shelf.",
            ),
        ),
        TaskSpec(
            "soccer-v3",
            (
                "Kick the ball into the goal.",
                "Push the soccer ball into the net.",
                "Score a goal with the ball.",
                "Shove the ball into the goal.",
            ),
        ),
        TaskSpec(
            "stick-pull-v3",
            (
                "Pull the container with the stick.",
                "Grasp the stick and use it to pull the box.",
                "Hook the container with the stick and drag it to the goal.",
                "Pick up the stick and pull the thermos to the target.",
            ),
        ),
        TaskSpec(
            "stick-push-v3",
            (
                "Push the container with the stick.",
                "Grasp the stick and use it to push the box.",
                "Pick up the stick and push the thermos to the goal.",
                "Use the stick to shove the container to the target.",
            ),
        ),
        TaskSpec(
            "sweep-into-v3",
            (
                "Sweep the puck into the hole.",
                "Slide the puck into the hole in the table.",
                "Brush the puck into the hole.",
                "Push the puck into the hole.",
            ),
        ),
        TaskSpec(
            "sweep-v3",
            (
                "Sweep the puck off the table.",
                "Push the puck off the edge of the table.",
                "Brush the puck off the table.",
                "Slide the puck over the table's edge.",
            ),
        ),
    )
}

# Every registered task: MT10 first, then the other 40 of Meta-World's MT50.
MT50_TASKS: Final[tuple[str, ...]] = tuple(TASKS)
MT10_TASKS: Final[tuple[str, ...]] = MT50_TASKS[:10]
# The default suite, the tasks code means when it loops over "every task" (the operator's and the env's
# per-task tests run seconds per task, and the experts of some MT50 tasks fail): MT10, in this order.
TASK_NAMES: Final[tuple[str, ...]] = MT10_TASKS

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
