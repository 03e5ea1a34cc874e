"""Which block counter the engine uses: ``inline`` or ``hook``.

``inline``: the patched Unicorn that setup builds (unicorn-patch/) counts blocks in
the translated code and calls ftvm's C code only before a block where a stop may be
wanted; its RDTSC and RDTSCP call ftvm's clock straight from the translated code.
``hook``: ftvm's C block hook runs at every block and RDTSC goes through Unicorn's
instruction hooks (any Unicorn; about 10% slower on a CPU-bound guest, 15-20% on
one that reads the TSC every hundred instructions). Both count the same blocks, stop
at the same points and log the same RDTSC values at the same points.

FTVM_COUNTER=hook|inline picks one; unset (or ``auto``), inline when the engine has
it. A process picks once: records, replays and backups made either way are the same.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import sys

from .errors import FtvmError
from .uc import UC, ffi, lib, unicorn

ENV = "FTVM_COUNTER"
MODES = ("inline", "hook")

# Written by scripts/build_unicorn.py: what setup installed into this environment.
BUILD_INFO = pathlib.Path(sys.prefix) / "ftvm-unicorn.json"


class CounterUnavailable(FtvmError):
    """FTVM_COUNTER=inline was asked for, but the loaded Unicorn is a stock one
    (the patched build failed or was not installed)."""


@functools.lru_cache(maxsize=None)
def inline_available() -> bool:
    """Whether the loaded libunicorn accepts UC_CTL_BLOCK_COUNTER (asks a throwaway engine)."""
    probe = unicorn.Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
    cpu = ffi.new("ftvm_cpu *")
    try:
        return lib.ftvm_counter_install(ffi.cast("void *", probe._uch.value), cpu) == UC.UC_ERR_OK
    finally:
        fin = getattr(probe, "_Uc__finalizer", None)
        if fin is not None:
            fin()


@functools.lru_cache(maxsize=None)
def mode() -> str:
    want = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if want not in MODES + ("auto",):
        raise FtvmError(f"{ENV}={want!r}: expected one of hook, inline, auto")
    if want == "hook":
        return "hook"
    if inline_available():
        return "inline"
    if want == "inline":
        raise CounterUnavailable(f"{ENV}=inline, but the loaded Unicorn has no inline block counter "
                                 f"({unicorn.__file__}); run `make setup` to build it")
    return "hook"


def build_info() -> dict:
    """What scripts/build_unicorn.py recorded (empty when it never ran here)."""
    try:
        return json.loads(BUILD_INFO.read_text())
    except (OSError, ValueError):
        return {}
