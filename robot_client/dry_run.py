"""A checkpoint drives this robot only after it has acted, off the control thread, on one of its observations.

Verification (sha256, signature, the weights against the manifest) proves that a checkpoint is the one the
learner published; it does not prove that it fits this robot. A checkpoint trained for another body (a
39-dim state on a 6-joint arm, 4 actions for 7 motors) or whose weights went NaN verifies fine, and once
written as "last good" it would crash or freeze the robot at every restart. So before a checkpoint from
the learner is swapped in and written as last good, and before the last good (or base) checkpoint runs at
start, `PolicyCheck.run` dry-runs it:

- on a recorded observation of this robot: the newest one the control loop saw, else the one kept in
  `policy/observation.npz` (the one the previous dry run used), else the last step of the newest episode
  in the spool;
- on a throw-away thread, waited for at most `policy.dry_run_timeout_s`: its first chunk (a full solve)
  and the first action of a warm-started second chunk must be finite and of the robot's action shape.

A failure raises `DryRunFailed`: the checkpoint is refused (`sop_robot_checkpoints_rejected` with reason
`dry_run_<why>`, the heartbeat figures `checkpoints_failed_dry_run` and `last_rejected_checkpoint_version`)
and the robot keeps the policy it runs. A dry run that overruns its time is abandoned, not stopped (Python
cannot stop a thread): the thread holds only the refused policy and ends when its `act` returns.

A robot that has never recorded an observation (first start, empty spool, no last good) has nothing to
dry-run on: the checkpoint runs, guarded step by step by the control loop's gate, and is not written as
last good; the next checkpoint, dry-run on a live observation, is.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from robot_client.recorder import Spool
from robot_client.robots import Observation
from sop.data.episode_store import EpisodeNotFoundError
from sop.durable_files import write_atomically
from sop.episode import IMAGE_PREFIX, STATE
from sop.safe_logging import client_str

if TYPE_CHECKING:
    from robot_client.policy_sync import Policy

log = logging.getLogger(__name__)

# A policy with a long execution horizon is still dry-run for at most this many steps.
MAX_DRY_RUN_STEPS: Final = 64
OBSERVATION_FILE: Final = "observation.npz"


class DryRunFailed(Exception):
    """The policy did not act properly on this robot's observation; `reason` names how (a metric label)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def dry_run(policy: Policy, observation: Observation, action_dim: int, timeout_s: float) -> float:
    """Act on `observation` for the first chunk and one step of the next; the seconds it took.

    Raises DryRunFailed: `wrong_action_shape`, `non_finite`, `error` (the policy raised) or `too_slow`.
    The policy is reset before and after, so it starts its first episode as if the dry run never was.
    """
    steps = min(int(getattr(policy, "execution_horizon", 1)) + 1, MAX_DRY_RUN_STEPS)
    failure: list[DryRunFailed] = []
    done = threading.Event()

    def act() -> None:
        try:
            policy.reset()
            for step in range(steps):
                action = np.asarray(policy.act(observation.policy_input()), dtype=np.float32).reshape(-1)
                if action.shape != (action_dim,):
                    raise DryRunFailed(
                        "wrong_action_shape",
                        f"step {step}: {action.size} action values, the robot takes {action_dim}",
                    )
                if not np.isfinite(action).all():
                    raise DryRunFailed(
                        "non_finite", f"step {step}: action {action[:8].tolist()} is not finite"
                    )
            policy.reset()
        except DryRunFailed as exc:
            failure.append(exc)
        except Exception as exc:  # whatever the policy raises refuses the checkpoint, never the robot
            failure.append(DryRunFailed("error", f"{type(exc).__name__}: {client_str(exc, 300)}"))
        finally:
            done.set()

    started = time.perf_counter()
    threading.Thread(target=act, name="policy-dry-run", daemon=True).start()
    if not done.wait(timeout_s):
        raise DryRunFailed(
            "too_slow", f"{steps} steps took longer than policy.dry_run_timeout_s={timeout_s:g} s"
        )
    if failure:
        raise failure[0]
    return time.perf_counter() - started


def save_observation(path: Path, observation: Observation) -> None:
    """Keep one observation on disk (npz, no pickles), replaced atomically."""
    arrays: dict[str, np.ndarray] = {
        "state": np.asarray(observation.state, dtype=np.float32),
        "task": np.array(observation.task),
        "instruction": np.array(observation.instruction),
    }
    for camera, image in observation.images.items():
        arrays[IMAGE_PREFIX + camera] = np.asarray(image, dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    write_atomically(path, buffer.getvalue(), durable=True, private=True)


def load_observation(path: Path) -> Observation | None:
    """The observation `save_observation` kept, or None when there is none or it is damaged (logged)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            images = {
                key.removeprefix(IMAGE_PREFIX): np.asarray(data[key], dtype=np.uint8)
                for key in data.files
                if key.startswith(IMAGE_PREFIX)
            }
            return Observation(
                np.asarray(data["state"], dtype=np.float32),
                str(data["instruction"]),
                str(data["task"]),
                images,
            )
    except (OSError, ValueError, KeyError) as exc:
        log.warning("the recorded observation %s is unreadable (%s); not using it", path, exc)
        return None


def observation_from_spool(spool: Spool) -> Observation | None:
    """The last step of the newest episode in the spool, or None when it holds none."""
    for info in reversed(spool.pending()):
        if info.num_steps == 0:
            continue
        last = info.num_steps - 1
        try:
            state = spool.store.read_steps(info.episode_id, STATE, last, last + 1)[0]
            images = {
                camera: spool.store.read_steps(info.episode_id, IMAGE_PREFIX + camera, last, last + 1)[0]
                for camera in info.cameras
            }
        except (EpisodeNotFoundError, OSError, KeyError, IndexError, ValueError):
            continue  # uploaded and deleted meanwhile, or damaged: the next one
        return Observation(np.asarray(state, dtype=np.float32), info.instruction, info.task, images)
    return None


class PolicyCheck:
    """The dry run as the daemon uses it: this robot's action shape, the configured time, and where a
    recorded observation comes from (see the module docstring)."""

    def __init__(
        self,
        action_dim: int,
        timeout_s: float,
        policy_dir: Path,
        live_observation: Callable[[], Observation | None] = lambda: None,
        spool: Spool | None = None,
    ) -> None:
        self.action_dim = action_dim
        self.timeout_s = timeout_s
        self.observation_file = policy_dir / OBSERVATION_FILE
        self.live_observation = live_observation
        self.spool = spool

    def observation(self) -> tuple[Observation, str] | None:
        """A recorded observation of this robot and where it came from. One from the loop or the spool
        is kept on disk, for when neither has one (the spool uploaded, the loop not started yet)."""
        found: tuple[Observation, str] | None = None
        live = self.live_observation()
        if live is not None:
            found = live, "live"
        else:
            kept = load_observation(self.observation_file)
            if kept is not None:
                return kept, "kept"
            spooled = observation_from_spool(self.spool) if self.spool is not None else None
            if spooled is not None:
                found = spooled, "spool"
        if found is not None:
            try:
                save_observation(self.observation_file, found[0])
            except OSError as exc:
                log.warning("cannot keep a recorded observation in %s: %s", self.observation_file, exc)
        return found

    def run(self, policy: Policy, what: str) -> bool:
        """Dry-run `policy` (`what`: for the log). True: it passed; False: no observation was recorded yet,
        so it could not be checked. Raises DryRunFailed."""
        found = self.observation()
        if found is None:
            log.warning(
                "%s not dry-run: no observation of this robot is recorded yet; the control loop's gate "
                "guards it step by step and it is not kept as last good",
                what,
            )
            return False
        observation, source = found
        seconds = dry_run(policy, observation, self.action_dim, self.timeout_s)
        log.info("%s passed its dry run on a %s observation (%.0f ms)", what, source, seconds * 1e3)
        return True
