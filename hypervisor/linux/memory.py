"""The guest's address space: a list of mappings (start, end, protection, name) that is
the truth, mirrored into the Unicorn engine's memory map.

Every address handed out is chosen here, top-down from MMAP_TOP, first fit, the way
Linux does with address-space randomisation off: it depends only on the calls the
guest made, so replay and a backup get the same addresses without logging them.
Host memory is committed lazily by the host (Unicorn maps anonymous memory), so a
large mapping the guest never touches costs address space, not RAM.
"""
from __future__ import annotations

import bisect
import zlib

from ..uc import UC

PAGE = 0x1000
PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0, 1, 2, 4
MMAP_TOP = 0x7FFF_F7FF_F000
MMAP_BOTTOM = 0x1_0000_0000          # nothing is placed below 4 GiB unless asked (MAP_FIXED)
ADDR_MAX = 0x7FFF_FFFF_F000
_DIGEST_STEP = 1 << 20      # a digest reads memory this much at a time (a bigger buffer costs its zeroing: 16 MiB took 20 ms)


def page_down(a):
    return a & ~(PAGE - 1)


def page_up(a):
    return (a + PAGE - 1) & ~(PAGE - 1)


assert (PROT_READ, PROT_WRITE, PROT_EXEC) == (UC.UC_PROT_READ, UC.UC_PROT_WRITE, UC.UC_PROT_EXEC)


def _uc_prot(prot):
    """mmap's PROT_* bits as Unicorn's: the same values (READ 1, WRITE 2, EXEC 4)."""
    return prot & (PROT_READ | PROT_WRITE | PROT_EXEC)


def _vma_start(v):
    return v[0]


class AddressSpace:
    def __init__(self, uc):
        self.uc = uc
        self.vmas = []          # sorted [start, end, prot, name]
        self.brk_start = 0
        self.brk = 0
        self._digest_buf = None

    # --- queries ----------------------------------------------------------------
    def _starts(self):
        return [v[0] for v in self.vmas]

    def overlapping(self, start, end):
        """Mappings that intersect [start, end)."""
        i = bisect.bisect_right(self.vmas, start, key=_vma_start) - 1
        i = max(i, 0)
        out = []
        for v in self.vmas[i:]:
            if v[0] >= end:
                break
            if v[1] > start:
                out.append(v)
        return out

    def is_free(self, start, end):
        return not self.overlapping(start, end)

    def is_mapped(self, start, end):
        """Every byte of [start, end) is mapped."""
        at = start
        for v in self.overlapping(start, end):
            if v[0] > at:
                return False
            at = v[1]
        return at >= end

    def find_free(self, size, below=MMAP_TOP):
        """The highest free range of ``size`` bytes below ``below`` (first fit, top down)."""
        top = below
        for v in reversed(self.vmas):
            if v[0] >= top:
                continue
            if v[1] <= top and top - v[1] >= size:
                return top - size
            top = min(top, v[0])
        if top - size >= MMAP_BOTTOM:
            return top - size
        return None

    # --- changes (mirrored into the engine) ------------------------------------------
    def map_fixed(self, start, size, prot, name=""):
        """Map [start, start+size), replacing whatever was there (MAP_FIXED), zeroed."""
        end = start + size
        self.unmap(start, size)
        self.uc.mem_map(start, size, _uc_prot(prot))
        i = bisect.bisect_left(self._starts(), start)
        self.vmas.insert(i, [start, end, prot, name])

    def unmap(self, start, size):
        end = start + size
        for v in self.overlapping(start, end):
            a, b = max(v[0], start), min(v[1], end)
            self.uc.mem_unmap(a, b - a)
            self._cut(v, a, b)

    def protect(self, start, size, prot):
        """mprotect: returns False if part of the range is not mapped (ENOMEM)."""
        end = start + size
        if not self.is_mapped(start, end):
            return False
        for v in self.overlapping(start, end):
            a, b = max(v[0], start), min(v[1], end)
            self.uc.mem_protect(a, b - a, _uc_prot(prot))
            name = v[3]
            self._cut(v, a, b)
            i = bisect.bisect_left(self._starts(), a)
            self.vmas.insert(i, [a, b, prot, name])
        return True

    def _cut(self, v, a, b):
        """Remove [a, b) from mapping ``v`` (which contains it) in the list only."""
        i = self.vmas.index(v)
        del self.vmas[i]
        pieces = []
        if v[0] < a:
            pieces.append([v[0], a, v[2], v[3]])
        if b < v[1]:
            pieces.append([b, v[1], v[2], v[3]])
        for p in reversed(pieces):
            self.vmas.insert(i, p)

    def rename(self, start, end, name):
        for v in self.overlapping(start, end):
            if v[0] >= start and v[1] <= end:
                v[3] = name

    # --- brk -------------------------------------------------------------------------
    def set_brk_start(self, addr):
        self.brk_start = self.brk = addr

    def set_brk(self, want):
        """brk(2): returns the new break (the old one if the request cannot be met)."""
        if want < self.brk_start:
            return self.brk
        old_top, new_top = page_up(self.brk), page_up(want)
        if new_top > old_top:
            if not self.is_free(old_top, new_top):
                return self.brk
            self.map_fixed(old_top, new_top - old_top, PROT_READ | PROT_WRITE, "[heap]")
        elif new_top < old_top:
            self.unmap(new_top, old_top - new_top)
        self.brk = want
        return self.brk

    # --- memory access -----------------------------------------------------------------
    def write(self, addr, data):
        if data:
            self.uc.mem_write(addr, bytes(data))

    def read(self, addr, size):
        return bytes(self.uc.mem_read(addr, size)) if size else b""

    def crcs(self):
        """CRC32 of each mapping, in address order: [(start, crc)] (the state digest).
        Read straight into one reused buffer (the binding's mem_read makes three
        copies). A PROT_NONE mapping cannot have changed since it became one and is
        not read (reserved address space is mostly that: guard pages, allocator
        reserves)."""
        import ctypes
        from ..uc import unicorn
        uclib = unicorn.unicorn_py3.unicorn.uclib
        if self._digest_buf is None:
            self._digest_buf = ctypes.create_string_buffer(_DIGEST_STEP)
        buf, view = self._digest_buf, memoryview(self._digest_buf)
        out = []
        for start, end, prot, _name in self.vmas:
            crc = 0
            if prot != PROT_NONE:
                for a in range(start, end, _DIGEST_STEP):
                    n = min(_DIGEST_STEP, end - a)
                    uclib.uc_mem_read(self.uc._uch, a, buf, n)
                    crc = zlib.crc32(view[:n], crc)
            out.append((start, crc))
        return out

    @property
    def mapped_bytes(self):
        return sum(v[1] - v[0] for v in self.vmas)

    def maps_text(self):
        """/proc/self/maps."""
        lines = []
        for start, end, prot, name in self.vmas:
            perms = ("r" if prot & PROT_READ else "-") + ("w" if prot & PROT_WRITE else "-") + \
                    ("x" if prot & PROT_EXEC else "-") + "p"
            lines.append(f"{start:08x}-{end:08x} {perms} 00000000 00:00 0{' ' * 10}{name}".rstrip())
        return ("\n".join(lines) + "\n").encode()

    # --- state transfer ------------------------------------------------------------------
    def state(self):
        return {"vmas": [list(v) for v in self.vmas], "brk_start": self.brk_start, "brk": self.brk}

    def restore(self, st, contents, write=None):
        """Rebuild the map in a fresh engine; ``contents(start, end)`` gives the bytes
        (or ``write(start, end)`` writes them into the engine itself)."""
        self.vmas = []
        for start, end, prot, name in st["vmas"]:
            self.uc.mem_map(start, end - start, _uc_prot(prot) | UC.UC_PROT_WRITE)
            if write is not None:
                write(start, end)
            else:
                self.uc.mem_write(start, contents(start, end))
            if not prot & PROT_WRITE:
                self.uc.mem_protect(start, end - start, _uc_prot(prot))
            self.vmas.append([start, end, prot, name])
        self.brk_start, self.brk = st["brk_start"], st["brk"]
