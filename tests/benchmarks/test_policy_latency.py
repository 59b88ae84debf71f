"""`sop bench policy-latency` runs end to end on the CPU (the device machine runs the same script on CUDA)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.policy_latency import PolicyLatencyConfig, main


def test_one_size_and_sampler_gives_a_row_and_json(tmp_path: Path) -> None:
    out, figures = tmp_path / "latency.md", tmp_path / "latency.json"
    args = ["--device", "cpu", "--sizes", "[default]", "--samplers", "[rti-3]", "--repeats", "2"]
    assert main([*args, "--output", str(out), "--json", str(figures)]) == 0
    (result,) = json.loads(figures.read_text())["results"]
    assert (result["size"], result["sampler"], result["device"]) == ("default", "rti-3", "cpu")
    assert result["execution_horizon"] == 1 and result["denoiser_calls"] == 3  # RTI's K' = 3, warm-started
    assert 0 < result["chunk_p50_ms"] <= result["chunk_p99_ms"]
    assert "| default | rti-3 | cpu | 1 | 3 |" in out.read_text()


def test_unknown_sizes_samplers_and_devices_are_refused() -> None:
    with pytest.raises(ValueError, match="sizes"):
        PolicyLatencyConfig(sizes=["huge"])
    with pytest.raises(ValueError, match="samplers"):
        PolicyLatencyConfig(samplers=["euler"])
    with pytest.raises(ValueError, match="device"):
        PolicyLatencyConfig(device="tpu")
