"""The memory family: brk, mmap, munmap, mprotect, mremap, madvise, msync. All of it is
guest state: addresses come from the address space's deterministic allocator, so
replay computes the same answers. File contents mapped from the root are read again
at replay; from the data directory they are a logged input."""
from __future__ import annotations

import errno

from .fs import GuestErr
from .memory import ADDR_MAX, PAGE, PROT_READ, PROT_WRITE, page_up
from .table import syscall

MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x1, 0x2, 0x10, 0x20
MAP_FIXED_NOREPLACE = 0x100000
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
MADV_DONTNEED, MADV_FREE = 4, 8


@syscall("brk", "hex", family="memory")
def sys_brk(k, addr):
    return k.mem.set_brk(addr) if addr else k.mem.brk


@syscall("mmap", "hex", "size", "flags:prot", "flags:mmap", "fd", "hex", family="memory")
def sys_mmap(k, addr, length, prot, flags, fd, off):
    mem = k.mem
    if length == 0 or off % PAGE or addr % PAGE and flags & MAP_FIXED:
        raise GuestErr(errno.EINVAL)
    size = page_up(length)
    if size > 1 << 40:
        raise GuestErr(errno.ENOMEM)
    f = None
    if not flags & MAP_ANONYMOUS:
        f = k.files.get(fd)
        if prot & PROT_WRITE and flags & MAP_SHARED and not f.writable():
            raise GuestErr(errno.EACCES)
    if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE):
        if addr + size > ADDR_MAX:
            raise GuestErr(errno.ENOMEM)
        if flags & MAP_FIXED_NOREPLACE and not mem.is_free(addr, addr + size):
            raise GuestErr(errno.EEXIST)
        start = addr
    else:
        start = None
        if addr and addr + size <= ADDR_MAX and mem.is_free(addr, addr + size) and addr >= 0x10000:
            start = addr            # the hint is free: take it, as Linux does
        if start is None:
            start = mem.find_free(size)
        if start is None:
            raise GuestErr(errno.ENOMEM)
    name = "" if f is None else f.gpath
    mem.map_fixed(start, size, prot | PROT_WRITE, name)
    if f is not None:
        data = f.map_bytes(k, off, min(length, size))
        mem.write(start, data)
        if flags & MAP_SHARED and f.kind in ("data", "tmp"):     # /tmp files too, as on tmpfs
            k.shared_maps.append([start, size, f, off])
    if not prot & PROT_WRITE:
        mem.protect(start, size, prot)
    return start


@syscall("munmap", "hex", "size", family="memory")
def sys_munmap(k, addr, length):
    if addr % PAGE or length == 0:
        raise GuestErr(errno.EINVAL)
    k.write_back_shared(addr, page_up(length))
    k.mem.unmap(addr, page_up(length))
    return 0


@syscall("mprotect", "hex", "size", "flags:prot", family="memory")
def sys_mprotect(k, addr, length, prot):
    if addr % PAGE:
        raise GuestErr(errno.EINVAL)
    if length == 0:
        return 0
    if not k.mem.protect(addr, page_up(length), prot & 7):
        raise GuestErr(errno.ENOMEM)
    return 0


@syscall("mremap", "hex", "size", "size", "hex", "hex", family="memory")
def sys_mremap(k, old, old_len, new_len, flags, new_addr):
    mem = k.mem
    if old % PAGE or new_len == 0:
        raise GuestErr(errno.EINVAL)
    old_len, new_len = page_up(old_len), page_up(new_len)
    vmas = mem.overlapping(old, old + old_len)
    if not vmas or not mem.is_mapped(old, old + old_len):
        raise GuestErr(errno.EFAULT)
    prot, name = vmas[0][2], vmas[0][3]
    if new_len <= old_len:
        if new_len < old_len:
            mem.unmap(old + new_len, old_len - new_len)
        return old
    if mem.is_free(old + old_len, old + new_len) and not flags & MREMAP_FIXED:
        mem.map_fixed(old + old_len, new_len - old_len, prot | PROT_WRITE, name)
        if not prot & PROT_WRITE:
            mem.protect(old + old_len, new_len - old_len, prot)
        return old
    if not flags & MREMAP_MAYMOVE:
        raise GuestErr(errno.ENOMEM)
    data = mem.read(old, old_len)
    start = new_addr if flags & MREMAP_FIXED else mem.find_free(new_len)
    if start is None:
        raise GuestErr(errno.ENOMEM)
    mem.map_fixed(start, new_len, prot | PROT_WRITE, name)
    mem.write(start, data)
    if not prot & PROT_WRITE:
        mem.protect(start, new_len, prot)
    mem.unmap(old, old_len)
    return start


@syscall("madvise", "hex", "size", "int", family="memory",
         note="MADV_DONTNEED and MADV_FREE zero the pages, as Linux does for private anonymous memory")
def sys_madvise(k, addr, length, advice):
    if addr % PAGE:
        raise GuestErr(errno.EINVAL)
    if advice in (MADV_DONTNEED, MADV_FREE) and length:
        size = page_up(length)
        for v in k.mem.overlapping(addr, addr + size):
            a, b = max(v[0], addr), min(v[1], addr + size)
            if v[2] & PROT_WRITE:
                k.mem.write(a, bytes(b - a))
            else:
                k.mem.protect(a, b - a, v[2] | PROT_WRITE)
                k.mem.write(a, bytes(b - a))
                k.mem.protect(a, b - a, v[2])
    return 0


@syscall("msync", "hex", "size", "hex", family="memory")
def sys_msync(k, addr, length, flags):
    k.write_back_shared(addr, page_up(length))
    return 0


@syscall("mlock", "hex", "size", family="memory")
def sys_mlock(k, addr, length):
    return 0


@syscall("munlock", "hex", "size", family="memory")
def sys_munlock(k, addr, length):
    return 0


@syscall("mincore", "hex", "size", "ptr", family="memory")
def sys_mincore(k, addr, length, vec):
    n = page_up(length) // PAGE
    k.write_mem(vec, b"\x01" * n)
    return 0


_ = PROT_READ
