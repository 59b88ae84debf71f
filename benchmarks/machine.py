"""What machine a benchmark ran on, detected rather than typed: every figure in BENCHMARKS.md is only as
meaningful as the machine line beside it, and a hand-written "no GPU" stays in the report when the run moves
to a machine that has one.

    from benchmarks.machine import describe_machine
    describe_machine().summary()   # '2 CPU cores (AMD EPYC 7B13), 23.5 GiB memory, no GPU; Python 3.12.3, torch 2.11.0'

Only the standard library is needed at import; torch is imported when `describe_machine` runs, to ask
`torch.cuda` about the GPU (a machine without torch is reported as such, not as an error).
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

NO_GPU = "no GPU"


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    cpu_cores: int
    memory_gib: float | None  # None where /proc/meminfo is not readable (not Linux)
    gpu: str  # "NVIDIA H200 (139.8 GiB)", two such names joined by ", ", or NO_GPU
    python: str
    torch: str | None  # None when torch is not installed

    def summary(self) -> str:
        """One line for a report's `Machine:` field; the benchmark adds what only it knows (threads, load)."""
        memory = f", {self.memory_gib:.1f} GiB memory" if self.memory_gib is not None else ""
        torch = f", torch {self.torch}" if self.torch is not None else ""
        return (
            f"{self.cpu_cores} CPU cores ({self.cpu_model}){memory}, {self.gpu}; Python {self.python}{torch}"
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def memory_gib(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def gpu_description() -> tuple[str, str | None]:
    """(the GPUs torch can use, or NO_GPU; torch's version, or None without torch)."""
    try:
        import torch
    except ImportError:
        return NO_GPU, None
    if not torch.cuda.is_available():
        return NO_GPU, torch.__version__
    devices = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        devices.append(f"{properties.name} ({properties.total_memory / (1 << 30):.1f} GiB)")
    return ", ".join(devices) or NO_GPU, torch.__version__


def describe_machine() -> Machine:
    gpu, torch_version = gpu_description()
    return Machine(
        cpu_model=cpu_model(),
        cpu_cores=os.cpu_count() or 1,
        memory_gib=memory_gib(),
        gpu=gpu,
        python=platform.python_version(),
        torch=torch_version,
    )


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the shared machine was while the figures were taken."""
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())
