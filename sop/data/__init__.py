"""Episode data: the wire codec, upload chunking, the zarr episode store, the window sampler and LeRobot I/O.

Modules (import the one you need; nothing heavy is imported here):

- `sop.data.codec`: numpy/torch arrays and episodes <-> `sop.v1` protobuf records (no pickle).
- `sop.data.upload_chunks`: split a serialized episode into <= 1 MiB `EpisodeChunk`s and reassemble them.
- `sop.data.episode_store`: the append-only, crash-safe zarr 3 episode store (robot spool and replay store);
  its on-disk format in `sop.data.episode_store_format`, step-by-step recording in `sop.data.episode_writer`,
  crash leftovers in `sop.data.partial_recovery`, the zarr files themselves in `sop.data.zarr_io`.
- `sop.data.window_sampler`: weighted (task, source, frame) sampling of Diffusion-Policy windows.
- `sop.data.lerobot_dataset`: export to / import from LeRobotDataset v3.
"""
