"""cffi build script for the log's RDTSC packing (codec.c). Pure C, no dependencies."""
import pathlib

import cffi

HERE = pathlib.Path(__file__).resolve().parent

ffibuilder = cffi.FFI()
ffibuilder.cdef("""
size_t ftvm_tsc_encode(const uint64_t *entries, uint32_t n, uint8_t *out);
int64_t ftvm_tsc_decode(const uint8_t *in, size_t len, uint64_t *entries, uint32_t n);
""")
ffibuilder.set_source("logging_channel._codec", '#include "codec.c"', include_dirs=[str(HERE)],
                      extra_compile_args=["-O2", "-Wall"])

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent), verbose=False)
