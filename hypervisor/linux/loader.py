"""Starting a Linux process: map the program (and its interpreter, for a dynamically
linked one) and build the initial stack (argc, argv, envp, the auxiliary vector).

Pure planning plus writes through the address space: the addresses chosen depend only
on the program, the interpreter and the arguments, never on the host, so record and
replay build the same process.
"""
from __future__ import annotations

import dataclasses
import struct

from ..errors import BadElf
from .memory import PAGE, PROT_EXEC, PROT_READ, PROT_WRITE, page_down, page_up

PT_LOAD, PT_INTERP, PT_PHDR, PT_TLS, PT_GNU_STACK = 1, 3, 6, 7, 0x6474E551
ET_EXEC, ET_DYN = 2, 3
EM_X86_64 = 62
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")

PIE_BASE = 0x5555_5555_4000        # where Linux puts a PIE program with ASLR off
STACK_TOP = 0x7FFF_FFFF_F000
STACK_SIZE = 8 << 20               # RLIMIT_STACK's usual 8 MiB, reserved up front

AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE, AT_FLAGS, AT_ENTRY = 0, 3, 4, 5, 6, 7, 8, 9
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_PLATFORM, AT_HWCAP, AT_CLKTCK = 11, 12, 13, 14, 15, 16, 17
AT_SECURE, AT_RANDOM, AT_HWCAP2, AT_EXECFN, AT_MINSIGSTKSZ = 23, 25, 26, 31, 51

# AT_HWCAP on x86 is CPUID leaf 1's EDX; the value the Sandy Bridge model reports.
HWCAP = 0x078BFBFD
UID = GID = 1000


@dataclasses.dataclass
class Elf:
    """A parsed Linux ELF: what loading needs."""
    name: str
    data: bytes
    type: int
    entry: int
    phoff: int
    phnum: int
    loads: list          # [(vaddr, memsz, offset, filesz, flags)]
    interp: str | None
    phdr_vaddr: int | None


def parse(data: bytes, name: str) -> Elf:
    def fail(what):
        raise BadElf(f"{name}: {what}")
    if data[:4] != b"\x7fELF":
        fail("not an ELF file (no \\x7fELF magic at byte 0)")
    if len(data) < _EHDR.size:
        fail(f"ELF header cut short: {len(data)} bytes")
    (ident, e_type, e_machine, _v, e_entry, e_phoff, _sh, _fl, _ehsz, e_phentsize, e_phnum,
     _she, _shn, _shs) = _EHDR.unpack_from(data, 0)
    if ident[4] != 2 or ident[5] != 1:
        fail("not a 64-bit little-endian ELF (ftvm runs x86-64 programs)")
    if e_machine != EM_X86_64:
        fail(f"machine type {e_machine}, not x86-64 (62)")
    if e_type not in (ET_EXEC, ET_DYN):
        fail(f"ELF type {e_type} is not an executable (2) or a position-independent one (3)")
    if e_phentsize != _PHDR.size or e_phoff + e_phnum * _PHDR.size > len(data):
        fail("program header table runs past the end of the file")
    loads, interp, phdr = [], None, None
    for i in range(e_phnum):
        p_type, p_flags, p_off, p_vaddr, _pa, p_filesz, p_memsz, _al = _PHDR.unpack_from(data, e_phoff + i * _PHDR.size)
        if p_type == PT_LOAD:
            if p_filesz > p_memsz or p_off + p_filesz > len(data):
                fail(f"program header {i}: segment runs past the end of the file")
            if (p_vaddr - p_off) % PAGE:
                fail(f"program header {i}: address and file offset disagree modulo the page size")
            loads.append((p_vaddr, p_memsz, p_off, p_filesz, p_flags))
        elif p_type == PT_INTERP:
            raw = data[p_off:p_off + p_filesz]
            interp = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif p_type == PT_PHDR:
            phdr = p_vaddr
    if not loads:
        fail("no loadable segment (PT_LOAD)")
    if phdr is None:
        for vaddr, _memsz, off, filesz, _f in loads:
            if off <= e_phoff < off + filesz:
                phdr = vaddr + (e_phoff - off)
    return Elf(name, data, e_type, e_entry, e_phoff, e_phnum, loads, interp, phdr)


def _prot(flags):
    return (PROT_READ if flags & 4 else 0) | (PROT_WRITE if flags & 2 else 0) | (PROT_EXEC if flags & 1 else 0)


def map_elf(mem, elf: Elf, base: int | None, path: str):
    """Map ``elf``'s segments; ET_DYN at ``base`` (or where the address space puts it).
    Returns (load bias, end of the highest segment)."""
    lo = page_down(min(v for v, *_ in elf.loads))
    hi = page_up(max(v + m for v, m, *_ in elf.loads))
    if elf.type == ET_DYN:
        start = base if base is not None else mem.find_free(hi - lo)
        bias = start - lo
    else:
        bias = 0
    # Reserve the whole span first, as the kernel does, so the gaps are ours.
    for vaddr, memsz, off, filesz, flags in elf.loads:
        a = page_down(vaddr + bias)
        b = page_up(vaddr + bias + memsz)
        mem.map_fixed(a, b - a, PROT_READ | PROT_WRITE, name=path)
        mem.write(vaddr + bias, elf.data[off:off + filesz])
    for vaddr, memsz, off, filesz, flags in elf.loads:
        a = page_down(vaddr + bias)
        b = page_up(vaddr + bias + memsz)
        mem.protect(a, b - a, _prot(flags))
    return bias, hi + bias


def build_stack(mem, argv, envp, auxv_base: dict, execfn: str, random16: bytes) -> int:
    """Map the stack and lay out argc/argv/envp/auxv on it as the kernel does.
    Returns the initial RSP (16-byte aligned, pointing at argc)."""
    mem.map_fixed(STACK_TOP - STACK_SIZE, STACK_SIZE, PROT_READ | PROT_WRITE, name="[stack]")
    sp = STACK_TOP
    strings = bytearray()

    def put(b: bytes):
        nonlocal sp
        sp -= len(b)
        mem.write(sp, b)
        return sp

    execfn_p = put(execfn.encode() + b"\0")
    env_p = [put(e.encode() + b"\0") for e in reversed(envp)][::-1]
    arg_p = [put(a.encode() + b"\0") for a in reversed(argv)][::-1]
    plat_p = put(b"x86_64\0")
    sp &= ~0xF
    rand_p = put(random16)
    sp &= ~0xF
    del strings
    auxv = dict(auxv_base)
    auxv.update({AT_RANDOM: rand_p, AT_EXECFN: execfn_p, AT_PLATFORM: plat_p})
    words = [len(argv)] + arg_p + [0] + env_p + [0]
    for k, v in auxv.items():
        words += [k, v]
    words += [AT_NULL, 0]
    if len(words) % 2:
        words.append(0)     # keep RSP 16-byte aligned at argc
    sp -= 8 * len(words)
    sp &= ~0xF
    mem.write(sp, struct.pack(f"<{len(words)}Q", *words))
    return sp


def load_process(mem, root, program_path: str, prog: Elf, argv, envp, random16: bytes, read_root):
    """Map the program and its interpreter, build the stack. ``read_root(path)`` reads a
    file of the guest's root (the interpreter) as bytes. Returns (entry pc, rsp, brk)."""
    bias, end = map_elf(mem, prog, PIE_BASE if prog.type == ET_DYN else None, program_path)
    entry = prog.entry + bias
    interp_base = 0
    start = entry
    if prog.interp:
        data = read_root(prog.interp)
        interp = parse(data, prog.interp)
        if interp.interp:
            raise BadElf(f"{prog.interp}: the interpreter itself asks for an interpreter")
        ibias, _ = map_elf(mem, interp, None, prog.interp)
        interp_base = ibias + page_down(min(v for v, *_ in interp.loads))
        start = interp.entry + ibias
    auxv = {
        AT_PHDR: (prog.phdr_vaddr or 0) + bias, AT_PHENT: _PHDR.size, AT_PHNUM: prog.phnum,
        AT_PAGESZ: PAGE, AT_BASE: interp_base, AT_FLAGS: 0, AT_ENTRY: entry,
        AT_UID: UID, AT_EUID: UID, AT_GID: GID, AT_EGID: GID, AT_SECURE: 0,
        AT_HWCAP: HWCAP, AT_HWCAP2: 0, AT_CLKTCK: 100, AT_MINSIGSTKSZ: 2048,
    }
    rsp = build_stack(mem, argv, envp, auxv, program_path, random16)
    return start, rsp, page_up(end)
