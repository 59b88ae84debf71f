"""`sop world eval`: how well the world model predicts held-out real episodes, against the MLP baseline.

    sop world eval --world runs/world/model --store runs/world/store [--horizon 16] [--out DIR]

Held-out episodes: with the store the model was trained on, the episodes its manifest lists as held out;
with any other store, all of its episodes (the model never saw them). Errors are mean squared errors in
z-scored state units (each dimension divided by its training std), so a hand coordinate and an object
coordinate count alike:

- one-step: from the real last k states and the real action, the predicted next state;
- autoregressive, horizons 1..H: from real states at a start step, the model is fed its own predictions
  and the real actions for H steps (starts every `start_every` steps of each held-out episode);
- success model: precision and recall of p(success) > `threshold` on the held-out states.

Writes `eval.json` (keys: one_step_mse, rollout_mse, success, ... ) and, when matplotlib is installed,
`trajectories.png` (real vs predicted hand and object positions on held-out episodes) and
`horizon_error.png` into the output folder (default: <world>/eval).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sop.config import parse_config
from sop.world.modeling_world import WorldModel, WorldModelError
from sop.world.transitions import EpisodeArrays, check_dimensions, history_windows, load_episodes

log = logging.getLogger(__name__)

# Meta-World's state: hand xyz (0:3), gripper (3), first object xyz (4:7); what the trajectory plot shows.
PLOTTED_DIMS = {"hand x": 0, "hand y": 1, "hand z": 2, "object x": 4, "object y": 5, "object z": 6}


@dataclass(frozen=True)
class EvalWorldConfig:
    world: str = field(default="", metadata={"help": "world-model folder (`sop world train --out`)"})
    store: str = field(
        default="", metadata={"help": "episode store; empty: the one the model was trained on"}
    )
    out: str = field(
        default="", metadata={"help": "output folder for eval.json and plots; empty: <world>/eval"}
    )
    horizon: int = field(default=16, metadata={"help": "H: autoregressive horizons 1..H"})
    start_every: int = field(default=8, metadata={"help": "steps between autoregressive start points"})
    threshold: float = field(default=0.5, metadata={"help": "success-model decision threshold"})
    plot_episodes: int = 2
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if not self.world:
            raise ValueError("world: name the world-model folder (--world DIR)")
        if self.horizon < 1 or self.start_every < 1 or self.threads < 1:
            raise ValueError("horizon, start_every and threads must be >= 1")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")


def _z_mse(model: WorldModel, predicted: Tensor, real: Tensor) -> float:
    return float((((predicted - real) / model.state_std) ** 2).mean())


def rollout(
    model: WorldModel,
    history: Tensor,
    actions: Tensor,
    task: Tensor,
    *,
    diffusion: bool,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Feed the model its own predictions: history (B, k, D), actions (B, H, A) -> states (B, H, D)."""
    predicted = []
    for step in range(actions.shape[1]):
        if diffusion:
            state = model.predict_next(history, actions[:, step], task, generator)
        else:
            state = model.predict_next_baseline(history, actions[:, step], task)
        predicted.append(state)
        history = torch.cat([history[:, 1:], state[:, None]], dim=1)
    return torch.stack(predicted, dim=1)


def held_out_episodes(
    model_extra: dict[str, Any], config: EvalWorldConfig
) -> tuple[str, list[EpisodeArrays]]:
    """The store to evaluate on and its episodes the model never trained on (module docstring)."""
    trained_on = str(model_extra.get("store", ""))
    store = config.store or trained_on
    if not store:
        raise WorldModelError(f"{config.world} does not name its store; pass --store")
    episodes = load_episodes(store)
    if trained_on and Path(store).resolve() == Path(trained_on).resolve():
        held = set(model_extra.get("held_out_episodes", []))
        episodes = [episode for episode in episodes if episode.episode_id in held]
        if not episodes:
            raise WorldModelError(
                f"{store} is the store {config.world} was trained on and it held out no episodes "
                "(held_out_every 0): pass another store with --store"
            )
    return store, episodes


def evaluate_world(config: EvalWorldConfig) -> dict[str, Any]:
    torch.set_num_threads(config.threads)
    model, extra = WorldModel.load(config.world)
    store, episodes = held_out_episodes(extra, config)
    check_dimensions(episodes, model.config.state_dim, model.config.action_dim, f"store {store}")
    known = set(model.config.tasks)
    episodes = [episode for episode in episodes if not known or episode.task in known]
    if not episodes:
        raise WorldModelError(f"{store} has no episodes of the world model's tasks {sorted(known)}")
    generator = torch.Generator().manual_seed(config.seed)
    k, horizon = model.config.history, config.horizon

    # One step, every transition of every held-out episode.
    histories, actions, nexts, tasks, states, labels, state_tasks = [], [], [], [], [], [], []
    starts_history, starts_actions, starts_real, starts_task = [], [], [], []
    for episode in episodes:
        task_index = int(model.task_indices([episode.task])[0])
        windows = history_windows(episode.states, k)
        histories.append(windows[:-1])
        actions.append(episode.actions[:-1])
        nexts.append(episode.states[1:])
        tasks += [task_index] * (len(episode.states) - 1)
        states.append(episode.states)
        labels.append(episode.success)
        state_tasks += [task_index] * len(episode.states)
        for start in range(0, len(episode.states) - horizon, config.start_every):
            starts_history.append(windows[start])
            starts_actions.append(episode.actions[start : start + horizon])
            starts_real.append(episode.states[start + 1 : start + 1 + horizon])
            starts_task.append(task_index)
    history = torch.from_numpy(np.concatenate(histories))
    action = torch.from_numpy(np.concatenate(actions))
    real_next = torch.from_numpy(np.concatenate(nexts))
    task = torch.as_tensor(tasks, dtype=torch.long)
    one_step = {
        "diffusion": _z_mse(model, model.predict_next(history, action, task, generator), real_next),
        "mlp": _z_mse(model, model.predict_next_baseline(history, action, task), real_next),
        "copy_last_state": _z_mse(model, history[:, -1], real_next),
    }

    results: dict[str, Any] = {
        "world": str(config.world),
        "store": str(store),
        "episodes": len(episodes),
        "transitions": len(action),
        "error_units": "mean squared error of z-scored states (per-dimension training std)",
        "one_step_mse": one_step,
    }
    if starts_history:
        start_history = torch.from_numpy(np.stack(starts_history))
        start_actions = torch.from_numpy(np.stack(starts_actions))
        start_real = torch.from_numpy(np.stack(starts_real))
        start_task = torch.as_tensor(starts_task, dtype=torch.long)
        per_horizon = {}
        for name, diffusion in (("diffusion", True), ("mlp", False)):
            predicted = rollout(
                model, start_history, start_actions, start_task, diffusion=diffusion, generator=generator
            )
            error = (((predicted - start_real) / model.state_std) ** 2).mean(dim=(0, 2))
            per_horizon[name] = [float(value) for value in error]
        copy = (((start_history[:, -1:] - start_real) / model.state_std) ** 2).mean(dim=(0, 2))
        results["rollout_mse"] = {
            "horizons": list(range(1, horizon + 1)),
            "starts": len(starts_history),
            **per_horizon,
            "copy_last_state": [float(value) for value in copy],
        }
        results[f"horizon_{horizon}_mse"] = {name: values[-1] for name, values in per_horizon.items()}
    else:
        results["rollout_mse"] = {
            "horizons": [],
            "starts": 0,
            "diffusion": [],
            "mlp": [],
            "copy_last_state": [],
        }

    all_states = torch.from_numpy(np.concatenate(states))
    truth = torch.from_numpy(np.concatenate(labels))
    predicted_success = model.success_probability(all_states, torch.as_tensor(state_tasks)) > config.threshold
    true_positive = int((predicted_success & truth).sum())
    results["success"] = {
        "threshold": config.threshold,
        "frames": len(truth),
        "positives": int(truth.sum()),
        "predicted_positives": int(predicted_success.sum()),
        "precision": true_positive / max(1, int(predicted_success.sum())),
        "recall": true_positive / max(1, int(truth.sum())),
        "accuracy": float((predicted_success == truth).float().mean()),
    }
    out = Path(config.out) if config.out else Path(config.world) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    results["plots"] = _plot(model, episodes[: config.plot_episodes], results, out, generator)
    (out / "eval.json").write_text(json.dumps(results, indent=1))
    results["out"] = str(out)
    return results


def _plot(
    model: WorldModel,
    episodes: list[EpisodeArrays],
    results: dict[str, Any],
    out: Path,
    generator: torch.Generator,
) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    written = []
    if episodes:
        fig, axes = plt.subplots(
            len(episodes),
            len(PLOTTED_DIMS),
            figsize=(3 * len(PLOTTED_DIMS), 2.6 * len(episodes)),
            squeeze=False,
        )
        for row, episode in enumerate(episodes):
            steps = len(episode.states) - 1
            history = torch.from_numpy(history_windows(episode.states, model.config.history)[:1])
            actions = torch.from_numpy(episode.actions[None, :steps])
            task = model.task_indices([episode.task])
            predicted = {
                "diffusion": rollout(model, history, actions, task, diffusion=True, generator=generator)[
                    0
                ].numpy(),
                "mlp": rollout(model, history, actions, task, diffusion=False)[0].numpy(),
            }
            for column, (label, dim) in enumerate(PLOTTED_DIMS.items()):
                axis = axes[row][column]
                axis.plot(episode.states[:, dim], "k-", label="real")
                axis.plot(range(1, steps + 1), predicted["diffusion"][:, dim], "C0--", label="diffusion")
                axis.plot(range(1, steps + 1), predicted["mlp"][:, dim], "C1:", label="MLP")
                axis.set_title(f"{episode.task} {label}", fontsize=8)
        axes[0][0].legend(fontsize=7)
        fig.suptitle("held-out episodes: open-loop rollout from step 0 on the real actions")
        fig.tight_layout()
        path = out / "trajectories.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path.name)
    rollout_mse = results["rollout_mse"]
    if rollout_mse["horizons"]:
        fig, axis = plt.subplots(figsize=(5, 3.5))
        for name, style in (("diffusion", "C0-o"), ("mlp", "C1-s"), ("copy_last_state", "k:")):
            axis.plot(rollout_mse["horizons"], rollout_mse[name], style, label=name, markersize=3)
        axis.set_yscale("log")
        axis.set_xlabel("horizon (steps)")
        axis.set_ylabel("MSE (z-scored state)")
        axis.legend()
        fig.tight_layout()
        path = out / "horizon_error.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path.name)
    return written


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(EvalWorldConfig, args)
    results = evaluate_world(config)
    one = results["one_step_mse"]
    print(f"{results['episodes']} held-out episodes, {results['transitions']} transitions")
    print(
        f"one-step MSE      diffusion {one['diffusion']:.4f}  mlp {one['mlp']:.4f}  copy {one['copy_last_state']:.4f}"
    )
    horizon_key = f"horizon_{config.horizon}_mse"
    if horizon_key in results:
        h = results[horizon_key]
        print(f"horizon {config.horizon} MSE     diffusion {h['diffusion']:.4f}  mlp {h['mlp']:.4f}")
    s = results["success"]
    print(
        f"success model     precision {s['precision']:.3f}  recall {s['recall']:.3f}  ({s['positives']} positive frames)"
    )
    print(f"wrote {results['out']}/eval.json")
    return 0
