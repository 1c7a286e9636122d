# voxserve: `make demo` sets everything up and transcribes with the embedded default model;
# `make test` runs lint, format check and the test suite. Both create .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch that lies on these machines; override (e.g. TORCH=torch) elsewhere.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup system-packages demo test lint format clean

setup: $(STAMP)

# Debian packages the project needs: espeak-ng synthesises speech for the demo and for training data;
# chromium runs the live page's end-to-end test headless. PyAV bundles its own FFmpeg, so no ffmpeg package.
system-packages:
	@{ command -v espeak-ng && command -v chromium; } >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq espeak-ng chromium >/dev/null; }

$(STAMP): pyproject.toml
	$(MAKE) system-packages
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[test,server]'
	# openai-whisper is a test-only reference; its own requirements pull triton, so it goes in without them.
	$(BIN)/python -m pip install -q --no-deps openai-whisper==20250625
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/voxserve demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
