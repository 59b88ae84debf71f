# The two commands a newcomer types (see README.md):
#   make demo   sets everything up and runs the main job
#   make test   sets everything up and runs the whole test suite (what CI runs)
# Both install every role (`.[dev]`, scripts/setup.sh); a single role installs its extra (README.md).
VENV ?= .venv
BIN := $(VENV)/bin
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup demo test lint unit

setup:
	bash scripts/setup.sh

demo: setup
	$(BIN)/sop demo

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit:
	$(BIN)/pytest -q

test: setup lint unit
