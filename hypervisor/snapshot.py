"""Machine snapshots: everything a fresh process needs to continue a guest from a stop
(CPU context, memory, devices, counters, virtual time, console position), for state
transfer to a new backup. Taken only at a stop, between records, so that every event
falls either before it (in the state) or after it (in the log from ``log_index`` on).

A snapshot is a msgpack map; ``chunks`` cuts it for the channel, each chunk with its
CRC32, and ``join`` checks and reassembles them. Restoring checks the result against
the state digest taken with it.
"""
from __future__ import annotations

import zlib

import msgpack

from logging_channel import records as R

from .errors import FtvmError
from .machine import Config, Machine, compare_digests

VERSION = 1
CHUNK = 1 << 20


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


def capture(m: Machine, header_frame: bytes, log_index: int, retained_from: int, retained: bytes) -> bytes:
    """Snapshot of ``m`` at a stop; the log continues at record ``log_index``.
    ``retained``: console bytes from offset ``retained_from`` the observer may lack."""
    v, c = m.vcpu, m.cpu
    st = {
        "version": VERSION,
        "header": header_frame,
        "log_index": log_index,
        "context": _ctx_bytes(v.context()),
        "memory": [[start, bytes(ram)] for (start, _, _), ram in zip(v.regions, v.ram)],
        "cpu": [int(c.blocks), int(c.tsc_last), int(c.tsc_count), int(c.tsc_offset_ns), int(c.tsc_aux)],
        "timer_us": m.timer_period_us,
        "irq": [m.irq.handler, m.irq.trampoline, _ctx_bytes(m.irq.saved), sorted(m.irq.pending), m.irq.delivered],
        "input": [bytes(m.input.fifo), m.input.eof, m.input.total],
        "console": [m.console.total, m.console.crc, retained_from, retained],
        "digest": R.encode(m.digest()),
    }
    return msgpack.packb(st, use_bin_type=True)


def chunks(blob: bytes, size: int = CHUNK):
    """[(index, count, crc32, data)] of a snapshot, for the channel."""
    n = max(1, (len(blob) + size - 1) // size)
    return [(i, n, zlib.crc32(blob[i * size:(i + 1) * size]), blob[i * size:(i + 1) * size]) for i in range(n)]


def join(parts) -> bytes:
    """Reassemble chunks {index: (count, crc, data)}; BadSnapshot if any is missing or damaged."""
    if not parts:
        raise BadSnapshot("no snapshot chunks")
    count = next(iter(parts.values()))[0]
    out = []
    for i in range(count):
        if i not in parts:
            raise BadSnapshot(f"snapshot chunk {i} of {count} is missing")
        n, crc, data = parts[i]
        if n != count or zlib.crc32(data) != crc:
            raise BadSnapshot(f"snapshot chunk {i} of {count} fails its CRC32 check")
        out.append(data)
    return b"".join(out)


def restore(blob: bytes, console, mode="replay"):
    """A Machine in the snapshot's state, plus (header, log_index)."""
    try:
        st = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        if st.get("version") != VERSION:
            raise BadSnapshot(f"snapshot version {st.get('version')}, this ftvm reads {VERSION}")
        header, _ = R.decode(st["header"])
        want, _ = R.decode(st["digest"])
    except (ValueError, KeyError, TypeError, msgpack.ExtraData, msgpack.FormatError, R.FrameError) as e:
        raise BadSnapshot(f"snapshot does not decode: {e}") from None
    from . import elf_loader
    config = Config.from_dict(header.config)
    image = elf_loader.parse(header.elf, header.elf_name, mem_limit=max(config.mem_limit, 1 << 62),
                             stack_size=config.stack_size)
    m = Machine(image, config, mode, console)
    v, c = m.vcpu, m.cpu
    for (start, data), ram, (rstart, size, _) in zip(st["memory"], v.ram, v.regions):
        if start != rstart or len(data) != size:
            raise BadSnapshot(f"snapshot memory region {start:#x} does not match the guest's layout")
        ram[:] = data
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
    diffs = compare_digests(want, m.digest())
    if diffs:
        raise BadSnapshot("restored state does not match the snapshot's digest: " + "; ".join(diffs))
    return m, header, st["log_index"]
