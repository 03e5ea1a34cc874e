"""cffi build script for the C fast path (block counting, RDTSC hooks, signals).

It compiles against the headers and the shared library that the unicorn wheel ships,
so no system copy of Unicorn is needed. Run by setup.py through ``cffi_modules``.
"""
import os
import pathlib

import cffi

HERE = pathlib.Path(__file__).resolve().parent


def _unicorn_dirs():
    import importlib.util

    spec = importlib.util.find_spec("unicorn")
    if spec is None or spec.origin is None:
        raise RuntimeError("the unicorn package is needed to build ftvm's fast path")
    root = pathlib.Path(spec.origin).parent
    include, lib = root / "include", root / "lib" / "libunicorn.so.2"
    if not (include / "unicorn" / "unicorn.h").is_file() or not lib.is_file():
        raise RuntimeError(f"the unicorn wheel at {root} lacks include/ or lib/libunicorn.so.2")
    return include, lib


ffibuilder = cffi.FFI()
ffibuilder.cdef((HERE / "fastpath.h").read_text())
_include, _lib = _unicorn_dirs()
ffibuilder.set_source(
    "hypervisor._fastpath",
    '#include "fastpath.c"\n#include "fastpath_files.c"',
    include_dirs=[str(HERE), str(HERE.parent / "logging_channel"), str(_include)],
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
    # The library is loaded by `import unicorn` before this module (see hypervisor/uc.py);
    # linking it records the dependency so the symbols resolve against that copy.
    extra_link_args=[str(_lib)],
)

if __name__ == "__main__":
    os.chdir(HERE.parent)
    ffibuilder.compile(verbose=True)
