"""Log records: what they hold, and how they are framed. Pure code, no I/O.

A log is FILE_MAGIC followed by frames. Each frame is

    u8 format version | u8 kind | u32 body length | u32 CRC32 | body (msgpack)

little-endian, where the CRC32 covers the first six header bytes and the body. The
first frame is a HEADER; a complete log ends with an END. The logging channel carries
the very same frames, so a backup can append what it receives to its own file.

Any change to what a record holds, or to the order or number of records a run
produces, must bump FORMAT_VERSION. docs/log-format.md is the prose of this module.
"""
from __future__ import annotations

import array
import dataclasses
import struct
import zlib

import msgpack

from . import codec

FORMAT_VERSION = 3                   # v3 added SYSCALL records (the Linux personality)
READABLE_VERSIONS = (1, 2, 3)        # v2 added NET and DISK; a v1 log is a v2 log without them
FILE_MAGIC = b"FTVMLOG\x00"
FRAME = struct.Struct("<BBII")
FRAME_HEAD = struct.Struct("<BBI")   # the part of the frame header the CRC covers
BODY_MAX = 256 << 20                 # largest body a reader accepts (the ELF rides in HEADER)
TSC_BATCH_MAX = 1 << 20              # most RDTSC entries one record may hold

(HEADER, INPUT, IRQ, TSC, RNG, DIGEST, END, PROGRESS, GOLIVE, VIEW, TRANSFER, NET, DISK, SYSCALL, INTENT, WAIT,
 SCHED, SIGNAL) = range(1, 19)
KIND_NAMES = {HEADER: "header", INPUT: "input", IRQ: "irq", TSC: "tsc", RNG: "rng",
              DIGEST: "digest", END: "end", PROGRESS: "progress", GOLIVE: "golive", VIEW: "view",
              TRANSFER: "transfer", NET: "net", DISK: "disk", SYSCALL: "syscall", INTENT: "intent",
              WAIT: "wait", SCHED: "sched", SIGNAL: "signal"}
NAME_KINDS = {v: k for k, v in KIND_NAMES.items()}

# Registers in a state digest, in this order (format version 1).
DIGEST_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
               "r11", "r12", "r13", "r14", "r15", "rip", "rflags", "fs_base", "gs_base",
               "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
               "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "mxcsr")

END_REASONS = ("exit", "fault", "stuck", "interrupted")


class FrameError(Exception):
    """A frame failed a check. ``truncated`` is true when the bytes simply stop before
    the frame is whole (a cut, not damage); ``reason`` says what is wrong."""

    def __init__(self, reason, truncated=False):
        super().__init__(reason)
        self.reason, self.truncated = reason, truncated


# --- records -------------------------------------------------------------------------
# Every record that happens at an execution point carries ``blocks`` (guest blocks run
# before it) and ``pc`` (the address of the next instruction to run).

@dataclasses.dataclass(frozen=True)
class Header:
    elf: bytes
    elf_sha256: str
    elf_name: str
    abi: int
    config: dict          # the machine configuration the run used (stack size, ...)
    created_unix: float
    ftvm_version: str
    kind = HEADER


@dataclasses.dataclass(frozen=True)
class Input:
    """Bytes appended to the input device's FIFO; ``data`` None means end of input."""
    blocks: int
    pc: int
    data: bytes | None
    kind = INPUT


@dataclasses.dataclass(frozen=True)
class Net:
    """A network event from the front end, appended to the network device's queue:
    ``type`` is 1 open, 2 data, 3 close (client finished), 4 reset; ``data`` the
    bytes of a data event (else empty)."""
    blocks: int
    pc: int
    conn: int
    type: int
    data: bytes
    kind = NET


@dataclasses.dataclass(frozen=True)
class Disk:
    """Disk request number ``req`` (counted from 1 in submission order) completed with
    ``status``. For a read, ``data`` holds what was read (None when the backup reads
    the shared image itself) and ``crc`` its CRC32, checked by whoever applies it."""
    blocks: int
    pc: int
    req: int
    status: int
    data: bytes | None
    crc: int
    kind = DISK


@dataclasses.dataclass(frozen=True)
class Syscall:
    """A Linux system call, completed at execution point ``blocks`` (the syscall
    instruction at ``pc`` ends its block; the guest resumes at pc + 2). ``args`` are the
    arguments the call uses, ``ret`` its result (RAX, unsigned), ``values`` what the host
    answered, in the order the call asked (inputs, outputs' results, identities of root
    files): replay takes them from here instead of asking the host."""
    blocks: int
    pc: int
    nr: int
    args: tuple
    ret: int
    values: list
    strings: tuple = ()     # ((argument index, the path it named), ...), for display only
    kind = SYSCALL


@dataclasses.dataclass(frozen=True)
class Wait:
    """A Linux system call that must wait here (``what``: futex, stdin, sleep, ...):
    the thread keeps it pending and another thread runs. Its handler ran once and
    asked the host for ``values``; it runs again, and completes (a SYSCALL record),
    when its wait is over."""
    blocks: int
    pc: int
    nr: int
    args: tuple
    values: list
    what: str
    kind = WAIT


@dataclasses.dataclass(frozen=True)
class Sched:
    """The CPU goes from thread ``prev`` to thread ``next`` here (tids)."""
    blocks: int
    pc: int
    prev: int
    next: int
    kind = SCHED


@dataclasses.dataclass(frozen=True)
class Signal:
    """Signal ``signo`` is delivered to thread ``tid`` here: it enters its handler (or
    the process ends). ``vtime``: for a timer's signal, the guest time it fired at
    (guest time moves there, and the timer rearms from it); else 0."""
    blocks: int
    pc: int
    tid: int
    signo: int
    vtime: int = 0
    kind = SIGNAL


@dataclasses.dataclass(frozen=True)
class Intent:
    """The system call pending at ``blocks`` is about to change the data directory (an
    output), having asked the host for ``values`` so far. Written before the change, so
    that a backup going live with the call still pending can do it again with the same
    values (the same file offset), idempotently. Changes nothing in the guest."""
    blocks: int
    pc: int
    nr: int
    values: list
    kind = INTENT


@dataclasses.dataclass(frozen=True)
class Irq:
    """An interrupt delivered to the guest's handler."""
    blocks: int
    pc: int
    vector: int
    kind = IRQ


class TscBatch:
    """Results of consecutive RDTSC/RDTSCP instructions. Each entry is the block count
    when the instruction ran, the pc of the block it is in, and the value returned.
    Packed by codec.c as zigzag varints of the differences between entries, which
    keeps most entries to 3-4 bytes. ``entries`` holds them unpacked, as an
    array('Q') of blocks, pc, value, blocks, pc, value, ..."""

    kind = TSC
    __slots__ = ("count", "packed", "entries")

    def __init__(self, count: int, packed: bytes, entries):
        self.count, self.packed, self.entries = count, packed, entries

    @classmethod
    def from_entries(cls, blocks, pcs, values):
        words = array.array("Q", bytes(24 * len(blocks)))
        words[0::3], words[1::3], words[2::3] = (array.array("Q", x) for x in (blocks, pcs, values))
        return cls(len(blocks), codec.encode_entries(words, len(blocks)), words)

    @property
    def blocks(self):
        return tuple(self.entries[0::3])

    @property
    def pcs(self):
        return tuple(self.entries[1::3])

    @property
    def values(self):
        return tuple(self.entries[2::3])

    def __eq__(self, other):
        return isinstance(other, TscBatch) and (self.count, self.packed) == (other.count, other.packed)

    def __repr__(self):
        return f"TscBatch(count={self.count}, packed={len(self.packed)} bytes)"


@dataclasses.dataclass(frozen=True)
class Progress:
    """The primary got this far with nothing else to report. It lets a backup replay up
    to here (and so cover console output released at this point)."""
    blocks: int
    pc: int
    kind = PROGRESS


@dataclasses.dataclass(frozen=True)
class GoLive:
    """A backup took over here as primary of ``view``, after ``outage_ms`` without a
    primary. Changes nothing in the guest; replay checks the point."""
    blocks: int
    pc: int
    view: int
    node: str
    outage_ms: int
    kind = GOLIVE


@dataclasses.dataclass(frozen=True)
class ViewChange:
    """The primary learned view ``view`` = (primary, backup) from the view service."""
    blocks: int
    pc: int
    view: int
    primary: str
    backup: str | None
    kind = VIEW


@dataclasses.dataclass(frozen=True)
class Transfer:
    """A state transfer to ``to`` was taken here: everything before this record is in
    the snapshot, everything after it reaches the new backup through the log."""
    blocks: int
    pc: int
    view: int
    to: str
    size: int
    kind = TRANSFER


@dataclasses.dataclass(frozen=True)
class Rng:
    """A value the random-number device returned."""
    blocks: int
    value: int
    kind = RNG


@dataclasses.dataclass(frozen=True)
class Digest:
    """A state digest: registers (DIGEST_REGS order), CRC32 of each memory region
    (start address, crc), guest time, and the console output so far (bytes, CRC32)."""
    blocks: int
    pc: int
    vtime: int
    regs: tuple
    mem: tuple
    out_bytes: int
    out_crc: int
    kind = DIGEST


@dataclasses.dataclass(frozen=True)
class End:
    """The last record of a complete log: why the run ended, the guest's exit status
    (or the status ftvm exits with), a human-readable detail, the final digest and
    how long the run took on the host."""
    reason: str
    status: int
    detail: str
    digest: Digest
    wall_ns: int
    kind = END

    @property
    def blocks(self):
        return self.digest.blocks

    @property
    def pc(self):
        return self.digest.pc


# --- body encoding ----------------------------------------------------------------------

_WIDE = tuple(name.startswith("xmm") for name in DIGEST_REGS)   # 128-bit: two u64 slots
_M64 = (1 << 64) - 1


def _digest_fields(d: Digest):
    regs = []
    for wide, v in zip(_WIDE, d.regs):
        regs += (v & _M64, v >> 64) if wide else (v,)
    return [d.blocks, d.pc, d.vtime, regs, [list(m) for m in d.mem], d.out_bytes, d.out_crc]


def _body(rec) -> object:
    k = rec.kind
    if k == HEADER:
        return {"elf": rec.elf, "elf_sha256": rec.elf_sha256, "elf_name": rec.elf_name,
                "abi": rec.abi, "config": rec.config, "created_unix": rec.created_unix,
                "ftvm_version": rec.ftvm_version}
    if k == INPUT:
        return [rec.blocks, rec.pc, rec.data]
    if k == IRQ:
        return [rec.blocks, rec.pc, rec.vector]
    if k == INTENT:
        return [rec.blocks, rec.pc, rec.nr, rec.values]
    if k == WAIT:
        return [rec.blocks, rec.pc, rec.nr, list(rec.args), rec.values, rec.what]
    if k == SCHED:
        return [rec.blocks, rec.pc, rec.prev, rec.next]
    if k == SIGNAL:
        return [rec.blocks, rec.pc, rec.tid, rec.signo, rec.vtime]
    if k == SYSCALL:
        return [rec.blocks, rec.pc, rec.nr, list(rec.args), rec.ret, rec.values, [list(p) for p in rec.strings]]
    if k == NET:
        return [rec.blocks, rec.pc, rec.conn, rec.type, rec.data]
    if k == DISK:
        return [rec.blocks, rec.pc, rec.req, rec.status, rec.data, rec.crc]
    if k == TSC:
        return [rec.count, rec.packed]
    if k == RNG:
        return [rec.blocks, rec.value]
    if k == PROGRESS:
        return [rec.blocks, rec.pc]
    if k == GOLIVE:
        return [rec.blocks, rec.pc, rec.view, rec.node, rec.outage_ms]
    if k == VIEW:
        return [rec.blocks, rec.pc, rec.view, rec.primary, rec.backup]
    if k == TRANSFER:
        return [rec.blocks, rec.pc, rec.view, rec.to, rec.size]
    if k == DIGEST:
        return _digest_fields(rec)
    if k == END:
        return [rec.reason, rec.status, rec.detail, _digest_fields(rec.digest), rec.wall_ns]
    raise AssertionError(f"unknown record kind {k}")


def encode(rec, version: int = FORMAT_VERSION) -> bytes:
    """One record as a whole frame."""
    body = msgpack.packb(_body(rec), use_bin_type=True)
    head = FRAME_HEAD.pack(version, rec.kind, len(body))
    return head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + body


def _is_uint(x, bits=64):
    return type(x) is int and 0 <= x < (1 << bits)


def _need(cond, what):
    if not cond:
        raise FrameError(what)


def _digest_from(f, where="digest") -> Digest:
    _need(isinstance(f, list) and len(f) == 7, f"{where}: expected 7 fields")
    blocks, pc, vtime, regs, mem, out_bytes, out_crc = f
    _need(_is_uint(blocks) and _is_uint(pc) and _is_uint(vtime), f"{where}: bad execution point or time")
    _need(isinstance(regs, list) and len(regs) == len(DIGEST_REGS) + sum(_WIDE) and all(_is_uint(r) for r in regs),
          f"{where}: expected {len(DIGEST_REGS)} registers")
    it = iter(regs)
    regs = [next(it) | (next(it) << 64) if wide else next(it) for wide in _WIDE]
    _need(isinstance(mem, list) and all(isinstance(m, list) and len(m) == 2 and _is_uint(m[0]) and _is_uint(m[1], 32)
                                        for m in mem), f"{where}: bad memory hashes")
    _need(_is_uint(out_bytes) and _is_uint(out_crc, 32), f"{where}: bad output summary")
    return Digest(blocks, pc, vtime, tuple(regs), tuple(tuple(m) for m in mem), out_bytes, out_crc)


_U64 = 1 << 64
_new = object.__new__


def syscall_record(blocks, pc, nr, args, ret, values, strings=()):
    """Syscall(...) at a quarter of the cost: a frozen dataclass's __init__ sets each
    field through object.__setattr__ (about 2.5 us for seven), and a busy server
    makes and reads tens of thousands of these records a second. The same object."""
    rec = _new(Syscall)
    rec.__dict__.update(blocks=blocks, pc=pc, nr=nr, args=args, ret=ret, values=values, strings=strings)
    return rec


def _syscall_fast(b):
    """The common SYSCALL body (no strings), checked as ``_from_body`` checks it, with
    less Python; None sends it down the general path (which names what is wrong)."""
    if type(b) is not list or len(b) != 7:
        return None
    blocks, pc, nr, args, ret, values, strings = b
    if (type(blocks) is int and type(pc) is int and type(nr) is int and type(ret) is int and type(args) is list
            and type(values) is list and type(strings) is list and not strings and len(args) <= 6
            and 0 <= blocks < _U64 and 0 <= pc < _U64 and 0 <= nr < 65536 and 0 <= ret < _U64):
        for a in args:
            if type(a) is not int or not 0 <= a < _U64:
                return None
        return syscall_record(blocks, pc, nr, tuple(args), ret, values, ())
    return None


def _from_body(kind, b):
    if kind == SYSCALL:
        rec = _syscall_fast(b)
        if rec is not None:
            return rec
    if kind == HEADER:
        _need(isinstance(b, dict), "header: expected a map")
        try:
            h = Header(b["elf"], b["elf_sha256"], b["elf_name"], b["abi"], b["config"],
                       b["created_unix"], b["ftvm_version"])
        except KeyError as e:
            raise FrameError(f"header: missing field {e.args[0]!r}") from None
        _need(isinstance(h.elf, bytes) and isinstance(h.elf_sha256, str) and isinstance(h.config, dict)
              and type(h.abi) is int, "header: field of the wrong type")
        return h
    _need(isinstance(b, list), f"{KIND_NAMES[kind]}: expected an array")
    if kind == INPUT:
        _need(len(b) == 3 and _is_uint(b[0]) and _is_uint(b[1]) and (b[2] is None or isinstance(b[2], bytes)),
              "input: expected [blocks, pc, bytes|nil]")
        return Input(*b)
    if kind == IRQ:
        _need(len(b) == 3 and _is_uint(b[0]) and _is_uint(b[1]) and _is_uint(b[2], 8),
              "irq: expected [blocks, pc, vector]")
        return Irq(*b)
    if kind == WAIT:
        _need(len(b) == 6 and _is_uint(b[0]) and _is_uint(b[1]) and _is_uint(b[2], 16) and isinstance(b[3], list)
              and len(b[3]) <= 6 and all(_is_uint(a) for a in b[3]) and isinstance(b[4], list)
              and isinstance(b[5], str), "wait: expected [blocks, pc, number, args, values, what]")
        return Wait(b[0], b[1], b[2], tuple(b[3]), b[4], b[5])
    if kind == SCHED:
        _need(len(b) == 4 and all(_is_uint(x) for x in b), "sched: expected [blocks, pc, prev, next]")
        return Sched(*b)
    if kind == SIGNAL:
        _need(len(b) == 5 and all(_is_uint(x) for x in b) and 1 <= b[3] <= 64,
              "signal: expected [blocks, pc, tid, signo 1-64, vtime]")
        return Signal(*b)
    if kind == INTENT:
        _need(len(b) == 4 and _is_uint(b[0]) and _is_uint(b[1]) and _is_uint(b[2], 16) and isinstance(b[3], list),
              "intent: expected [blocks, pc, number, values]")
        return Intent(*b)
    if kind == SYSCALL:
        _need(len(b) == 7 and _is_uint(b[0]) and _is_uint(b[1]) and _is_uint(b[2], 16) and isinstance(b[3], list)
              and len(b[3]) <= 6 and all(_is_uint(a) for a in b[3]) and _is_uint(b[4]) and isinstance(b[5], list)
              and isinstance(b[6], list) and all(isinstance(p, list) and len(p) == 2 and _is_uint(p[0], 3)
                                                 and isinstance(p[1], str) for p in b[6]),
              "syscall: expected [blocks, pc, number, args, result, values, strings]")
        return Syscall(b[0], b[1], b[2], tuple(b[3]), b[4], b[5], tuple(tuple(p) for p in b[6]))
    if kind == NET:
        _need(len(b) == 5 and _is_uint(b[0]) and _is_uint(b[1]) and _is_uint(b[2], 32) and b[3] in (1, 2, 3, 4)
              and isinstance(b[4], bytes), "net: expected [blocks, pc, conn, type 1-4, bytes]")
        return Net(*b)
    if kind == DISK:
        _need(len(b) == 6 and _is_uint(b[0]) and _is_uint(b[1]) and _is_uint(b[2]) and _is_uint(b[3], 32)
              and (b[4] is None or isinstance(b[4], bytes)) and _is_uint(b[5], 32),
              "disk: expected [blocks, pc, request, status, bytes|nil, crc32]")
        _need(b[4] is None or zlib.crc32(b[4]) == b[5], f"disk: data of request {b[2]} fails its CRC32")
        return Disk(*b)
    if kind == TSC:
        _need(len(b) == 2 and _is_uint(b[0], 32) and 0 < b[0] <= TSC_BATCH_MAX and isinstance(b[1], bytes),
              "tsc: expected [count, packed entries]")
        entries = codec.decode_entries(b[1], b[0])
        _need(entries is not None, f"tsc: packed entries do not hold exactly {b[0]} entries")
        return TscBatch(b[0], b[1], entries)
    if kind == RNG:
        _need(len(b) == 2 and _is_uint(b[0]) and _is_uint(b[1], 32), "rng: expected [blocks, value]")
        return Rng(*b)
    if kind == DIGEST:
        return _digest_from(b)
    if kind == PROGRESS:
        _need(len(b) == 2 and _is_uint(b[0]) and _is_uint(b[1]), "progress: expected [blocks, pc]")
        return Progress(*b)
    if kind == GOLIVE:
        _need(len(b) == 5 and _is_uint(b[0]) and _is_uint(b[1]) and _is_uint(b[2], 32) and isinstance(b[3], str)
              and _is_uint(b[4]), "golive: expected [blocks, pc, view, node, outage_ms]")
        return GoLive(*b)
    if kind == VIEW:
        _need(len(b) == 5 and _is_uint(b[0]) and _is_uint(b[1]) and _is_uint(b[2], 32) and isinstance(b[3], str)
              and (b[4] is None or isinstance(b[4], str)), "view: expected [blocks, pc, view, primary, backup]")
        return ViewChange(*b)
    if kind == TRANSFER:
        _need(len(b) == 5 and _is_uint(b[0]) and _is_uint(b[1]) and _is_uint(b[2], 32) and isinstance(b[3], str)
              and _is_uint(b[4]), "transfer: expected [blocks, pc, view, to, size]")
        return Transfer(*b)
    if kind == END:
        _need(len(b) == 5 and b[0] in END_REASONS and _is_uint(b[1], 8) and isinstance(b[2], str)
              and _is_uint(b[4]), "end: expected [reason, status, detail, digest, wall_ns]")
        return End(b[0], b[1], b[2], _digest_from(b[3], "end digest"), b[4])
    raise AssertionError(kind)


def check_frame(buf, offset: int = 0):
    """Check the framing and CRC of the frame at ``offset``; returns its body bytes.

    Raises FrameError: truncated=True when ``buf`` ends before the frame does."""
    avail = len(buf) - offset
    if avail < FRAME.size:
        raise FrameError(f"{avail} bytes left, a frame header needs {FRAME.size}", truncated=True)
    version, kind, length, crc = FRAME.unpack_from(buf, offset)
    if version not in READABLE_VERSIONS:
        raise FrameError(f"format version {version}; this ftvm reads versions {READABLE_VERSIONS[0]}-{FORMAT_VERSION} "
                         f"(a log from another ftvm version, or damage)")
    if kind not in KIND_NAMES:
        raise FrameError(f"unknown record kind {kind}")
    if length > BODY_MAX:
        raise FrameError(f"body length {length} is over the limit of {BODY_MAX}")
    if avail < FRAME.size + length:
        raise FrameError(f"{KIND_NAMES[kind]} record claims {length} body bytes, only {avail - FRAME.size} remain "
                         "(the log was cut short, or the length is damaged)",
                         truncated=True)
    body = bytes(buf[offset + FRAME.size: offset + FRAME.size + length])
    head = buf[offset:offset + FRAME_HEAD.size] if offset else buf[:FRAME_HEAD.size]
    if zlib.crc32(body, zlib.crc32(head)) != crc:
        raise FrameError(f"{KIND_NAMES[kind]} record fails its CRC32 check")
    return kind, body


def decode(buf, offset: int = 0):
    """Decode the frame at ``offset`` of ``buf``. Returns (record, frame size).

    Raises FrameError: truncated=True when ``buf`` ends before the frame does."""
    kind, body = check_frame(buf, offset)
    return _record(kind, body), FRAME.size + len(body)


def decode_checked(buf, offset: int = 0):
    """The record of a frame whose framing and CRC32 were checked already
    (logging_channel.frames.check); the body is still checked as ``decode`` checks it."""
    _, kind, length, _ = FRAME.unpack_from(buf, offset)
    start = offset + FRAME.size
    return _record(kind, buf[start:start + length])


def _record(kind, body):
    try:
        obj = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise FrameError(f"{KIND_NAMES[kind]} record body is not valid msgpack ({e})") from None
    return _from_body(kind, obj)
