"""Test-wide settings: the CPU is small and shared, rendering is off-screen, nothing reaches the network."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TMPDIR", "/tmp/sop-ray")
os.environ.setdefault("OMP_NUM_THREADS", "1")
