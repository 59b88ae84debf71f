"""Fleet child processes: robots can run below the learner in CPU priority."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fleet_harness.processes import FleetProcesses, _child_setup


def test_a_child_runs_niceness_levels_below_the_harness() -> None:
    child = subprocess.Popen(["sleep", "30"], start_new_session=True, preexec_fn=_child_setup(7))
    try:
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == min(19, mine + 7)
        autogroup = Path(f"/proc/{child.pid}/autogroup")
        if autogroup.exists():  # autogroup scheduling: the child's session group is niced too
            assert autogroup.read_text().split()[-1] == "7"
    finally:
        child.kill()
        child.wait()


def test_a_niceness_outside_the_range_is_refused(tmp_path: Path) -> None:
    processes = FleetProcesses(tmp_path)
    with pytest.raises(ValueError, match="niceness must be in"):
        processes.start("robot-0", ["--help"], niceness=20)
    assert processes.children == []
