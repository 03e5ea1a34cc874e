"""cffi build script for the log's C codec (codec.c): RDTSC packing, checking whole frames.
Pure C, no dependencies."""
import pathlib

import cffi

HERE = pathlib.Path(__file__).resolve().parent

ffibuilder = cffi.FFI()
ffibuilder.cdef("""
size_t ftvm_tsc_encode(const uint64_t *entries, uint32_t n, uint8_t *out);
int64_t ftvm_tsc_decode(const uint8_t *in, size_t len, uint64_t *entries, uint32_t n);
uint32_t ftvm_crc32(uint32_t crc, const uint8_t *p, size_t n);
int64_t ftvm_frames_check(const uint8_t *buf, size_t len, uint32_t *offsets, uint32_t cap,
                          uint32_t versions, uint32_t kinds, uint32_t body_max);
""")
ffibuilder.set_source("logging_channel._codec", '#include "codec.c"', include_dirs=[str(HERE)],
                      extra_compile_args=["-O2", "-Wall"])

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent), verbose=False)
