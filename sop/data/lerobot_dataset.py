"""LeRobotDataset v3 <-> episode store, both ways, through lerobot's own API (works offline).

LeRobotDataset v3 is the field's interchange format, so SOP data leaves and enters through it:

    sop export lerobot --store DIR --out DIR --repo_id NAME [--tasks '[reach-v3]'] [--source online]
                       [--use-videos true]
    sop import lerobot --root DIR --repo_id NAME --store DIR [--task_map '{"pick the cube": pick-place-v3}']
                       [--task NAME] [--outcome success]

Export writes one LeRobot episode per stored episode with the features `observation.state`, `action`,
`policy_action`, `intervention` (bool), `policy_version` (int64), `next.reward` and one
`observation.images.<camera>` per camera; each frame's LeRobot task is the episode's instruction. SOP's
per-episode metadata that LeRobot has no place for (episode id, robot, task id, outcome, source, wall-clock
start) goes into a sidecar `meta/sop_episodes.jsonl`, which lerobot ignores and `import` reads back.

Images: by default they are stored as lossless PNG image features (`use_videos=False`), so a round trip is
exact and nothing needs FFmpeg. `use_videos=True` encodes AV1 videos through PyAV (lossy; a few grey levels
off per pixel) and decodes with `video_backend="pyav"`: torchcodec cannot load here (no system FFmpeg), so
every LeRobotDataset this module opens names the PyAV backend. Loading needs no hub access:

    LeRobotDataset(NAME, root=DIR, video_backend="pyav")       # with HF_HUB_OFFLINE=1

Import turns every LeRobot episode into an offline demonstration (`Source.OFFLINE`): `action` is the
executed action and also the `policy_action` unless the dataset has one; `intervention`, `policy_version`
and `next.reward` are taken when present (else False, 0, 0). The task id comes from `task_map` (instruction ->
task id), else the sidecar, else `task`, else the instruction itself. Episode ids are the sidecar's
or a UUID derived from (repo_id, episode_index), so importing the same dataset twice adds nothing.

Public API:

    export_store_to_lerobot(store, out_dir, repo_id, *, tasks=None, source=None, episode_ids=None,
                            use_videos=False) -> LeRobotTransfer
    import_lerobot_into_store(dataset_root, repo_id, store, *, task_map=None, task=None,
                              outcome=Outcome.SUCCESS, state_key="observation.state") -> LeRobotTransfer
    export_main(argv) -> int        import_main(argv) -> int
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sop.config import parse_config
from sop.data.episode_store import DuplicateEpisodeError, EpisodeInfo, EpisodeStore
from sop.episode import (
    ACTION,
    IMAGE_PREFIX,
    INTERVENTION,
    POLICY_ACTION,
    POLICY_VERSION,
    REWARD,
    STATE,
    TIMESTAMP,
    Episode,
    Outcome,
    Source,
)

SIDECAR = "meta/sop_episodes.jsonl"
LEROBOT_REWARD = "next.reward"
VIDEO_BACKEND = "pyav"
_IMPORT_NAMESPACE = uuid.UUID("6f1c5d5e-6a43-4c1e-9a43-5d0e6f3b1a77")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeRobotTransfer:
    """What an export or import did."""

    episodes: int
    frames: int
    skipped: int = 0  # import: episodes already in the store


def _lerobot_dataset_class() -> Any:
    """Imported lazily: lerobot pulls in torch, datasets and pandas (seconds), only export/import need it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset


def _features(info: EpisodeInfo, use_videos: bool) -> dict[str, dict[str, Any]]:
    def vector(dtype: str, shape: tuple[int, ...]) -> dict[str, Any]:
        return {"dtype": dtype, "shape": shape, "names": None}

    features = {
        STATE: vector("float32", info.step_shapes[STATE]),
        ACTION: vector("float32", info.step_shapes[ACTION]),
        POLICY_ACTION: vector("float32", info.step_shapes[POLICY_ACTION]),
        INTERVENTION: vector("bool", (1,)),
        POLICY_VERSION: vector("int64", (1,)),
        LEROBOT_REWARD: vector("float32", (1,)),
    }
    for camera in info.cameras:
        features[IMAGE_PREFIX + camera] = {
            "dtype": "video" if use_videos else "image",
            "shape": info.step_shapes[IMAGE_PREFIX + camera],
            "names": ["height", "width", "channels"],
        }
    return features


def _check_uniform(infos: Sequence[EpisodeInfo]) -> int:
    """One LeRobotDataset has one fps and one shape per feature; refuse a mixed selection by name."""
    first = infos[0]
    fps = round(first.fps)
    for info in infos[1:]:
        if round(info.fps) != fps:
            raise ValueError(
                f"fps: episode {info.episode_id} runs at {info.fps} Hz, {first.episode_id} at {first.fps}"
            )
        if info.step_shapes != first.step_shapes:
            differing = sorted(
                k for k in {*info.step_shapes, *first.step_shapes}
                if info.step_shapes.get(k) != first.step_shapes.get(k)
            )  # fmt: skip
            raise ValueError(
                f"{differing[0]}: episode {info.episode_id} and {first.episode_id} differ in shape or keys; "
                "export them into separate datasets (filter with --tasks / --source)"
            )
    return fps


def export_store_to_lerobot(
    store: EpisodeStore,
    out_dir: str | Path,
    repo_id: str,
    *,
    tasks: Sequence[str] | None = None,
    source: Source | str | None = None,
    episode_ids: Sequence[str] | None = None,
    use_videos: bool = False,
) -> LeRobotTransfer:
    """Write the selected episodes as a LeRobotDataset v3 under `out_dir` (which must not exist yet)."""
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"out: {out} already exists; LeRobotDataset.create needs a new folder")
    infos = [i for i in store.list(source=source) if tasks is None or i.task in tasks]
    if episode_ids is not None:
        wanted = set(episode_ids)
        infos = [i for i in infos if i.episode_id in wanted]
    if not infos:
        raise ValueError(f"store: no episodes match tasks={tasks} source={source} in {store.root}")
    fps = _check_uniform(infos)
    dataset = _lerobot_dataset_class().create(
        repo_id,
        fps=fps,
        features=_features(infos[0], use_videos),
        root=out,
        use_videos=use_videos,
        video_backend=VIDEO_BACKEND,
    )
    frames = 0
    sidecar = []
    for index, info in enumerate(infos):
        episode = store.get(info.episode_id)
        steps = episode.steps
        for t in range(episode.num_steps):
            frame: dict[str, Any] = {
                STATE: steps[STATE][t],
                ACTION: steps[ACTION][t],
                POLICY_ACTION: steps[POLICY_ACTION][t],
                INTERVENTION: steps[INTERVENTION][t : t + 1],
                POLICY_VERSION: steps[POLICY_VERSION][t : t + 1],
                LEROBOT_REWARD: steps[REWARD][t : t + 1],
                "task": episode.instruction,
            }
            for camera in info.cameras:
                frame[IMAGE_PREFIX + camera] = steps[IMAGE_PREFIX + camera][t]
            dataset.add_frame(frame)
        dataset.save_episode()
        frames += episode.num_steps
        sidecar.append(
            {
                "episode_index": index,
                "episode_id": episode.episode_id,
                "robot_id": episode.robot_id,
                "task": episode.task,
                "instruction": episode.instruction,
                "outcome": str(episode.outcome),
                "source": str(episode.source),
                "started_at": episode.started_at,
                "ended_at": episode.ended_at,
                "fps": episode.fps,
                "extra": episode.extra,
            }
        )
    dataset.finalize()
    (out / SIDECAR).write_text("".join(json.dumps(row) + "\n" for row in sidecar))
    return LeRobotTransfer(episodes=len(infos), frames=frames)


def _read_sidecar(root: Path) -> dict[int, dict[str, Any]]:
    path = root / SIDECAR
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {int(row["episode_index"]): row for row in rows}


def _as_hwc_uint8(image: Any) -> np.ndarray:
    """LeRobot hands out decoded frames as float CHW in [0, 1]; the store keeps uint8 HWC."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


def _require_dataset_root(dataset_root: str | Path) -> Path:
    """A local LeRobotDataset folder; refusing early means a typo never falls through to a hub download."""
    root = Path(dataset_root)
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"root: {root} holds no LeRobotDataset (meta/info.json is missing)")
    return root


def import_lerobot_into_store(
    dataset_root: str | Path,
    repo_id: str,
    store: EpisodeStore,
    *,
    task_map: Mapping[str, str] | None = None,
    task: str | None = None,
    outcome: Outcome = Outcome.SUCCESS,
    state_key: str = STATE,
) -> LeRobotTransfer:
    """Append every episode of a local LeRobotDataset to `store` as an offline demonstration."""
    root = _require_dataset_root(dataset_root)
    dataset = _lerobot_dataset_class()(repo_id, root=root, video_backend=VIDEO_BACKEND)
    features = dataset.meta.features
    for required in (state_key, ACTION):
        if required not in features:
            raise ValueError(f"{required}: the dataset has no such feature (it has {sorted(features)})")
    cameras = [k for k in dataset.meta.camera_keys if k.startswith(IMAGE_PREFIX)]
    video_keys = set(dataset.meta.video_keys)
    optional = [k for k in (POLICY_ACTION, INTERVENTION, POLICY_VERSION, LEROBOT_REWARD) if k in features]
    table_keys = [state_key, ACTION, "timestamp", *optional, *(c for c in cameras if c not in video_keys)]
    table = dataset.hf_dataset.select_columns(table_keys).with_format("numpy")
    sidecar = _read_sidecar(root)
    fps = float(dataset.meta.fps)
    imported = frames = skipped = 0
    base_time = time.time()
    for row in dataset.meta.episodes:
        index = int(row["episode_index"])
        start, stop = int(row["dataset_from_index"]), int(row["dataset_to_index"])
        meta = sidecar.get(index, {})
        instruction = str(meta.get("instruction") or (row["tasks"][0] if row["tasks"] else repo_id))
        episode_id = str(meta.get("episode_id") or uuid.uuid5(_IMPORT_NAMESPACE, f"{repo_id}/{index}"))
        if episode_id in store:
            skipped += 1
            continue
        columns = table[start:stop]
        num_steps = stop - start
        action = np.asarray(columns[ACTION], np.float32).reshape(num_steps, -1)
        started_at = float(meta.get("started_at", base_time + index))
        steps: dict[str, np.ndarray] = {
            STATE: np.asarray(columns[state_key], np.float32).reshape(num_steps, -1),
            ACTION: action,
            POLICY_ACTION: (
                np.asarray(columns[POLICY_ACTION], np.float32).reshape(num_steps, -1)
                if POLICY_ACTION in columns
                else action.copy()
            ),
            INTERVENTION: (
                np.asarray(columns[INTERVENTION], np.bool_).reshape(num_steps)
                if INTERVENTION in columns
                else np.zeros(num_steps, np.bool_)
            ),
            POLICY_VERSION: (
                np.asarray(columns[POLICY_VERSION], np.int64).reshape(num_steps)
                if POLICY_VERSION in columns
                else np.zeros(num_steps, np.int64)
            ),
            REWARD: (
                np.asarray(columns[LEROBOT_REWARD], np.float32).reshape(num_steps)
                if LEROBOT_REWARD in columns
                else np.zeros(num_steps, np.float32)
            ),
            TIMESTAMP: started_at + np.asarray(columns["timestamp"], np.float64).reshape(num_steps),
        }
        for camera in cameras:
            if camera in video_keys:  # decoded frame by frame through lerobot (PyAV)
                steps[camera] = np.stack([_as_hwc_uint8(dataset[i][camera]) for i in range(start, stop)])
            else:
                steps[camera] = np.stack([_as_hwc_uint8(image) for image in columns[camera]])
        task_id = (task_map or {}).get(instruction) or meta.get("task") or task or instruction
        episode = Episode(
            episode_id=episode_id,
            robot_id=str(meta.get("robot_id") or dataset.meta.robot_type or "lerobot"),
            task=str(task_id),
            instruction=instruction,
            outcome=Outcome(meta.get("outcome", outcome)),
            started_at=started_at,
            ended_at=float(meta.get("ended_at", started_at + num_steps / fps)),
            steps=steps,
            source=Source.OFFLINE,
            fps=float(meta.get("fps", fps)),
            extra={**{str(k): str(v) for k, v in meta.get("extra", {}).items()}, "lerobot_repo_id": repo_id},
        )
        try:
            store.append(episode)
        except DuplicateEpisodeError:
            skipped += 1
            continue
        imported += 1
        frames += num_steps
    return LeRobotTransfer(episodes=imported, frames=frames, skipped=skipped)


# ----------------------------------------------------------------------------------------------------------
# Command line


@dataclass(frozen=True)
class ExportConfig:
    store: str = field(default="", metadata={"help": "episode store directory to read"})
    out: str = field(default="", metadata={"help": "new directory for the LeRobotDataset"})
    repo_id: str = field(default="", metadata={"help": "dataset name, e.g. sop/reach-online"})
    tasks: list[str] | None = field(default=None, metadata={"help": "only these task ids"})
    source: str | None = field(default=None, metadata={"help": "only 'online' or 'offline' episodes"})
    use_videos: bool = field(default=False, metadata={"help": "AV1 videos (lossy) instead of PNG frames"})

    def __post_init__(self) -> None:
        for name in ("store", "out", "repo_id"):
            if not getattr(self, name):
                raise ValueError(f"{name}: is required")
        if self.source is not None and self.source not in (Source.ONLINE, Source.OFFLINE):
            raise ValueError(f"source: {self.source!r} is not 'online' or 'offline'")


@dataclass(frozen=True)
class ImportConfig:
    root: str = field(default="", metadata={"help": "LeRobotDataset directory to read"})
    repo_id: str = field(default="", metadata={"help": "dataset name"})
    store: str = field(default="", metadata={"help": "episode store directory to append to"})
    task_map: dict[str, str] = field(default_factory=dict, metadata={"help": "instruction -> task id"})
    task: str | None = field(default=None, metadata={"help": "task id for instructions not in task_map"})
    outcome: str = field(default=str(Outcome.SUCCESS), metadata={"help": "outcome of imported episodes"})
    state_key: str = field(default=STATE, metadata={"help": "feature to import as observation.state"})

    def __post_init__(self) -> None:
        for name in ("root", "repo_id", "store"):
            if not getattr(self, name):
                raise ValueError(f"{name}: is required")
        if self.outcome not in {o.value for o in Outcome}:
            raise ValueError(f"outcome: {self.outcome!r} is not one of {[o.value for o in Outcome]}")


def export_main(argv: list[str]) -> int:
    """`sop export lerobot`: write an episode store as a LeRobotDataset v3."""
    try:
        config = parse_config(ExportConfig, argv)
        store = EpisodeStore(config.store, create=False)
        result = export_store_to_lerobot(
            store,
            config.out,
            config.repo_id,
            tasks=config.tasks,
            source=config.source,
            use_videos=config.use_videos,
        )
    except (ValueError, OSError) as exc:  # bad flags, missing store, existing output, mixed shapes
        print(f"sop export lerobot: {exc}", file=sys.stderr)
        return 2
    print(f"exported {result.episodes} episodes ({result.frames} frames) to {config.out} as {config.repo_id}")
    return 0


def import_main(argv: list[str]) -> int:
    """`sop import lerobot`: append a LeRobotDataset to an episode store as offline demonstrations."""
    try:
        config = parse_config(ImportConfig, argv)
        _require_dataset_root(config.root)
        store = EpisodeStore(config.store)
        result = import_lerobot_into_store(
            config.root,
            config.repo_id,
            store,
            task_map=config.task_map,
            task=config.task,
            outcome=Outcome(config.outcome),
            state_key=config.state_key,
        )
    except (ValueError, OSError) as exc:  # bad flags, unreadable dataset, missing features
        print(f"sop import lerobot: {exc}", file=sys.stderr)
        return 2
    print(
        f"imported {result.episodes} episodes ({result.frames} frames) from {config.root} into {config.store}; "
        f"{result.skipped} were already there"
    )
    return 0
