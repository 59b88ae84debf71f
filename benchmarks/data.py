"""`sop bench data`: throughput of the codec, the episode store and the window sampler, each beside the
same operation on plain in-memory numpy arrays, measured in one run on the same data (medians of repeats).

    sop bench data                                   # default sizes, writes benchmarks/results/data.md
    sop bench data --episodes 8 --steps 300 --repeats 7 --out benchmarks/results/data.md

Baselines (what the ratio divides by):
- codec encode/decode: copying the same arrays into one bytes blob (`tobytes`) and back (`frombuffer().copy()`);
- store append: `np.save` of each array to a fresh directory (with fsync of every file when the store is
  durable), i.e. the same bytes to the same disk without compression, metadata or atomic commit;
- store read: `np.load` of those files;
- window sampling: the same windows gathered by fancy indexing from arrays that are wholly in memory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.machine import describe_machine, load_average
from benchmarks.reporting import (
    command_line,
    markdown_table,
    median,
    median_seconds,
    time_once,
    write_report,
)
from sop.config import parse_config
from sop.data.codec import decode_episode, encode_episode
from sop.data.episode_store import EpisodeStore
from sop.data.synthetic_episodes import make_episode
from sop.data.upload_chunks import ChunkSet, split_into_chunks
from sop.data.window_sampler import WindowSampler
from sop.episode import ACTION, IMAGE_PREFIX, STATE, Episode


@dataclass(frozen=True)
class DataBenchmarkConfig:
    episodes: int = field(default=8, metadata={"help": "episodes in the store"})
    steps: int = field(default=300, metadata={"help": "steps per episode (10 s at 30 Hz)"})
    image_size: int = field(default=64, metadata={"help": "square camera frame side (Meta-World renders 64)"})
    cameras: int = field(default=1, metadata={"help": "cameras per episode"})
    repeats: int = field(default=7, metadata={"help": "timed repeats per figure; the median is reported"})
    batch_size: int = field(default=64, metadata={"help": "windows per sampled batch"})
    obs_horizon: int = 2
    action_horizon: int = 16
    work_dir: str | None = field(default=None, metadata={"help": "scratch folder (default: a temp dir)"})
    out: str | None = field(default="benchmarks/results/data.md", metadata={"help": "markdown to write"})

    def __post_init__(self) -> None:
        for name in ("episodes", "steps", "image_size", "repeats", "batch_size", "obs_horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        if self.cameras < 0:
            raise ValueError("cameras: must be >= 0")
        if self.action_horizon < self.obs_horizon:
            raise ValueError("action_horizon: must be >= obs_horizon")


def _rendered_like_frames(num_steps: int, side: int, seed: int) -> np.ndarray:
    """Smooth frames with a moving blob, like rendered scenes (which compress; random bytes would not)."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    frames = np.empty((num_steps, side, side, 3), np.uint8)
    for t in range(num_steps):
        cx, cy = 0.5 + 0.3 * np.cos(t / 20), 0.5 + 0.3 * np.sin(t / 25)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.01)
        base = np.stack([0.3 + 0.4 * x, 0.4 + 0.2 * y, 0.5 + 0.3 * blob], axis=-1)
        frames[t] = np.clip(base * 255 + seed % 7, 0, 255).astype(np.uint8)
    return frames


def _episodes(config: DataBenchmarkConfig) -> list[Episode]:
    cameras = [f"cam{i}" for i in range(config.cameras)]
    episodes = []
    for seed in range(config.episodes):
        episode = make_episode(
            config.steps, cameras=cameras, image_size=(config.image_size, config.image_size), seed=seed
        )
        for i, camera in enumerate(cameras):
            episode.steps[IMAGE_PREFIX + camera] = _rendered_like_frames(
                config.steps, config.image_size, seed * 7 + i
            )
        episodes.append(episode)
    return episodes


@dataclass
class Row:
    what: str
    ours: float
    baseline: float
    unit: str
    baseline_name: str

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("nan")


def _save_arrays(directory: Path, episode: Episode, durable: bool) -> None:
    directory.mkdir()
    for key, values in episode.steps.items():
        path = directory / f"{key}.npy"
        with open(path, "wb") as f:
            np.save(f, values)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    if durable:
        fd = os.open(directory, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def run_benchmark(config: DataBenchmarkConfig) -> list[Row]:
    episodes = _episodes(config)
    episode = episodes[0]
    megabytes = episode.nbytes / 1e6
    all_megabytes = sum(e.nbytes for e in episodes) / 1e6
    rows: list[Row] = []
    repeats = config.repeats

    # Codec.
    blob = encode_episode(episode)
    encode = median_seconds(lambda: encode_episode(episode), repeats)
    raw_encode = median_seconds(lambda: b"".join(v.tobytes() for v in episode.steps.values()), repeats)
    rows.append(
        Row("codec encode_episode", megabytes / encode, megabytes / raw_encode, "MB/s", "tobytes + join")
    )
    decode = median_seconds(lambda: decode_episode(blob), repeats)
    raw = b"".join(v.tobytes() for v in episode.steps.values())

    def raw_decode() -> None:
        offset = 0
        for values in episode.steps.values():
            np.frombuffer(raw, values.dtype, values.size, offset).reshape(values.shape).copy()
            offset += values.nbytes

    raw_decode_s = median_seconds(raw_decode, repeats)
    rows.append(
        Row(
            "codec decode_episode (+validate)",
            megabytes / decode,
            megabytes / raw_decode_s,
            "MB/s",
            "frombuffer + copy",
        )
    )
    chunks_s = median_seconds(lambda: _reassemble(episode.episode_id, blob), repeats)
    copy_s = median_seconds(lambda: bytes(bytearray(blob)), repeats)
    payload_mb = len(blob) / 1e6
    rows.append(
        Row(
            "upload chunks split + ChunkSet.assemble (sha256)",
            payload_mb / chunks_s,
            payload_mb / copy_s,
            "MB/s",
            "bytes copy",
        )
    )

    scratch = Path(config.work_dir) if config.work_dir else Path(tempfile.mkdtemp(prefix="sop-bench-data-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        store_dir, numpy_dir = scratch / "store", scratch / "numpy"
        for durable in (True, False):
            ours_s, base_s = [], []
            for _ in range(repeats):  # interleaved, so load from other processes hits both alike
                shutil.rmtree(store_dir, ignore_errors=True)
                ours_s.append(time_once(_append_all, store_dir, episodes, durable))
                shutil.rmtree(numpy_dir, ignore_errors=True)
                base_s.append(time_once(_save_all, numpy_dir, episodes, durable))
            label = "durable (fsync)" if durable else "no fsync"
            rows.append(
                Row(
                    f"store append, {label}",
                    all_megabytes / median(ours_s),
                    all_megabytes / median(base_s),
                    "MB/s",
                    f"np.save per array, {label}",
                )
            )

        store = EpisodeStore(store_dir, create=False)
        ids = [i.episode_id for i in store.list()]
        saved = sorted(numpy_dir.iterdir())
        read = median_seconds(lambda: [store.get(i) for i in ids], repeats)
        load = median_seconds(lambda: [[np.load(p) for p in d.iterdir()] for d in saved], repeats)
        rows.append(
            Row(
                "store get (whole episodes)",
                all_megabytes / read,
                all_megabytes / load,
                "MB/s",
                "np.load per array",
            )
        )
        stored_mb = sum(i.stored_bytes for i in store.list()) / 1e6
        rows.append(Row("store size on disk vs raw", stored_mb, all_megabytes, "MB", "raw array bytes"))

        rows += _sampling_rows(config, store, episodes)
    finally:
        if config.work_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return rows


def _append_all(root: Path, episodes: list[Episode], durable: bool) -> None:
    store = EpisodeStore(root, durable=durable)
    for episode in episodes:
        store.append(episode)


def _save_all(root: Path, episodes: list[Episode], durable: bool) -> None:
    root.mkdir()
    for index, episode in enumerate(episodes):
        _save_arrays(root / str(index), episode, durable)


def _reassemble(episode_id: str, blob: bytes) -> bytes:
    received = ChunkSet(episode_id)
    for chunk in split_into_chunks(episode_id, blob):
        received.add(chunk)
    return received.assemble()


def _sampling_rows(config: DataBenchmarkConfig, store: EpisodeStore, episodes: list[Episode]) -> list[Row]:
    rows = []
    to, tp, batch = config.obs_horizon, config.action_horizon, config.batch_size
    cameras = [k for k in episodes[0].steps if k.startswith(IMAGE_PREFIX)]
    lengths = np.array([e.num_steps for e in episodes])
    in_memory = {key: np.stack([e.steps[key] for e in episodes]) for key in (STATE, ACTION, *cameras)}

    def gather(rng: np.random.Generator, with_images: bool) -> dict[str, np.ndarray]:
        ep = rng.integers(0, len(episodes), batch)
        t = rng.integers(0, lengths[ep])
        obs = np.clip(t[:, None] + np.arange(-to + 1, 1), 0, lengths[ep][:, None] - 1)
        act = np.clip(t[:, None] + np.arange(-to + 1, -to + 1 + tp), 0, lengths[ep][:, None] - 1)
        out = {STATE: in_memory[STATE][ep[:, None], obs], ACTION: in_memory[ACTION][ep[:, None], act]}
        if with_images:
            for key in cameras:
                out[key] = in_memory[key][ep[:, None], obs]
        return out

    for with_images in (False, True) if cameras else (False,):
        sampler = WindowSampler(store, to, tp, image_keys=cameras if with_images else None)
        rng = np.random.default_rng(0)
        sampler.sample(batch, rng)  # warm the array cache
        ours_s, base_s = [], []
        for _ in range(config.repeats):
            ours_s.append(time_once(sampler.sample, batch, rng))
            base_s.append(time_once(gather, rng, with_images))
        label = f"{len(cameras)} camera(s) read lazily" if with_images else "low-dim only"
        rows.append(
            Row(
                f"window sampling, {label}",
                batch / median(ours_s),
                batch / median(base_s),
                "windows/s",
                "fancy indexing in memory",
            )
        )
    return rows


def format_markdown(config: DataBenchmarkConfig, rows: list[Row], command: str) -> str:
    shape = f"{config.episodes} episodes x {config.steps} steps, state 39, action 4, {config.cameras} camera(s) {config.image_size}x{config.image_size}"
    lines = [
        "## Data path: codec, episode store, window sampler",
        "",
        f"Machine: {describe_machine().summary()}; load average {load_average()} when the run ended "
        "(shared with other work: absolute figures move with load, ratios much less). "
        f"Data: {shape}; batches of {config.batch_size} windows (To={config.obs_horizon}, Tp={config.action_horizon}). "
        f"Medians of {config.repeats} repeats; each baseline runs in the same process on the same data.",
        "",
    ]
    lines += markdown_table(
        ["operation", "SOP", "baseline", "SOP / baseline", "baseline is", "command"],
        [
            [
                row.what,
                f"{row.ours:,.1f} {row.unit}",
                f"{row.baseline:,.1f} {row.unit}",
                f"{row.ratio:.2f}",
                row.baseline_name,
                f"`{command}`",
            ]
            for row in rows
        ],
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    config = parse_config(DataBenchmarkConfig, argv)
    rows = run_benchmark(config)
    text = format_markdown(config, rows, command_line("sop bench data", argv))
    print(text)
    if config.out:
        write_report(config.out, text)
    return 0
