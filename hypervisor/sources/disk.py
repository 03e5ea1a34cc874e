"""The disk device (guest ABI v2): asynchronous block requests with DMA and a
completion interrupt, backed by an image file on the shared disk.

Determinism. A request is submitted by a guest instruction (a deterministic point),
so the device validates it and, for a write, copies the data into a bounce buffer
right there. The host does the I/O on a thread; its completion reaches the machine at
a later stop, is logged there as a DISK record (with the data read, by default), and
only then is read data copied into guest memory and the status word written. A guest
that touches a buffer while its request is in flight therefore sees the same bytes
in replay as it did when recorded.

Writes are outputs. They go through the same gate as console output (the Output
Rule): the host writes only after the backup has acknowledged the log position at
which the guest submitted them, and only the primary writes. A write completes after
``pwrite`` and ``fdatasync`` both returned, so a completed write is durable.

On go-live the new primary issues again every request its replayed guest has in
flight (submitted, no completion in the log). They are idempotent: a write puts the
same bytes at the same place, a read reads again.
"""
from __future__ import annotations

import collections
import dataclasses
import errno
import os
import threading
import zlib

from logging_channel import records as R

from .. import abi
from ..errors import FtvmError

REQ_SIZE = 32            # struct ftvm_disk_req
STATUS_AT = 24


class DiskError(FtvmError):
    """The disk image cannot be used (missing, wrong size, not writable)."""
    exit_status = 7


def parse_size(text: str) -> int:
    """'64M', '1G', '4096', '512K' -> bytes."""
    t = text.strip().upper().rstrip("B").rstrip("I")
    mult = 1
    if t and t[-1] in "KMGT":
        mult = 1 << (10 * ("KMGT".index(t[-1]) + 1))
        t = t[:-1]
    try:
        n = int(t) * mult
    except ValueError:
        raise DiskError(f"disk size {text!r}: expected a number of bytes, optionally with K, M, G or T") from None
    if n <= 0 or n % abi.DISK_SECTOR:
        raise DiskError(f"disk size {text!r}: must be a positive multiple of {abi.DISK_SECTOR} bytes")
    return n


def open_image(path: str, size: int | None) -> int:
    """Create the image (sparse) if missing; returns its size in sectors."""
    exists = os.path.exists(path)
    if not exists:
        if size is None:
            raise DiskError(f"disk image {path} does not exist; give --disk-size to create it")
        try:
            with open(path, "xb") as f:
                f.truncate(size)
                os.fsync(f.fileno())
            dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            raise DiskError(f"cannot create disk image {path}: {e.strerror}") from None
    try:
        have = os.path.getsize(path)
        fd = os.open(path, os.O_RDWR)
        os.close(fd)
    except OSError as e:
        raise DiskError(f"cannot open disk image {path}: {e.strerror}") from None
    if have % abi.DISK_SECTOR or have == 0:
        raise DiskError(f"disk image {path} is {have} bytes, not a positive multiple of {abi.DISK_SECTOR}")
    if exists and size is not None and size != have:
        raise DiskError(f"disk image {path} is {have} bytes but --disk-size says {size}; "
                        f"leave --disk-size out to use the image as it is")
    sectors = have // abi.DISK_SECTOR
    if sectors > 0xFFFFFFFF:
        raise DiskError(f"disk image {path} is larger than the device can address")
    return sectors


@dataclasses.dataclass
class Request:
    id: int
    op: int
    lba: int
    count: int
    buf: int
    status_ptr: int
    data: bytes | None = None      # a write's bounce buffer


class DiskDevice:
    """Guest side: validation, bounce buffers, requests in flight, completions."""

    def __init__(self, vcpu, sectors: int):
        self.vcpu = vcpu
        self.sectors = sectors
        self.submitted = 0                 # requests ever accepted (ids count from 1)
        self.inflight = {}                 # id -> Request
        self.new = []                      # accepted since the last stop (record side hands them on)
        self.rejected = 0                  # completed at once with EINVAL / EBUSY
        self.completed_now = False         # a request completed at submit: raise the irq at the stop
        self.reads_completed = 0           # read requests completed (a backup reports how far it is)

    def submit(self, ptr: int):
        raw = self.vcpu.read(ptr, REQ_SIZE)     # an unmapped struct is a guest fault (raised)
        op = int.from_bytes(raw[0:4], "little")
        count = int.from_bytes(raw[4:8], "little")
        lba = int.from_bytes(raw[8:16], "little")
        buf = int.from_bytes(raw[16:24], "little")
        status_ptr = ptr + STATUS_AT
        nbytes = count * abi.DISK_SECTOR
        bad = (self.sectors == 0 or op not in (abi.DISK_READ, abi.DISK_WRITE) or not 1 <= count <= abi.DISK_MAX_SECTORS
               or lba + count > self.sectors)
        data = None
        if not bad:
            try:
                data = self.vcpu.read(buf, nbytes)
            except Exception:
                bad = True
        if bad or len(self.inflight) >= abi.DISK_MAX_INFLIGHT:
            self.rejected += 1
            self.completed_now = True
            self.vcpu.write(status_ptr, (abi.DISK_EINVAL if bad else abi.DISK_EBUSY).to_bytes(4, "little"))
            return
        self.submitted += 1
        r = Request(self.submitted, op, lba, count, buf, status_ptr, data if op == abi.DISK_WRITE else None)
        self.inflight[r.id] = r
        self.new.append(r)
        self.vcpu.write(status_ptr, abi.DISK_PENDING.to_bytes(4, "little"))

    def take_new(self):
        out, self.new = self.new, []
        return out

    def complete(self, req: int, status: int, data: bytes | None):
        """Finish request ``req``: DMA the data of a successful read, then the status.
        Returns None, or what is wrong (the log names a request not in flight)."""
        r = self.inflight.pop(req, None)
        if r is None:
            return f"disk request {req} completes, but it is not in flight"
        if r.op == abi.DISK_READ:
            self.reads_completed += 1
        if r.op == abi.DISK_READ and status == abi.DISK_OK:
            if data is None or len(data) != r.count * abi.DISK_SECTOR:
                return f"disk request {req}: {0 if data is None else len(data)} bytes read, expected {r.count * abi.DISK_SECTOR}"
            self.vcpu.write(r.buf, data)
        self.vcpu.write(r.status_ptr, status.to_bytes(4, "little"))
        return None

    # --- record and replay of DISK records ------------------------------------------------
    def record_completions(self, log, blocks: int, rip: int, done, reads_in_log: bool):
        """Record side, at a stop: the host's completions (id, status, data) take effect
        here, each logged as a DISK record; read data goes into the log unless the
        backup reads the shared image itself (then only its CRC32)."""
        for req, status, data in done:
            crc = zlib.crc32(data) if data is not None else 0
            log(R.Disk(blocks, rip, req, status, data if reads_in_log else None, crc))
            problem = self.complete(req, status, data)
            assert problem is None, problem

    def replay(self, ev: R.Disk, image_path: str | None):
        """Replay side: complete the request as the log says. A read logged with its CRC
        only is read from the shared image, which must still hold what the primary read.
        Returns None, or what is wrong (a divergence)."""
        r = self.inflight.get(ev.req)
        data = ev.data
        if r is not None and r.op == abi.DISK_READ and ev.status == abi.DISK_OK and data is None:
            if not image_path:
                return (f"disk request {ev.req}: the log does not carry the data read (recorded with "
                        "--disk-reads shared); give the disk image with --disk")
            with open(image_path, "rb") as f:
                f.seek(r.lba * abi.DISK_SECTOR)
                data = f.read(r.count * abi.DISK_SECTOR)
            data += bytes(r.count * abi.DISK_SECTOR - len(data))
            if zlib.crc32(data) != ev.crc:
                return (f"disk request {ev.req}: the shared image at sector {r.lba} no longer holds what the "
                        f"primary read (CRC32 {zlib.crc32(data):#010x}, log {ev.crc:#010x})")
        return self.complete(ev.req, ev.status, data)

    def pending_in_order(self):
        return [self.inflight[k] for k in sorted(self.inflight)]

    # --- snapshots ------------------------------------------------------------------------
    def state(self):
        return [self.submitted, self.rejected, self.reads_completed,
                [[r.id, r.op, r.lba, r.count, r.buf, r.status_ptr, r.data] for r in self.pending_in_order()]]

    def set_state(self, st):
        self.submitted, self.rejected, self.reads_completed, reqs = st
        self.inflight = {r[0]: Request(*r) for r in reqs}


def parse_faults(spec: str | None):
    """FTVM_DISK_FAULTS, a test hook: 'write:3=eio,read:2=eio,write:5-=enospc' makes the
    3rd write fail with EIO, the 2nd read too, and every write from the 5th on report
    a full disk. Counted per node from 1."""
    rules = []
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            what, result = item.split("=")
            op, nums = what.split(":")
            open_ended = nums.endswith("-")
            first = int(nums.rstrip("-"))
            code = {"eio": abi.DISK_EIO, "enospc": abi.DISK_ENOSPC}[result.lower()]
            op = {"read": abi.DISK_READ, "write": abi.DISK_WRITE}[op.lower()]
        except (ValueError, KeyError):
            raise DiskError(f"FTVM_DISK_FAULTS item {item!r}: expected read|write:N[-]=eio|enospc") from None
        rules.append((op, first, open_ended, code))
    return rules


class DiskWorker:
    """Host side (primary only): does the I/O of accepted requests on a thread, in
    submission order. A write waits until the output gate lets it go (``release``).
    Completions go to ``on_done(id, status, data_or_None)``."""

    def __init__(self, path: str, on_done, faults=None):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR)
        except OSError as e:
            raise DiskError(f"cannot open disk image {path}: {e.strerror}") from None
        self.on_done = on_done
        self.guard = None        # callable: may this node still write? (a stale primary must not)
        self.before_write = None  # callable(reads done so far): wait until a write may not spoil a read
        self.reads_done = 0
        self.faults = parse_faults(os.environ.get("FTVM_DISK_FAULTS")) if faults is None else faults
        self.counts = {abi.DISK_READ: 0, abi.DISK_WRITE: 0}
        self.cond = threading.Condition()
        self.queue = collections.deque()
        self.released = set()
        self.closed = False
        self.busy = False
        self.stats = {"reads": 0, "writes": 0, "read_bytes": 0, "write_bytes": 0, "errors": 0}
        threading.Thread(target=self._run, name="ftvm-disk", daemon=True).start()

    def issue(self, r: Request):
        with self.cond:
            self.queue.append(r)
            self.cond.notify_all()

    def release(self, req_id: int):
        with self.cond:
            self.released.add(req_id)
            self.cond.notify_all()

    def idle(self) -> bool:
        with self.cond:
            return not self.queue and not self.busy

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _run(self):
        while True:
            with self.cond:
                while not self.closed and not (self.queue and (self.queue[0].op == abi.DISK_READ
                                                               or self.queue[0].id in self.released)):
                    self.cond.wait(0.5)
                if self.closed:
                    try:
                        os.close(self.fd)
                    except OSError:
                        pass
                    return
                r = self.queue.popleft()
                self.released.discard(r.id)
                self.busy = True
            if r.op == abi.DISK_WRITE and self.before_write is not None:
                self.before_write(self.reads_done)
            if r.op == abi.DISK_WRITE and self.guard is not None and not self.guard():
                # This node is no longer the primary it was when the write was
                # released: drop it (the new primary issues it again if it was due).
                with self.cond:
                    self.busy = False
                continue
            status, data = self._do(r)
            with self.cond:
                self.busy = False
                if r.op == abi.DISK_READ:
                    self.reads_done += 1
            self.on_done(r.id, status, data)

    def _injected(self, op):
        self.counts[op] += 1
        n = self.counts[op]
        for fop, first, open_ended, code in self.faults:
            if fop == op and (n == first or (open_ended and n >= first)):
                return code
        return None

    def _do(self, r: Request):
        off, n = r.lba * abi.DISK_SECTOR, r.count * abi.DISK_SECTOR
        code = self._injected(r.op)
        if code is not None:
            self.stats["errors"] += 1
            return code, None
        try:
            if r.op == abi.DISK_READ:
                data = os.pread(self.fd, n, off)
                if len(data) < n:          # a sparse image shorter than its size: zeros
                    data += bytes(n - len(data))
                self.stats["reads"] += 1
                self.stats["read_bytes"] += n
                return abi.DISK_OK, data
            view, pos = memoryview(r.data), 0
            while pos < n:
                pos += os.pwrite(self.fd, view[pos:], off + pos)
            os.fdatasync(self.fd)
            self.stats["writes"] += 1
            self.stats["write_bytes"] += n
            return abi.DISK_OK, None
        except OSError as e:
            self.stats["errors"] += 1
            return (abi.DISK_ENOSPC if e.errno in (errno.ENOSPC, errno.EDQUOT) else abi.DISK_EIO), None


def read_crc(data: bytes | None) -> int:
    return zlib.crc32(data) if data is not None else 0
