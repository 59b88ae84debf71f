"""The daemon's health figures: Prometheus metrics, the same numbers in log lines and heartbeats.

Each daemon owns its own `CollectorRegistry`, so several daemons in one process (tests, the fleet
harness) never collide on metric names. Percentiles (loop period p50 / p99, inference ms) come from a
fixed window of recent samples kept here, because a Prometheus histogram only gives bucketed estimates
and the control loop's budget is tighter than any sensible bucket grid.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class SampleWindow:
    """The last `size` samples of one quantity, for percentiles. Adding costs one lock and one store."""

    def __init__(self, size: int) -> None:
        self._values = np.zeros(size, dtype=np.float64)
        self._count = 0
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._values[self._count % self._values.size] = value
            self._count += 1

    def values(self) -> np.ndarray:
        with self._lock:
            return self._values[: min(self._count, self._values.size)].copy()

    def percentile(self, q: float) -> float:
        """The q-th percentile of the window, NaN when it holds no sample yet."""
        values = self.values()
        return float(np.percentile(values, q)) if values.size else float("nan")

    @property
    def count(self) -> int:
        return self._count


@dataclass(frozen=True)
class MetricsSnapshot:
    """A point-in-time copy of the figures, for log lines, heartbeats and tests."""

    values: dict[str, float]

    def __getitem__(self, name: str) -> float:
        return self.values[name]

    def log_line(self) -> str:
        v = self.values
        return (
            f"policy v{int(v['policy_version'])} | loop period p50 {v['loop_period_p50_ms']:.2f} ms "
            f"p99 {v['loop_period_p99_ms']:.2f} ms (error p99 {v['loop_period_error_p99_ms']:.2f} ms) | "
            f"inference p50 {v['inference_p50_ms']:.1f} ms p99 {v['inference_p99_ms']:.1f} ms | "
            f"deadline misses {int(v['deadline_misses'])} | episodes {int(v['episodes'])} | "
            f"spool {int(v['spool_depth'])} ep {v['spool_bytes'] / 1e6:.1f} MB | "
            f"uploads ok {int(v['uploads_ok'])} retried {int(v['upload_retries'])} "
            f"quarantined {int(v['uploads_quarantined'])} | swaps {int(v['policy_swaps'])} "
            f"rejected {int(v['checkpoints_rejected'])} | commands refused {int(v['commands_refused'])} "
            f"safe-action steps {int(v['safe_action_steps'])}"
        )


class RobotMetrics:
    """Every counter and gauge of one daemon, registered in its own registry."""

    def __init__(self, robot_id: str, window: int = 2048, registry: CollectorRegistry | None = None) -> None:
        self.robot_id = robot_id
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.loop_period = SampleWindow(window)
        self.loop_period_error = SampleWindow(window)
        self.inference = SampleWindow(window)  # chunks warm-started from the previous one (RTI)
        self.full_solve = SampleWindow(window)  # chunks solved from scratch (episode start, hand-back, swap)
        self.tick_work = SampleWindow(window)
        # Tick start -> action sent to the robot: the observation-to-action latency (inference included).
        self.action_latency = SampleWindow(window)

        self.loop_period_error_hist = Histogram(
            "sop_robot_loop_period_error_seconds",
            "|actual - nominal| control period",
            buckets=(1e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1),
            registry=r,
        )
        self.inference_hist = Histogram(
            "sop_robot_policy_act_seconds",
            "time of one policy.act call (a chunk is computed on some calls)",
            buckets=(1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.deadline_misses = Counter(
            "sop_robot_deadline_misses", "control ticks whose work overran the next tick's start", registry=r
        )
        self.inference_late_steps = Counter(
            "sop_robot_inference_late_steps",
            "ticks the robot held because asynchronous inference had not delivered the next chunk yet",
            registry=r,
        )
        self.steps = Counter("sop_robot_steps", "control steps executed", registry=r)
        self.episodes = Counter(
            "sop_robot_episodes", "episodes finished, by outcome", ["outcome"], registry=r
        )
        self.intervention_steps = Counter(
            "sop_robot_intervention_steps", "steps executed with the operator in control", registry=r
        )
        self.takeovers = Counter("sop_robot_takeovers", "operator take-overs", registry=r)
        self.operator_labels = Counter(
            "sop_robot_operator_labels",
            "outcome labels from operators, by what was done with them",
            ["result"],
            registry=r,
        )
        self.spool_depth = Gauge("sop_robot_spool_depth", "episodes in the spool awaiting upload", registry=r)
        self.spool_bytes = Gauge("sop_robot_spool_bytes", "size of the spool on disk", registry=r)
        self.spool_evicted = Counter(
            "sop_robot_spool_evicted_episodes",
            "autonomous-only episodes evicted because the spool was full (data loss, by policy)",
            registry=r,
        )
        self.episodes_not_recorded = Counter(
            "sop_robot_episodes_not_recorded",
            "episodes run without recording because the spool was full of intervention episodes",
            registry=r,
        )
        self.recorder_dropped_steps = Counter(
            "sop_robot_recorder_dropped_steps",
            "steps dropped because the spool writer fell behind",
            registry=r,
        )
        self.recorder_errors = Counter("sop_robot_recorder_errors", "spool write failures", registry=r)
        self.partial_episodes = Counter(
            "sop_robot_partial_episodes",
            "half-written episodes found at start, by what was done",
            ["action"],
            registry=r,
        )
        self.uploads_ok = Counter("sop_robot_uploads_ok", "episodes committed by the learner", registry=r)
        self.upload_retries = Counter(
            "sop_robot_upload_retries", "failed upload attempts retried", ["code"], registry=r
        )
        self.uploads_quarantined = Counter(
            "sop_robot_uploads_quarantined", "episodes refused by the learner and moved aside", registry=r
        )
        self.upload_bytes = Counter("sop_robot_upload_bytes", "episode bytes sent", registry=r)
        self.upload_chunks_skipped = Counter(
            "sop_robot_upload_chunks_skipped",
            "chunks not resent because the learner already held them",
            registry=r,
        )
        self.policy_version = Gauge("sop_robot_policy_version", "policy version in control", registry=r)
        self.policy_swaps = Counter("sop_robot_policy_swaps", "checkpoints swapped in", registry=r)
        self.checkpoints_fetched = Counter(
            "sop_robot_checkpoints_fetched", "checkpoints fetched and verified", registry=r
        )
        self.checkpoints_rejected = Counter(
            "sop_robot_checkpoints_rejected",
            "checkpoints refused (bad hash, unreadable, failed dry run: reason dry_run_*)",
            ["reason"],
            registry=r,
        )
        self.last_rejected_checkpoint_version = Gauge(
            "sop_robot_last_rejected_checkpoint_version",
            "version of the newest checkpoint this robot refused (0: none)",
            registry=r,
        )
        self.commands_refused = Counter(
            "sop_robot_commands_refused",
            "operator commands and policy outputs refused: wrong_shape, non_finite, policy_error",
            ["source", "reason"],
            registry=r,
        )
        self.safe_action_steps = Counter(
            "sop_robot_safe_action_steps",
            "steps the robot executed its safe action in place of a refused command",
            registry=r,
        )
        self.learner_connected = Gauge(
            "sop_robot_learner_connected", "1 while registered with the learner", registry=r
        )
        self.rpc_errors = Counter(
            "sop_robot_rpc_errors", "failed calls to the learner", ["rpc", "code"], registry=r
        )
        self._http_server: Any = None

    # Percentile figures --------------------------------------------------------------------------------

    def record_tick(self, period_s: float | None, nominal_s: float, work_s: float) -> None:
        """One control tick: the time since the previous tick started, and the work it took."""
        self.steps.inc()
        self.tick_work.add(work_s)
        if period_s is not None:
            error = abs(period_s - nominal_s)
            self.loop_period.add(period_s)
            self.loop_period_error.add(error)
            self.loop_period_error_hist.observe(error)

    def record_inference(self, seconds: float, warm_started: bool = True) -> None:
        (self.inference if warm_started else self.full_solve).add(seconds)
        self.inference_hist.observe(seconds)

    # Snapshots --------------------------------------------------------------------------------------------

    @staticmethod
    def _value(metric: Counter | Gauge) -> float:
        """The metric's value, summed over its labels (`_created` timestamps left out)."""
        return sum(
            sample.value
            for family in metric.collect()
            for sample in family.samples
            if not sample.name.endswith("_created")
        )

    @staticmethod
    def _labelled(metric: Counter, label: str, prefix: str) -> float:
        """The counter summed over the label values that start with `prefix`."""
        return sum(
            sample.value
            for family in metric.collect()
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels.get(label, "").startswith(prefix)
        )

    def snapshot(self) -> MetricsSnapshot:
        ms = 1e3
        values = {
            "loop_period_p50_ms": self.loop_period.percentile(50) * ms,
            "loop_period_p99_ms": self.loop_period.percentile(99) * ms,
            "loop_period_error_p50_ms": self.loop_period_error.percentile(50) * ms,
            "loop_period_error_p99_ms": self.loop_period_error.percentile(99) * ms,
            "tick_work_p99_ms": self.tick_work.percentile(99) * ms,
            "action_latency_p50_ms": self.action_latency.percentile(50) * ms,
            "action_latency_p99_ms": self.action_latency.percentile(99) * ms,
            "inference_p50_ms": self.inference.percentile(50) * ms,
            "inference_p99_ms": self.inference.percentile(99) * ms,
            "full_solve_p50_ms": self.full_solve.percentile(50) * ms,
            "deadline_misses": self._value(self.deadline_misses),
            "inference_late_steps": self._value(self.inference_late_steps),
            "steps": self._value(self.steps),
            "episodes": self._value(self.episodes),
            "intervention_steps": self._value(self.intervention_steps),
            "takeovers": self._value(self.takeovers),
            "spool_depth": self._value(self.spool_depth),
            "spool_bytes": self._value(self.spool_bytes),
            "spool_evicted": self._value(self.spool_evicted),
            "episodes_not_recorded": self._value(self.episodes_not_recorded),
            "recorder_dropped_steps": self._value(self.recorder_dropped_steps),
            "uploads_ok": self._value(self.uploads_ok),
            "upload_retries": self._value(self.upload_retries),
            "uploads_quarantined": self._value(self.uploads_quarantined),
            "policy_version": self._value(self.policy_version),
            "policy_swaps": self._value(self.policy_swaps),
            "checkpoints_rejected": self._value(self.checkpoints_rejected),
            "checkpoints_failed_dry_run": self._labelled(self.checkpoints_rejected, "reason", "dry_run_"),
            "last_rejected_checkpoint_version": self._value(self.last_rejected_checkpoint_version),
            "commands_refused": self._value(self.commands_refused),
            "safe_action_steps": self._value(self.safe_action_steps),
            "learner_connected": self._value(self.learner_connected),
        }
        return MetricsSnapshot(values)

    def heartbeat_figures(self) -> dict[str, float]:
        """The figures sent in `HeartbeatRequest.metrics` (NaN-free: protobuf doubles may carry NaN, the
        console should not have to)."""
        return {k: v for k, v in self.snapshot().values.items() if v == v}

    # HTTP endpoint ----------------------------------------------------------------------------------------

    def serve_http(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose the registry at http://host:port/metrics; returns the bound port (port 0 picks one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http_server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
