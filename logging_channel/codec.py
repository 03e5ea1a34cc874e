"""Packing RDTSC entries (block count, pc, value) for the log, in C (codec.c): the log
holds millions of them, too many to touch one by one in Python."""
from __future__ import annotations

import array

from ._codec import ffi, lib

ENTRY_WORDS = 3


def encode_entries(ptr_or_words, n: int) -> bytes:
    """Pack n entries from a cffi ``uint64_t *`` (address as int allowed) or a sequence
    of 3n words."""
    if isinstance(ptr_or_words, int):
        src = ffi.cast("uint64_t *", ptr_or_words)
    else:
        words = array.array("Q", ptr_or_words)
        assert len(words) == ENTRY_WORDS * n
        src = ffi.from_buffer("uint64_t[]", words)
    out = ffi.new("uint8_t[]", 30 * n + 1)
    size = lib.ftvm_tsc_encode(src, n, out)
    return bytes(ffi.buffer(out, size))


def decode_entries(packed: bytes, n: int):
    """Unpack n entries into an array('Q') of 3n words; None if malformed."""
    words = array.array("Q", bytes(8 * ENTRY_WORDS * n))
    used = lib.ftvm_tsc_decode(ffi.from_buffer(packed), len(packed), ffi.from_buffer("uint64_t[]", words), n)
    if used != len(packed):
        return None
    return words
