"""The machine line every benchmark report carries is detected, not typed."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.machine import NO_GPU, cpu_model, describe_machine, load_average, memory_gib


def test_description_has_every_field() -> None:
    machine = describe_machine()
    assert set(machine.as_dict()) == {"cpu_model", "cpu_cores", "memory_gib", "gpu", "python", "torch"}
    assert machine.cpu_cores >= 1 and machine.cpu_model
    assert machine.memory_gib is not None and machine.memory_gib > 0  # Linux: /proc/meminfo
    assert machine.torch == torch.__version__
    summary = machine.summary()
    assert f"{machine.cpu_cores} CPU cores" in summary and f"Python {machine.python}" in summary


def test_gpu_field_follows_torch_cuda() -> None:
    machine = describe_machine()
    if torch.cuda.is_available():
        assert machine.gpu != NO_GPU and torch.cuda.get_device_name(0) in machine.gpu
    else:
        assert machine.gpu == NO_GPU and NO_GPU in machine.summary()


def test_cpu_and_memory_are_read_from_proc_files(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU @ 3.0GHz\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       25165824 kB\nMemFree:  1 kB\n")
    assert cpu_model(cpuinfo) == "Example CPU @ 3.0GHz"
    assert memory_gib(meminfo) == 24.0
    assert memory_gib(tmp_path / "missing") is None
    assert cpu_model(tmp_path / "missing")  # falls back to what `platform` knows


def test_load_average_has_three_figures() -> None:
    assert len(load_average().split(", ")) == 3
