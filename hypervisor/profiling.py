"""Per-thread profiles for finding where a process's time goes (docs/debugging.md).

With FTVM_PROFILE_DIR set, each thread wrapped in ``thread_profile(name)`` runs under
cProfile and writes DIR/<name>-<pid>.prof when it ends (read with `python -m pstats`).
cProfile costs about twice the run time: compare profiles with each other, and measure
speed without it.
"""
from __future__ import annotations

import contextlib
import os

ENV = "FTVM_PROFILE_DIR"


@contextlib.contextmanager
def thread_profile(name: str):
    out = os.environ.get(ENV)
    if not out:
        yield
        return
    import cProfile
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        os.makedirs(out, exist_ok=True)
        prof.dump_stats(os.path.join(out, f"{name}-{os.getpid()}.prof"))
