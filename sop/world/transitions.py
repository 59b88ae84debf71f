"""An episode store as world-model training samples: (last k states, action, next state, task, success).

Every committed episode of the chosen tasks is read once into memory (low-dimensional columns only: ~0.3 KiB
per step). Held-out episodes are chosen by id, not at random, so `sop world train` and `sop world eval` agree
on them without sharing state: per task, episodes sorted by id, every `held_out_every`-th one is held out.

Success labels (for the success model) come from what the recorder knew: a scripted demonstration stores the
step at which the task was first solved (`extra["success_step"]`), so every later state is a success state;
an episode that only says it ended in success (a fleet episode, which stops at success) labels its last state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sop.episode import ACTION, STATE, Outcome
from sop.world.modeling_world import WorldModelError


@dataclass(frozen=True)
class EpisodeArrays:
    episode_id: str
    task: str
    states: np.ndarray  # (T, D) float32
    actions: np.ndarray  # (T, A) float32
    success: np.ndarray  # (T,) bool: state t is a success state


def success_labels(extra: dict[str, str], outcome: Outcome, num_steps: int) -> np.ndarray:
    labels = np.zeros(num_steps, dtype=bool)
    step = extra.get("success_step")
    if step is not None and step.isdigit():
        # The action at `success_step` produced the first success state, which is state success_step + 1.
        labels[min(int(step) + 1, num_steps - 1) :] = True
    elif outcome is Outcome.SUCCESS and num_steps:
        labels[-1] = True
    return labels


def load_episodes(store_path: str | Path, tasks: Sequence[str] = ()) -> list[EpisodeArrays]:
    """Every episode of `tasks` (all tasks when empty) with at least two steps, in a stable order."""
    from sop.data.episode_store import EpisodeStore  # zarr is only needed by the commands that read stores

    root = Path(store_path)
    if not (root / "sop_store.json").is_file():
        raise WorldModelError(
            f"{root}: not an episode store (no sop_store.json); record one with `sop sim demos --store {root}`"
        )
    store = EpisodeStore(root, create=False)
    wanted = set(tasks) if tasks else None
    if wanted is not None:
        missing = sorted(wanted - set(store.tasks()))
        if missing:
            raise WorldModelError(f"tasks {missing} have no episodes in {root} (it has {store.tasks()})")
    episodes = []
    for info in sorted(store.list(), key=lambda info: info.episode_id):
        if (wanted is not None and info.task not in wanted) or info.num_steps < 2:
            continue
        columns = store.read_columns(info.episode_id, [STATE, ACTION])
        episodes.append(
            EpisodeArrays(
                info.episode_id,
                info.task,
                np.asarray(columns[STATE], dtype=np.float32),
                np.asarray(columns[ACTION], dtype=np.float32),
                success_labels(info.extra, info.outcome, info.num_steps),
            )
        )
    if not episodes:
        raise WorldModelError(f"{root} has no episodes of two or more steps to learn dynamics from")
    dims = {(e.states.shape[1], e.actions.shape[1]) for e in episodes}
    if len(dims) > 1:
        raise WorldModelError(
            f"{root} mixes state/action dimensions {sorted(dims)}; use one robot kind per model"
        )
    return episodes


def check_dimensions(episodes: Sequence[EpisodeArrays], state_dim: int, action_dim: int, source: str) -> None:
    """Refuse data of another shape than the model's with a message that says so."""
    found = (episodes[0].states.shape[1], episodes[0].actions.shape[1])
    if found != (state_dim, action_dim):
        raise WorldModelError(
            f"{source} has {found[0]}-dim states and {found[1]}-dim actions, the world model was trained on "
            f"{state_dim} and {action_dim}: use a store of the same robot, or train a world model on this one"
        )


def split_held_out(
    episodes: Sequence[EpisodeArrays], held_out_every: int
) -> tuple[list[EpisodeArrays], list[EpisodeArrays]]:
    """(training, held-out): per task, every `held_out_every`-th episode by id is held out (0: none)."""
    train: list[EpisodeArrays] = []
    held: list[EpisodeArrays] = []
    seen: dict[str, int] = {}
    for episode in sorted(episodes, key=lambda e: (e.task, e.episode_id)):
        index = seen.get(episode.task, 0)
        seen[episode.task] = index + 1
        if held_out_every > 0 and index % held_out_every == held_out_every - 1:
            held.append(episode)
        else:
            train.append(episode)
    return train, held


def history_windows(states: np.ndarray, history: int) -> np.ndarray:
    """(T, D) -> (T, history, D): at step t the states t-history+1 .. t, the first state repeated before 0."""
    index = np.arange(len(states))[:, None] + np.arange(-history + 1, 1)[None]
    return states[np.clip(index, 0, None)]


class TransitionSet:
    """All transitions of some episodes as flat tensors, sampled uniformly."""

    def __init__(self, episodes: Sequence[EpisodeArrays], history: int, tasks: Sequence[str]) -> None:
        if not episodes:
            raise WorldModelError("no episodes to build transitions from")
        histories, actions, nexts, task_ids, success = [], [], [], [], []
        for episode in episodes:
            windows = history_windows(episode.states, history)
            histories.append(windows[:-1])
            actions.append(episode.actions[:-1])
            nexts.append(episode.states[1:])
            task_ids.append(np.full(len(episode.states) - 1, tasks.index(episode.task) if tasks else 0))
            success.append(episode.success[1:])
        self.history: Tensor = torch.from_numpy(np.concatenate(histories))
        self.action: Tensor = torch.from_numpy(np.concatenate(actions))
        self.next_state: Tensor = torch.from_numpy(np.concatenate(nexts))
        self.task: Tensor = torch.from_numpy(np.concatenate(task_ids)).long()
        self.success: Tensor = torch.from_numpy(np.concatenate(success))

    def __len__(self) -> int:
        return len(self.action)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        rows = torch.randint(0, len(self), (batch_size,), generator=generator)
        return {
            "history": self.history[rows],
            "action": self.action[rows],
            "next_state": self.next_state[rows],
            "task": self.task[rows],
            "success": self.success[rows],
        }
