"""Machine snapshots: everything a fresh process needs to continue a guest from a stop
(CPU context, memory, devices, counters, virtual time, console position), for state
transfer to a new backup. Taken only at a stop, between records, so that every event
falls either before it (in the state) or after it (in the log from ``log_index`` on).

A snapshot is a msgpack map; ``chunks`` cuts it for the channel, each chunk with its
CRC32, and ``join`` checks and reassembles them. Restoring checks the result against
the state digest taken with it.
"""
from __future__ import annotations

import ctypes
import struct
import zlib

import msgpack

from logging_channel import records as R

from .errors import FtvmError
from .machine import Config, Machine, compare_digests

VERSION = 2
MAGIC = b"FTVMSNAP"
CHUNK = 1 << 20
STEP = 4 << 20          # copy memory in steps this big, so other threads get the GIL between
_HEAD = struct.Struct("<8sIQ")


class BadSnapshot(FtvmError):
    """A snapshot (or one of its chunks) failed a check."""
    exit_status = 3


def _ctx_bytes(ctx):
    return ctx.__getstate__()[0] if ctx is not None else None


def _ctx_from(uc, data):
    if data is None:
        return None
    like = uc.context_save()
    ctx = type(like).__new__(type(like))
    ctx.__setstate__((data, like.size, like.arch, like.mode))
    return ctx


def _copy(dst, dst_off, src, n):
    for a in range(0, n, STEP):
        b = min(n, a + STEP)
        dst[dst_off + a:dst_off + b] = src[a:b]


def memory_regions(m: Machine) -> list:
    """[[start, size]] of the guest memory a snapshot holds, in its order."""
    kernel = getattr(m, "kernel", None)
    if kernel is not None:
        return [[a, b - a] for a, b, _p, _n in kernel.mem.vmas]
    return [[start, size] for start, size, _ in m.vcpu.regions]


def memory_pieces(m: Machine, size: int):
    """The memory part of a snapshot of ``m`` (what capture lays out after the map), in
    pieces of ``size`` bytes (the last one may be shorter), read straight from the engine
    into one bytearray that is reused: use or copy each piece before asking for the next.
    (A bytearray compares with bytes at memcmp speed; a memoryview compares item by item.)"""
    from unicorn.unicorn_py3.unicorn import uclib
    from .uc import unicorn
    uc = m.vcpu.uc
    buf = bytearray(size)
    fill = 0
    for start, n in memory_regions(m):
        a = 0
        while a < n:
            k = min(size - fill, n - a)
            status = uclib.uc_mem_read(uc._uch, start + a, (ctypes.c_char * k).from_buffer(buf, fill), k)
            if status != 0:
                raise unicorn.UcError(status)
            fill += k
            a += k
            if fill == size:
                yield buf
                fill = 0
    if fill:
        yield buf[:fill]


def capture(m: Machine, header_frame: bytes, log_index: int, retained_from: int, retained: bytes,
            extra: dict | None = None, digest: bool = True, memory: bool = True) -> bytearray:
    """Snapshot of ``m`` at a stop; the log continues at record ``log_index``.
    ``retained``: console bytes from offset ``retained_from`` the observer may lack.
    ``digest``: include a state digest, which restore checks (False: the snapshot never
    leaves this process, and computing the digest would cost a pass over all memory).
    Layout: MAGIC, u32 version, u64 length of the msgpack map that follows, the map,
    then the memory regions raw, in the order the map lists them (``memory`` False: not
    them; ``memory_pieces`` reads them)."""
    v, c = m.vcpu, m.cpu
    kernel = getattr(m, "kernel", None)
    if kernel is not None:
        from .linux import state as linux_state
    regions = memory_regions(m)
    st = {
        "header": header_frame,
        "log_index": log_index,
        "context": _ctx_bytes(v.context()),
        "regions": regions,
        "cpu": [int(c.blocks), int(c.tsc_last), int(c.tsc_count), int(c.tsc_offset_ns), int(c.tsc_aux)],
        "timer_us": m.timer_period_us,
        "irq": [m.irq.handler, m.irq.trampoline, _ctx_bytes(m.irq.saved), sorted(m.irq.pending), m.irq.delivered],
        "input": [bytes(m.input.fifo), m.input.eof, m.input.total],
        "console": [m.console.total, m.console.crc, retained_from, bytes(retained)],
        "digest": R.encode(m.digest()) if digest else None,
        "devices": {"net": m.net.state(), "disk": m.disk.state(),
                    "netout": [m.netout.total, m.netout.crc, m.netout.retained_from,
                               bytes(m.netout.retained) + m.netout.pending()]},
        "extra": extra or {},
    }
    if kernel is not None:
        st["linux"] = linux_state.capture(kernel, _ctx_bytes)
    meta = msgpack.packb(st, use_bin_type=True)
    total = _HEAD.size + len(meta) + (sum(size for _, size in regions) if memory else 0)
    out = bytearray(total)
    _HEAD.pack_into(out, 0, MAGIC, VERSION, len(meta))
    off = _HEAD.size
    out[off:off + len(meta)] = meta
    off += len(meta)
    if not memory:
        return out
    if kernel is not None:
        for start, size in regions:
            for a in range(0, size, STEP):
                n = min(STEP, size - a)
                out[off + a:off + a + n] = v.uc.mem_read(start + a, n)
            off += size
        return out
    for (_, size, _), ram in zip(v.regions, v.ram):
        _copy(out, off, memoryview(ram), size)
        off += size
    return out


def chunks(blob, size: int = CHUNK):
    """[(index, count, crc32, data)] of a snapshot, for the channel."""
    view = memoryview(blob)
    n = max(1, (len(view) + size - 1) // size)
    return [(i, n, zlib.crc32(view[i * size:(i + 1) * size]), bytes(view[i * size:(i + 1) * size]))
            for i in range(n)]


class Assembler:
    """Collects chunks as they arrive (checking each) into one buffer."""

    def __init__(self, count: int, size: int = CHUNK):
        self.count, self.size = count, size
        self.buf = bytearray(count * size)
        self.have = set()
        self.total = None

    def add(self, index: int, count: int, crc: int, data: bytes):
        if count != self.count or not 0 <= index < count or len(data) > self.size:
            raise BadSnapshot(f"snapshot chunk {index} of {count} does not fit a transfer of {self.count}")
        if zlib.crc32(data) != crc:
            raise BadSnapshot(f"snapshot chunk {index} of {count} fails its CRC32 check")
        self.buf[index * self.size:index * self.size + len(data)] = data
        self.have.add(index)
        if index == count - 1:
            self.total = index * self.size + len(data)

    def done(self) -> bool:
        return len(self.have) == self.count

    def blob(self):
        missing = [i for i in range(self.count) if i not in self.have]
        if missing:
            raise BadSnapshot(f"snapshot chunk {missing[0]} of {self.count} is missing")
        return memoryview(self.buf)[:self.total]


def join(parts) -> bytes:
    """Reassemble chunks {index: (count, crc, data)}; BadSnapshot if any is missing or damaged."""
    if not parts:
        raise BadSnapshot("no snapshot chunks")
    count = next(iter(parts.values()))[0]
    size = len(parts[0][2]) if 0 in parts and count > 1 else CHUNK
    a = Assembler(count, size)
    for i, (n, crc, data) in parts.items():
        a.add(i, n, crc, data)
    return bytes(a.blob())


class _Pieces:
    """The memory part of a snapshot kept as equal pieces (bytes, the last one may be
    shorter), as the debugger's checkpoints hold it: read where they lie, never joined."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.size = len(pieces[0]) if pieces else 1
        self.total = sum(len(p) for p in pieces)
        # Where each piece's bytes lie (a bytes object's c_char_p points at its own
        # buffer, no copy); the pieces list keeps them alive.
        self.bases = [ctypes.cast(ctypes.c_char_p(p), ctypes.c_void_p).value for p in pieces]

    def spans(self, off, n):
        """(piece index, offset in it, length) covering bytes [off, off + n)."""
        while n > 0:
            i, j = divmod(off, self.size)
            k = min(n, len(self.pieces[i]) - j)
            yield i, j, k
            off, n = off + k, n - k

    def write(self, uc, addr, off, n):
        from unicorn.unicorn_py3.unicorn import uclib
        from .uc import unicorn
        for i, j, k in self.spans(off, n):
            status = uclib.uc_mem_write(uc._uch, addr, ctypes.cast(self.bases[i] + j, ctypes.POINTER(ctypes.c_char)), k)
            if status != 0:
                raise unicorn.UcError(status)
            addr += k

    def copy_into(self, ram, off, n):
        dst, at = memoryview(ram), 0
        for i, j, k in self.spans(off, n):
            dst[at:at + k] = memoryview(self.pieces[i])[j:j + k]
            at += k


def restore(blob, console, mode="replay", pieces=None):
    """A Machine in the snapshot's state, plus (header, log_index, extra). ``pieces``:
    ``blob`` is the head and map alone (``capture(memory=False)``) and the memory part
    is these bytes objects one after the other (see memory_pieces)."""
    view = memoryview(blob)
    area = _Pieces(pieces) if pieces is not None else None
    try:
        magic, version, meta_len = _HEAD.unpack_from(view, 0)
        if magic != MAGIC:
            raise BadSnapshot("not an ftvm snapshot")
        if version != VERSION:
            raise BadSnapshot(f"snapshot version {version}, this ftvm reads {VERSION}")
        st = msgpack.unpackb(view[_HEAD.size:_HEAD.size + meta_len], raw=False, strict_map_key=False)
        header, _ = R.decode(st["header"])
        want = R.decode(st["digest"])[0] if st["digest"] is not None else None
    except (ValueError, KeyError, TypeError, struct.error, msgpack.ExtraData, msgpack.FormatError,
            R.FrameError) as e:
        raise BadSnapshot(f"snapshot does not decode: {e}") from None
    from . import elf_loader
    config = Config.from_dict(header.config)
    off = _HEAD.size + meta_len
    end = len(view) if area is None else off + area.total
    if header.config.get("personality") == "linux":
        from .guest import LinuxGuest
        from .linux import state as linux_state
        m = LinuxGuest.from_header(header).machine(config, mode, console, start=False)
        v, c = m.vcpu, m.cpu
        spans = {}
        for start, size in st["regions"]:
            if off + size > end:
                raise BadSnapshot(f"snapshot memory region {start:#x} is cut short")
            spans[start] = (off, size)
            off += size
        if area is None:
            m.kernel.mem.restore(st["linux"]["mem"], lambda a, b: bytes(view[spans[a][0]:spans[a][0] + (b - a)]))
        else:
            head = _HEAD.size + meta_len
            m.kernel.mem.restore(st["linux"]["mem"], None,
                                 write=lambda a, b: area.write(v.uc, a, spans[a][0] - head, b - a))
        linux_state.restore(m.kernel, st["linux"], lambda data: _ctx_from(m.vcpu.uc, data))
    else:
        image = elf_loader.parse(header.elf, header.elf_name, mem_limit=max(config.mem_limit, 1 << 62),
                                 stack_size=config.stack_size)
        m = Machine(image, config, mode, console)
        v, c = m.vcpu, m.cpu
        for (start, size), ram, (rstart, rsize, _) in zip(st["regions"], v.ram, v.regions):
            if start != rstart or size != rsize or off + size > end:
                raise BadSnapshot(f"snapshot memory region {start:#x} does not match the guest's layout")
            if area is None:
                _copy(ram, 0, view[off:off + size], size)
            else:
                area.copy_into(ram, off - _HEAD.size - meta_len, size)
            off += size
    v.restore_context(_ctx_from(v.uc, st["context"]))
    c.blocks, c.tsc_last, c.tsc_count, c.tsc_offset_ns, c.tsc_aux = st["cpu"]
    m.timer_period_us = st["timer_us"]
    handler, tramp, saved, pending, delivered = st["irq"]
    m.irq.handler, m.irq.trampoline, m.irq.delivered = handler, tramp, delivered
    m.irq.saved = _ctx_from(v.uc, saved)
    m.irq.pending = set(pending)
    fifo, eof, total = st["input"]
    m.input.fifo, m.input.eof, m.input.total = bytearray(fifo), eof, total
    ctotal, ccrc, rfrom, retained = st["console"]
    console.total, console.crc = ctotal, ccrc
    console.retained, console.retained_from = bytearray(retained), rfrom
    dev = st.get("devices")
    if dev:
        m.net.set_state(dev["net"])
        m.disk.set_state(dev["disk"])
        ntotal, ncrc, nfrom, nretained = dev["netout"]
        m.netout.total, m.netout.crc = ntotal, ncrc
        m.netout.retained, m.netout.retained_from = bytearray(nretained), nfrom
    diffs = compare_digests(want, m.digest()) if want is not None else []
    if diffs:
        raise BadSnapshot("restored state does not match the snapshot's digest: " + "; ".join(diffs))
    return m, header, st["log_index"], st["extra"]
