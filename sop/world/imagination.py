"""A diffusion policy acting inside the frozen world model, many episodes at once (zero environment steps).

Each imagined episode starts from a real first state (taken from a store: where the robot really starts),
then repeats what `Policy.act` does on a robot, batched over episodes: predict a chunk from the last To
states, execute its Ta actions from step To-1 on (the same slice as `DiffusionPolicy.predict_chunk`, gripper
levels snapped as on a robot) plus exploration noise, and let the world model sample each next state. The
success model scores every imagined state; an episode ends at its first state with p(success) > threshold,
as `sop sim eval` ends a real episode at its first success.

Exploration noise is Gaussian with a std bounded by 1 (World4RL caps the policy's sigma the same way): one
draw per chunk (a consistent push for Ta steps, which moves an arm further than white noise of the same size)
plus a per-step draw of half that std. The gripper command is left alone: snapped levels are what the
policy was trained to send, and a random gripper flip is a different behaviour, not a nearby one.

Batched chunk prediction uses the policy's own conditioning and action post-processing
(`DiffusionPolicy._condition`, `_actions_to_send`), so imagined actions are exactly those a robot would send.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sop.policies.configuration_diffusion import DDIMSamplerConfig
from sop.policies.modeling_diffusion import DiffusionPolicy
from sop.policies.samplers import make_sampler
from sop.world.modeling_world import WorldModel


@dataclass(frozen=True)
class ImaginedEpisodes:
    states: Tensor  # (B, H + 1, D): states[:, 0] is the real start
    actions: Tensor  # (B, H, A): the executed (noisy) actions
    success_probability: Tensor  # (B, H + 1)
    lengths: Tensor  # (B,) actions taken: up to and including the one that reached success, else H
    success: Tensor  # (B,) bool: reached p(success) > threshold within H steps
    tasks: list[str]
    instructions: list[str]

    @property
    def num_steps(self) -> int:
        return int(self.lengths.sum())


@torch.no_grad()
def policy_chunks(
    policy: DiffusionPolicy,
    history: Tensor,
    tasks: Sequence[str],
    instructions: Sequence[str],
    sampler_steps: int,
    generator: torch.Generator,
) -> Tensor:
    """(B, To, D) states -> (B, Tp, A) action chunks in environment units, as `predict_chunk` sends them."""
    sampler = make_sampler(policy.config, DDIMSamplerConfig(steps=sampler_steps))
    policy.network.eval()
    cond = policy._condition(history.to(policy.device), {}, list(tasks), list(instructions))

    def denoise(sample: Tensor, timesteps: Tensor) -> Tensor:
        out: Tensor = policy.network.unet(sample, timesteps, cond)
        return out

    shape = (history.shape[0], policy.config.prediction_horizon, policy.config.action_dim)
    trajectory = sampler.sample(denoise, shape, generator, policy.device).trajectory
    return torch.stack([policy._actions_to_send(trajectory[i], tasks[i]) for i in range(shape[0])]).cpu()


@torch.no_grad()
def imagine(
    policy: DiffusionPolicy,
    world: WorldModel,
    start_states: Tensor,
    tasks: Sequence[str],
    instructions: Sequence[str],
    *,
    horizon: int,
    exploration_std: float,
    threshold: float = 0.5,
    sampler_steps: int = 10,
    generator: torch.Generator | None = None,
) -> ImaginedEpisodes:
    """Roll `policy` from `start_states` (B, D) for up to `horizon` steps inside `world`."""
    if not 0.0 <= exploration_std <= 1.0:
        raise ValueError(
            f"exploration_std must be in [0, 1] (World4RL bounds sigma by 1), got {exploration_std}"
        )
    generator = generator or torch.Generator().manual_seed(0)
    batch = start_states.shape[0]
    to = policy.config.observation_horizon
    ta = policy.execution_horizon
    k = world.config.history
    task_index = world.task_indices(tasks)
    start = start_states.float()
    states = torch.zeros(batch, horizon + 1, start.shape[1])
    states[:, 0] = start
    actions = torch.zeros(batch, horizon, policy.config.action_dim)
    probability = torch.zeros(batch, horizon + 1)
    probability[:, 0] = world.success_probability(start, task_index)
    done = probability[:, 0] > threshold
    lengths = torch.full((batch,), horizon, dtype=torch.long)
    lengths[done] = 0
    movable = torch.ones(policy.config.action_dim)
    if policy.config.gripper_index is not None:
        movable[policy.config.gripper_index] = 0.0

    def window(t: int, size: int) -> Tensor:  # states t-size+1 .. t, the start repeated before 0
        index = torch.clamp(torch.arange(t - size + 1, t + 1), min=0)
        return states[:, index]

    step = 0
    while step < horizon and not bool(done.all()):
        chunk = policy_chunks(policy, window(step, to), tasks, instructions, sampler_steps, generator)
        push = torch.randn(batch, 1, chunk.shape[-1], generator=generator) * exploration_std
        executed = chunk[:, to - 1 : to - 1 + ta]
        jitter = torch.randn(executed.shape, generator=generator) * exploration_std / 2
        executed = (executed + (push + jitter) * movable).clamp(-1.0, 1.0)
        for offset in range(executed.shape[1]):
            if step >= horizon or bool(done.all()):
                break
            action = executed[:, offset]
            following = world.predict_next(window(step, k), action, task_index, generator)
            # An episode that is over keeps its last state (and is not counted any more).
            following = torch.where(done[:, None], states[:, step], following)
            actions[:, step] = torch.where(done[:, None], torch.zeros_like(action), action)
            states[:, step + 1] = following
            probability[:, step + 1] = world.success_probability(following, task_index)
            reached = ~done & (probability[:, step + 1] > threshold)
            lengths[reached] = step + 1
            done = done | reached
            step += 1
    if step < horizon:  # everyone finished early: pad with the final states
        states[:, step + 1 :] = states[:, step : step + 1]
    success = probability.max(dim=1).values > threshold
    return ImaginedEpisodes(states, actions, probability, lengths, success, list(tasks), list(instructions))


def imagined_windows(
    episodes: ImaginedEpisodes, keep: Tensor, observation_horizon: int, prediction_horizon: int
) -> dict[str, object]:
    """Training windows (the window sampler's layout) from the kept imagined episodes.

    Every step before an episode's end is an anchor: states t-To+1 .. t and actions t-To+1 .. t-To+Tp,
    indices before 0 repeating step 0 and past the end repeating the last action, as `WindowSampler` does.
    """
    states, actions, tasks, instructions = [], [], [], []
    for i in torch.nonzero(keep).flatten().tolist():
        length = int(episodes.lengths[i])
        if length < 1:
            continue
        for t in range(length):
            obs = torch.clamp(torch.arange(t - observation_horizon + 1, t + 1), min=0)
            act = torch.clamp(
                torch.arange(t - observation_horizon + 1, t - observation_horizon + 1 + prediction_horizon),
                0,
                length - 1,
            )
            states.append(episodes.states[i, obs])
            actions.append(episodes.actions[i, act])
            tasks.append(episodes.tasks[i])
            instructions.append(episodes.instructions[i])
    if not states:
        return {}
    return {
        "observation.state": torch.stack(states),
        "action": torch.stack(actions),
        "task": tasks,
        "instruction": instructions,
    }
