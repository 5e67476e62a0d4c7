# `make demo` and `make test` each create .venv, install what they need and run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test lint typecheck bench clean

$(STAMP): pyproject.toml setup.py src/kcoro/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m kcoro demo

lint: $(STAMP)
	$(PY) -m ruff check src tests

typecheck: $(STAMP)
	$(PY) -m mypy

# The suite runs with the C accelerator (it must have been built: KCORO_REQUIRE_SPEEDUPS), then
# the channel/select/model/stress suites again on the pure-Python reference paths.
test: $(STAMP)
	$(PY) -m ruff check src tests
	$(PY) -m mypy
	KCORO_REQUIRE_SPEEDUPS=1 $(PY) -m pytest -q
	KCORO_PURE=1 $(PY) -m pytest -q -p no:randomly tests/test_chan_ordering.py \
		tests/test_chan_blocking.py tests/test_chan_close.py tests/test_chan_stats.py \
		tests/test_select.py tests/test_cancel.py tests/test_undelivered.py tests/test_payload.py \
		tests/test_zref.py tests/model tests/stress

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m kcoro bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
