# napari-probseg: every target sets itself up on a fresh machine and is idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
APT_PACKAGES := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 \
	libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-cursor0 libxkbcommon-x11-0 \
	libgl1 libegl1 libfontconfig1 libdbus-1-3
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv apt demo test bench lint validate screenshots train results clean

venv: apt $(STAMP)

# Headless Qt needs an X server and xcb libraries; install them when missing and we are root.
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing apt packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) || \
	      echo "warning: apt-get failed for:$$missing"; \
	  else echo "warning: missing apt packages (not root):$$missing"; fi; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# The pinned CPU build first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q $(TORCH_PIN)
	@# The nnunet extra pulls timm -> torchvision -> another (CUDA) torch: keep torch pinned.
	$(PY) -m pip install -q -c <(echo $(TORCH_PIN)) -e ".[test,dev,nnunet]"
	@# That torchvision is built for another torch and fails to import beside the pinned one;
	@# nothing here imports it (nnU-Net inference does not need it).
	$(PY) -m pip uninstall -y -q torchvision
	touch $(STAMP)

# With a display: the interactive viewer. Without one (CI, ssh): the same run under Xvfb, saving a
# full-window screenshot (default out/demo.png, or DEMO_ARGS="--screenshot PATH --quit").
demo: venv
	@if [ -n "$$DISPLAY" ] || [ -n "$$WAYLAND_DISPLAY" ]; then \
	  $(VENV)/bin/probseg demo $(DEMO_ARGS); \
	else \
	  args="$(DEMO_ARGS)"; [ -n "$$args" ] || args="--screenshot out/demo.png --quit"; \
	  echo "no display: running headless under xvfb-run: probseg demo $$args"; \
	  xvfb-run -a -s "-screen 0 1920x1200x24" $(VENV)/bin/probseg demo $$args; \
	fi

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

bench: venv
	$(PY) -m benchmarks $(BENCH_ARGS)

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/npe2 validate napari-probseg

validate: venv
	$(PY) -m napari_probseg.training.validate

train: venv
	$(PY) -m napari_probseg.training.demo

results: venv
	$(PY) -m napari_probseg.evaluation.results

screenshots: venv
	$(PY) -m napari_probseg._napari.screenshots docs

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache
