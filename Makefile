# Two commands: `make demo` and `make test`. Each sets everything up first (a
# virtualenv in .venv/, ftvm with its C fast path, the guest programs) and is safe to
# run again.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ftvm-installed
UC_STAMP := $(VENV)/.unicorn-installed
PYTEST_ARGS ?=

.PHONY: setup guests tools bytecode demo test bench clean

setup: $(STAMP) $(UC_STAMP) tools guests bytecode

# ftvm is installed editable, so pip compiles none of its modules: compile them here
# (as pip does for an installed package). Each ftvm command then starts ~50 ms sooner,
# even where PYTHONDONTWRITEBYTECODE keeps Python from writing the cache itself. Only
# changed files are compiled again; a stale cache is simply not used.
bytecode: $(STAMP)
	@$(PY) -m compileall -q hypervisor logging_channel >/dev/null

# Debian packages the tests and `ftvm bench` use: redis-cli, redis-benchmark and
# redis-server drive the kv guest; busybox-static, bash-static, musl-gcc (for the .musl
# test programs), qemu-x86_64 (the bench baseline) and strace serve the Linux programs;
# cmake and ninja build the patched Unicorn; etcd-server runs the local three-member etcd
# cluster that `ftvm run --coordinator etcd-local` and the coordinator tests start.
# Installs only what is missing (as root; otherwise prints the command), waits for
# another apt run's lock, and updates the package lists only if the first try fails.
APT_PACKAGES := redis-tools redis-server busybox-static bash-static musl-tools qemu-user strace cmake ninja-build \
                etcd-server
APT_GET := apt-get -y -q -o DPkg::Lock::Timeout=600

tools:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    ($(APT_GET) install $$missing >/dev/null 2>&1 || \
	     ($(APT_GET) update >/dev/null && $(APT_GET) install $$missing >/dev/null)) && echo "installed$$missing"; \
	  else echo "note: missing packages; run: sudo apt-get install$$missing (some tests and bench parts need them)"; fi; \
	fi

$(STAMP): setup.py pyproject.toml hypervisor/fastpath.c hypervisor/fastpath_files.c hypervisor/fastpath.h \
          hypervisor/_fastpath_build.py logging_channel/codec.c logging_channel/crc32_slice8.h logging_channel/_codec_build.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,plot,etcd]'
	touch $@

# Unicorn with the inline block counter (unicorn-patch/), built once and cached in
# build/unicorn/ by the patch's hash; on failure the stock wheel stays (one line says so).
$(UC_STAMP): $(STAMP) unicorn-patch/inline-block-counter.patch scripts/build_unicorn.py | tools
	$(PY) scripts/build_unicorn.py
	touch $@

guests:
	$(MAKE) -s -C guest_programs
	$(MAKE) -s -C guest_programs/linux

demo: setup
	@bash scripts/demo.sh

# Three test processes on this 2-core machine: most tests wait on other processes
# (failure timeouts, etcd, clients), so they overlap well; the tests are made to pass on
# a loaded machine. `make test PYTEST_JOBS=0` runs them one at a time.
PYTEST_JOBS ?= 3
test: setup
	$(PY) -m pytest -n $(PYTEST_JOBS) --dist worksteal $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/ftvm bench

clean:
	$(MAKE) -C guest_programs clean
	rm -rf $(VENV) *.egg-info hypervisor/_fastpath*.so hypervisor/_fastpath.c
