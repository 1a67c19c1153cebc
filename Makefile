# Set-up and the two everyday commands. Everything installs into .venv; no ROS 2 distro is needed.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench clean-venv

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=64,<80" wheel  # colcon-core needs setuptools<80
	$(BIN)/python -m pip uninstall --quiet --yes opencv-python-headless  # replaced by the contrib build
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# The main job on an embedded default: generated RGB-D stream -> the real node over rclpy topics.
demo: $(STAMP)
	$(BIN)/rgbd-fusion-seg demo

# The whole test suite (CI runs this through .ci/run).
test: $(STAMP)
	$(BIN)/python -m pytest -q test

# The fast tier while developing: no ONNX export, no node in a child process, no training to a target
# (docs/development.md, "Test tiers").
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" test

bench: $(STAMP)
	$(BIN)/rgbd-fusion-seg bench

clean-venv:
	rm -rf $(VENV)
