"""The fleet harness: the simulator wired to a real learner and real robot daemons on one machine.

`sim/` holds the environments, the simulated operator and the scripted experts and imports neither side of
the fleet; `robot_client/` and `cloud_learner/` never import the simulator. This package is where the three
meet:

- `fleet_harness.robot_plugins`: the `metaworld` robot kind and the `simulated` operator kind, plug-ins the
  daemon finds by name (pyproject.toml's `sop.robot_kinds` / `sop.operator_kinds` entry points);
- `fleet_harness.demo`: `sop demo`, a base policy, a learner and N robot daemons as real processes, the
  held-out evaluation; also the pieces `sop bench fleet` and `sop bench soak` (benchmarks/) reuse;
- `fleet_harness.processes`: the child processes of a run, always stopped, never orphaned;
- `fleet_harness.report`: a run folder's `report.md`, plots and `summary.json`.
"""
