"""Parse and check a static x86-64 ELF executable. Pure: bytes in, an Image out.

Everything a hostile or broken file could get wrong is checked here, before any guest
code runs, and reported as BadElf with what is wrong and where (pyelftools, for one,
returns short data without complaint for a segment that runs past the end of file).
"""
from __future__ import annotations

import dataclasses
import hashlib
import struct

from . import abi
from .errors import BadElf

PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_TLS = 1, 2, 3, 7
PF_X, PF_W, PF_R = 1, 2, 4
ET_EXEC, ET_DYN = 2, 3
EM_X86_64 = 62
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_CANONICAL_MAX = 0x0000_7FFF_FFFF_FFFF


@dataclasses.dataclass(frozen=True)
class Segment:
    vaddr: int
    memsz: int
    data: bytes          # the file-backed part; the rest up to memsz is zero (.bss)
    flags: int           # PF_R | PF_W | PF_X

    @property
    def end(self) -> int:
        return self.vaddr + self.memsz

    def perms_text(self) -> str:
        return "".join(c if self.flags & bit else "-" for c, bit in (("r", PF_R), ("w", PF_W), ("x", PF_X)))


@dataclasses.dataclass(frozen=True)
class Image:
    entry: int
    segments: tuple
    sha256: str
    size_bytes: int

    def pages(self):
        """Page-aligned regions to map: [(start, size, flags)], merged where segments
        share a page (the shared page gets the union of their permissions)."""
        perms = {}
        for s in self.segments:
            first = s.vaddr & ~(abi.PAGE - 1)
            last = (s.end + abi.PAGE - 1) & ~(abi.PAGE - 1)
            for page in range(first, last, abi.PAGE):
                perms[page] = perms.get(page, 0) | s.flags
        regions = []
        for page in sorted(perms):
            if regions and regions[-1][0] + regions[-1][1] == page and regions[-1][2] == perms[page]:
                regions[-1][1] += abi.PAGE
            else:
                regions.append([page, abi.PAGE, perms[page]])
        return [tuple(r) for r in regions]

    def mapped_bytes(self) -> int:
        return sum(size for _, size, _ in self.pages())


def _fail(name, what):
    raise BadElf(f"{name}: {what}")


def parse(data: bytes, name: str = "guest", mem_limit: int = abi.MEM_LIMIT_DEFAULT,
          stack_size: int = abi.STACK_SIZE_DEFAULT) -> Image:
    """Check ``data`` as a guest ELF and return its loadable image."""
    if len(data) < 4 or data[:4] != b"\x7fELF":
        _fail(name, "not an ELF file (no \\x7fELF magic at byte 0)")
    if len(data) < _EHDR.size:
        _fail(name, f"ELF header cut short: file has {len(data)} bytes, the header needs {_EHDR.size}")
    (ident, e_type, e_machine, e_version, e_entry, e_phoff, _shoff, _flags, e_ehsize,
     e_phentsize, e_phnum, _shentsize, _shnum, _shstrndx) = _EHDR.unpack_from(data, 0)
    if ident[4] != 2:
        _fail(name, f"wrong ELF class {ident[4]} (byte 4): ftvm runs 64-bit guests only (ELFCLASS64)")
    if ident[5] != 1:
        _fail(name, f"wrong data encoding {ident[5]} (byte 5): ftvm runs little-endian guests only")
    if e_machine != EM_X86_64:
        _fail(name, f"wrong machine {e_machine} (e_machine): ftvm runs x86-64 guests only (EM_X86_64=62)")
    if e_type == ET_DYN:
        _fail(name, "position-independent executable (ET_DYN): link the guest with -static -no-pie")
    if e_type != ET_EXEC:
        _fail(name, f"ELF type {e_type} is not an executable (ET_EXEC)")
    if e_phnum == 0:
        _fail(name, "no program headers: nothing to load")
    if e_phentsize != _PHDR.size:
        _fail(name, f"program header entry size {e_phentsize}, expected {_PHDR.size}")
    if e_phoff + e_phnum * e_phentsize > len(data):
        _fail(name, f"program headers at byte {e_phoff} ({e_phnum} entries) run past the end of file ({len(data)} bytes)")

    segments = []
    for i in range(e_phnum):
        p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, _align = _PHDR.unpack_from(
            data, e_phoff + i * e_phentsize)
        if p_type in (PT_INTERP, PT_DYNAMIC):
            _fail(name, f"program header {i}: dynamically linked (PT_INTERP/PT_DYNAMIC); link the guest with -static")
        if p_type == PT_TLS:
            _fail(name, f"program header {i}: thread-local storage (PT_TLS) is not supported by guest ABI v1")
        if p_type != PT_LOAD or p_memsz == 0:
            continue
        where = f"segment {i} (vaddr {p_vaddr:#x})"
        if p_filesz > p_memsz:
            _fail(name, f"{where}: file size {p_filesz:#x} exceeds memory size {p_memsz:#x}")
        if p_offset + p_filesz > len(data):
            _fail(name, f"{where}: file bytes {p_offset:#x}..{p_offset + p_filesz:#x} run past the end of file ({len(data):#x} bytes)")
        if p_vaddr < abi.PAGE:
            _fail(name, f"{where}: maps the zero page")
        if p_vaddr + p_memsz > _CANONICAL_MAX:
            _fail(name, f"{where}: ends at {p_vaddr + p_memsz:#x}, above the canonical user address range")
        if p_vaddr + p_memsz > abi.STACK_TOP - stack_size:
            _fail(name, f"{where}: reaches into the stack area below {abi.STACK_TOP:#x}")
        segments.append(Segment(p_vaddr, p_memsz, bytes(data[p_offset:p_offset + p_filesz]), p_flags & 7))
    if not segments:
        _fail(name, "no loadable (PT_LOAD) segments")

    ordered = sorted(segments, key=lambda s: s.vaddr)
    for a, b in zip(ordered, ordered[1:]):
        if b.vaddr < a.end:
            _fail(name, f"segments at {a.vaddr:#x}..{a.end:#x} and {b.vaddr:#x}..{b.end:#x} overlap")
    if not any(s.flags & PF_X and s.vaddr <= e_entry < s.end for s in segments):
        _fail(name, f"entry point {e_entry:#x} is not inside any executable segment")

    image = Image(e_entry, tuple(ordered), hashlib.sha256(data).hexdigest(), len(data))
    total = image.mapped_bytes() + stack_size
    if total > mem_limit:
        _fail(name, f"needs {total >> 20} MiB ({total} bytes with a {stack_size >> 10} KiB stack), over the memory limit of {mem_limit >> 20} MiB")
    return image


def load_file(path, **kw) -> tuple[bytes, Image]:
    """Read ``path`` and parse it; file errors become BadElf too (exit status 2)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadElf(f"{path}: cannot read guest: {e.strerror}") from None
    return data, parse(data, str(path), **kw)
