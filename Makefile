# fputrace: `make demo` and `make test` do all the set-up on a fresh Debian 12
# machine first (scripts/setup.sh: packages, QEMU 10 from bookworm-backports,
# qemu-plugin.h, the Python venv, the meson build).

VENV := .venv
PY := $(VENV)/bin/python
FPUTRACE := $(VENV)/bin/fputrace
DEMO_TRACE := runs/demo.ftr

.PHONY: all setup build demo test test-fast lint bench zoo clean

all: setup

setup:
	scripts/setup.sh

build:
	ninja -C build

demo: setup
	$(FPUTRACE) record --kernel 6.1 --workload kvm-pingpong:200 -o $(DEMO_TRACE)
	$(FPUTRACE) report $(DEMO_TRACE)

lint: setup
	$(VENV)/bin/ruff check fputrace analyzers tests bench
	$(VENV)/bin/mypy
	ninja -C build checkpatch

# FPUTRACE_REQUIRE_ALL=1: a test whose prerequisite is missing fails here
# instead of skipping.
test: setup lint
	FPUTRACE_REQUIRE_ALL=1 $(PY) -m pytest -q -p no:cacheprovider

# The fast layers only: unit tests on synthetic traces and the plugin on
# freestanding images (tests/conftest.py: layer_of()); no kernel. Two
# workers (pytest-xdist), one a core: these tests share no cache entry.
test-fast: setup
	FPUTRACE_REQUIRE_ALL=1 $(PY) -m pytest -q -p no:cacheprovider -m "unit or plugin" -n 2

bench: setup
	bench/overhead

# The bug zoo (zoo/): builds the kernels it needs, records every entry with
# its bug and without, and prints the table.
zoo: setup
	$(FPUTRACE) zoo

clean:
	rm -rf build runs
