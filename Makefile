# freshrank: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.freshrank-installed
# The CPU build of torch; set TORCH_SPEC='torch' (or a CUDA index) on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

# Keep every Ray socket on loopback (see protos/ray_local.py).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export HTTP_PROXY := http://127.0.0.1:9
export http_proxy := http://127.0.0.1:9
export HTTPS_PROXY := http://127.0.0.1:9
export https_proxy := http://127.0.0.1:9
export NO_PROXY := 127.0.0.1,localhost
export no_proxy := 127.0.0.1,localhost

.PHONY: install demo test bench clean

install: $(STAMP)

# Re-installs when the build inputs change: the Cython kernel and the proto are compiled by
# `pip install` (setup.py), never committed.
$(STAMP): pyproject.toml setup.py $(wildcard online_layer/*.pyx online_layer/*.pxd) protos/freshrank/v1/ranking.proto protos/build.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	env -u HTTP_PROXY -u http_proxy -u HTTPS_PROXY -u https_proxy $(BIN)/python -m pip install -q --upgrade pip
	env -u HTTP_PROXY -u http_proxy -u HTTPS_PROXY -u https_proxy $(BIN)/python -m pip install -q '$(TORCH_SPEC)'
	env -u HTTP_PROXY -u http_proxy -u HTTPS_PROXY -u https_proxy $(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# The main job on the embedded default: simulate (or EVENTS=path), features, base training,
# Serve gRPC, replay with online learning, report.
demo: install
	$(BIN)/freshrank demo $(if $(EVENTS),--events '$(EVENTS)',) $(DEMO_ARGS)

# Type-check every package (settings in pyproject.toml [tool.mypy]) beside the suite, and
# fail if either fails. mypy takes ~80 s of one core from a cold cache; the suite keeps
# about half of the two cores busy on average, so running them side by side saves that
# wall time. mypy's report prints as soon as it ends (among pytest's progress lines) and
# again at the end. Its cache lives in .venv: a mypy writing .mypy_cache/ in the checkout
# while the Ray-job test packages the checkout as its working_dir changed the package between
# Ray's hashing and its upload (the job then failed to find it).
test: install
	@( $(BIN)/python -m mypy --cache-dir $(VENV)/mypy-cache > $(VENV)/mypy-report.txt 2>&1; echo $$? > $(VENV)/mypy-status; \
	  cat $(VENV)/mypy-report.txt ) & \
	  $(BIN)/python -m pytest $(PYTEST_ARGS); tests=$$?; wait; \
	  echo "mypy: $$(tail -n 1 $(VENV)/mypy-report.txt)"; \
	  types=$$(cat $(VENV)/mypy-status); \
	  if [ "$$types" != 0 ]; then cat $(VENV)/mypy-report.txt; fi; \
	  test "$$tests" = 0 && test "$$types" = 0

clean:
	rm -rf $(VENV) build *.egg-info online_layer/*.so online_layer/*.c protos/freshrank/v1/*_pb2*.py* .freshrank
