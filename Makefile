# Two commands: `make demo` and `make test`. Each sets everything up first (a
# virtualenv in .venv/, ftvm with its C fast path, the guest programs) and is safe to
# run again.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ftvm-installed
UC_STAMP := $(VENV)/.unicorn-installed
PYTEST_ARGS ?=

.PHONY: setup guests tools demo test bench clean

setup: $(STAMP) $(UC_STAMP) guests tools

# redis-cli and redis-benchmark (Debian's redis-tools) drive the kv guest in tests and
# `ftvm bench`.
tools:
	@command -v redis-benchmark >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q redis-tools >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q redis-tools >/dev/null)) && echo "installed redis-tools"; \
	  else echo "note: redis-tools missing; run: sudo apt-get install redis-tools (kv tests and bench need it)"; fi; }

$(STAMP): setup.py pyproject.toml hypervisor/fastpath.c hypervisor/fastpath.h hypervisor/_fastpath_build.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Unicorn with the inline block counter (unicorn-patch/), built once and cached in
# build/unicorn/ by the patch's hash; on failure the stock wheel stays (one line says so).
$(UC_STAMP): $(STAMP) unicorn-patch/inline-block-counter.patch scripts/build_unicorn.py
	$(PY) scripts/build_unicorn.py
	touch $@

guests:
	$(MAKE) -s -C guest_programs

demo: setup
	@bash scripts/demo.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/ftvm bench

clean:
	$(MAKE) -C guest_programs clean
	rm -rf $(VENV) *.egg-info hypervisor/_fastpath*.so hypervisor/_fastpath.c
