"""The `sop bench ...` benchmarks: scripts beside the product, not inside it.

Each module measures one area against a baseline run side by side on the same machine and writes a markdown
section to `benchmarks/results/<area>.md` (`scripts/collect_benchmarks.py` assembles BENCHMARKS.md from them):

- `benchmarks.env`: `sop bench env`, Meta-World steps/s with and without rendering;
- `benchmarks.data`: `sop bench data`, codec, episode store and window-sampler throughput;
- `benchmarks.rti`: `sop bench rti`, RTI warm-started sampling vs cold-start DDPM / DDIM;
- `benchmarks.robot`: `sop bench robot`, the robot's control loop while it uploads and swaps checkpoints;
- `benchmarks.learner`: `sop bench learner`, ingest, checkpoint broadcast and trainer throughput;
- `benchmarks.fleet`: `sop bench fleet`, fleet scaling (success vs per-robot steps) and online vs offline;
- `benchmarks.soak`: `sop bench soak`, a fleet under sustained load (learner memory, 0 lost, latency).

The two fleet benchmarks run the fleet harness (`fleet_harness/`) of `sop demo`.

They share one machine description (`benchmarks.machine`, which detects the GPU rather than assuming there is
none) and one set of timing and report helpers (`benchmarks.reporting`). The shipped packages (`sop`,
`robot_client`, `cloud_learner`) never import this package.
"""
