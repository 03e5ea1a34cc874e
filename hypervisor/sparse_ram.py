"""Reading guest RAM without touching the pages the guest never touched.

Guest memory is anonymous host mappings (vcpu.py), so a page the guest never wrote is
not backed by host memory, and reads as zeros. Reading it anyway (a CRC over a whole
region) makes the host back it: a guest with 1 GiB of zero-initialised data it never
uses cost 1.1 GB of RAM at its first state digest. So: ask the kernel which pages are
backed (/proc/self/pagemap: present or swapped), read those, and count the rest as
the zeros they are. The result is the same CRC32 as over every byte.
"""
from __future__ import annotations

import ctypes
import mmap
import struct
import zlib

PAGE = mmap.PAGESIZE
_ZEROS = bytes(1 << 20)
_PRESENT, _SWAPPED = 1 << 63, 1 << 62


def _backed_runs(address: int, size: int):
    """[(offset, length, backed)] covering [address, address+size), or None when the
    kernel cannot tell (then every page counts as backed)."""
    npages = (size + PAGE - 1) // PAGE
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(address // PAGE * 8)
            raw = f.read(npages * 8)
    except OSError:
        return None
    if len(raw) != npages * 8:
        return None
    runs, start, state = [], 0, None
    for i, (entry,) in enumerate(struct.iter_unpack("<Q", raw)):
        backed = bool(entry & (_PRESENT | _SWAPPED))
        if backed != state:
            if state is not None:
                runs.append((start * PAGE, (i - start) * PAGE, state))
            start, state = i, backed
    if state is not None:
        runs.append((start * PAGE, min(size, npages * PAGE) - start * PAGE, state))
    return runs


def crc32(ram: mmap.mmap) -> int:
    """zlib.crc32 of the whole mapping, touching only the pages already backed."""
    anchor = ctypes.c_char.from_buffer(ram)
    address = ctypes.addressof(anchor)
    del anchor
    runs = _backed_runs(address, len(ram))
    if runs is None:
        return zlib.crc32(ram)
    crc = 0
    with memoryview(ram) as mv:
        for off, length, backed in runs:
            if backed:
                crc = zlib.crc32(mv[off:off + length], crc)
                continue
            while length:
                n = min(length, len(_ZEROS))
                crc = zlib.crc32(_ZEROS if n == len(_ZEROS) else _ZEROS[:n], crc)
                length -= n
    return crc
