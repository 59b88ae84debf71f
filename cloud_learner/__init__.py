"""The cloud learner: ingest robot episodes, train asynchronously, publish checkpoints to the fleet.

Modules (one concept each):

- `service`: `sop learner serve` and `LearnerService(config).start() -> port` / `.stop()`; the gRPC
  Fleet, Operator and health services, keep-alive and server options.
- `auth`: the per-robot token interceptor (UNAUTHENTICATED before any handler runs).
- `ingest`: chunk checks, staging of cut uploads, exactly-once durable commits, back-pressure.
- `replay`: the replay store, offline demonstration import, SOP's per-task online/offline mixing.
- `trainer`: the asynchronous training thread, publication every K steps, TensorBoard logs.
- `algorithms/`: the plug-in interface (`base`) and HG-DAgger (`hg_dagger`).
- `checkpoint_store`: published versions on disk, atomic, last N kept.
- `publisher`: WatchPolicy announcements and FetchCheckpoint bytes prepared once per version.
- `operator_relay`: console commands to a robot's Operator.Session, telemetry back.
- `roster`: which robots registered and what they last reported.
- `liveness`: per-stream idle timeouts (the stream watchdog).
- `config`: the typed config of `configs/learner.yaml`.
- `benchmark`: `sop bench learner`.
"""
