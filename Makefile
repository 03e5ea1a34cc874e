# Two commands: `make demo` and `make test`. Each sets everything up first (a
# virtualenv in .venv/, ftvm with its C fast path, the guest programs) and is safe to
# run again.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ftvm-installed
PYTEST_ARGS ?=

.PHONY: setup guests demo test bench clean

setup: $(STAMP) guests

$(STAMP): setup.py pyproject.toml hypervisor/fastpath.c hypervisor/fastpath.h hypervisor/_fastpath_build.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
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
