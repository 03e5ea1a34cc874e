"""Replaying: run the guest again from its log alone and check that it does exactly
what the recording did.

The log's records are read in order. RDTSC and random-number results are queued for
the C and Python hooks, which check each is consumed at its logged point. Every other
record names an execution point (blocks, pc): the CPU runs to that block count, the
PC is checked, and the record is applied (input bytes, an interrupt, a digest to
compare, the end). Any mismatch stops the replay with a Divergence that names the
point and what differs.

The records come from a file (``FileSource``) or, on a backup, from the logging
channel as they arrive (``StreamSource``). A backup replays as far as the log it has
vouches for and waits for more; when told to take over, it replays everything it has
and hands the machine over (``ReplayResult.handover``).
"""
from __future__ import annotations

import collections
import dataclasses
import threading

from logging_channel import records as R
from logging_channel.frames import Frames
from logging_channel.logfile import LogReader, scan

from . import abi, elf_loader
from .errors import Divergence, EXIT_INTERRUPTED, LogDamaged, LogTruncated
from .machine import Config, Machine, compare_digests
from .linux import inhook
from .linux.kernel import _ret_text
from .linux.sysnames import NAMES
from .record import Chaos, inhook_enabled
from .uc import SYNC_DIVERGED, ffi, lib

LINUX_KINDS = (R.SYSCALL, R.INTENT, R.WAIT, R.SIGNAL, R.SCHED)   # the Linux personality's point records

CUT, HORIZON = -1, -2


@dataclasses.dataclass
class _Stop:
    """A pseudo-event: run to ``blocks`` and then: CUT (the log ends there: stop, with
    ``error`` or a handover) or HORIZON (the log vouches for no more yet: wait)."""
    kind: int
    blocks: int
    error: Exception | None = None


@dataclasses.dataclass
class ReplayResult:
    status: int            # what the CLI exits with
    end: R.End | None      # the log's end record, when replay reached it
    message: str
    stopped_at: dict | None = None   # registers, when --to stopped early
    handover: bool = False           # a backup's stream ended: the machine is ready to go live


class FileSource:
    """Records from a log file; a damaged log is refused before anything runs."""

    streaming = False

    def __init__(self, path, start: int = 0):
        self.path = str(path)
        scan(path)
        self.reader = LogReader(path)
        self._it = iter(self.reader)
        self.header = None
        if start:
            # Continue a run restored from a snapshot: skip what the snapshot holds.
            for _ in range(start):
                item = next(self._it, None)
                if item is None:
                    raise LogTruncated(self.path, start, self.reader.bytes_read, "the log ends before the snapshot's position")
                if item[2].kind == R.HEADER:
                    self.header = item[2]

    def next(self):
        """The next record, or None at the end of the file (LogTruncated if cut)."""
        try:
            return next(self._it)[2]
        except StopIteration:
            return None

    def end_error(self):
        return LogTruncated(self.path, self.reader.records_read, self.reader.bytes_read,
                            "the log has no end record (was the recorder killed?)")

    @property
    def records_read(self):
        return self.reader.records_read


class StreamSource:
    """Records pushed by the logging channel's receiver thread, in order."""

    streaming = True
    path = "<logging channel>"

    def __init__(self):
        self._q = collections.deque()
        self._mine = collections.deque()    # taken from _q in one go: the replaying thread's alone
        self._cond = threading.Condition()
        self._run = None                    # a run of checked frames being decoded, and where
        self._at = 0
        # The replayer's (blob, offset) -> bool: takes a SYSCALL frame without its being
        # decoded here (a clock read queued for C), or declines it.
        self.take_frame = None
        self.ended = False
        self.records_read = 0

    def push(self, recs):
        """Records, frames (bytes) or runs of checked frames (logging_channel.frames)."""
        with self._cond:
            self._q.extend(recs)
            self._cond.notify_all()

    def end(self):
        """No more records will come (the primary is gone, or told us to stop)."""
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def poll(self, timeout):
        """A record, or None if none came within ``timeout`` (or the stream ended).
        Items pushed as frames are decoded here, on the replaying thread."""
        while self._run is None:
            if not self._mine:
                # Everything pushed so far at once: one lock round per batch, not per
                # record (the receiver thread pushes while this one replays).
                with self._cond:
                    if not self._q and not self.ended:
                        self._cond.wait(timeout)
                    if not self._q:
                        return None
                    self._mine, self._q = self._q, self._mine
            item = self._mine.popleft()
            if type(item) is Frames:
                if item:
                    self._run, self._at = item, item.lo
                continue
            self.records_read += 1
            if isinstance(item, (bytes, bytearray)):
                try:
                    item, _ = R.decode(item)
                except R.FrameError as e:
                    raise LogDamaged(self.path, self.records_read - 1, 0, e.reason) from None
            return item
        run, at = self._run, self._at
        blob, offs, take = run.blob, run.offs, self.take_frame
        while True:
            off = offs[at]
            at += 1
            self.records_read += 1
            if at >= run.hi:
                self._run = None
                if take is not None and blob[off + 1] == R.SYSCALL and take(blob, off):
                    return self.poll(timeout)
                break
            if take is None or blob[off + 1] != R.SYSCALL or not take(blob, off):
                self._at = at
                break
        try:
            return R.decode_checked(blob, off)
        except R.FrameError as e:
            raise LogDamaged(self.path, self.records_read - 1, 0, e.reason) from None

    def next(self):
        return self.poll(0)


class Replayer:
    def __init__(self, source, console, to_blocks=None, to_event=None, chaos: Chaos | None = None,
                 header: R.Header | None = None, on_progress=None, should_stop=None, machine=None,
                 to_syscall=None):
        if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
            source = FileSource(source)
        self.source = source
        self.path = source.path
        self.console = console
        self.to_blocks = to_blocks
        self.to_event = to_event
        self.to_syscall = to_syscall      # stop where the Nth system call (from 0) is pending
        self.chaos = chaos
        self.on_progress = on_progress or (lambda replayer: None)
        self.should_stop = should_stop or (lambda: False)   # a backup told to stop
        self.events = 0
        self.records = 1
        self._safe_blocks = 0      # the furthest point the log vouches for so far
        self._ev = None            # the next point event (the syscall hook may move on, inhook.py)
        self._inhook = None
        self._frame_blob = self._frame_ptr = None    # the stream's frames C reads clock reads from
        if header is None and getattr(source, "header", None) is not None:
            header = source.header
        if header is None:
            header = source.next()
            if header is None:
                raise LogTruncated(self.path, 0, len(R.FILE_MAGIC), "the log has no header record")
        if header.kind != R.HEADER:
            raise LogDamaged(self.path, 0, len(R.FILE_MAGIC), "the first record is not a header")
        if header.abi not in abi.ABI_READABLE and header.config.get("personality") != "linux":
            raise LogDamaged(self.path, 0, len(R.FILE_MAGIC),
                             f"guest ABI version {header.abi}, this ftvm runs versions "
                             f"{abi.ABI_READABLE[0]}-{abi.ABI_VERSION}")
        self.header = header
        self.config = Config.from_dict(header.config)
        if header.config.get("personality") == "linux":
            from .guest import LinuxGuest
            self.m = machine if machine is not None else LinuxGuest.from_header(header).machine(
                self.config, "replay", console)
            self._init_rest()
            return
        image = elf_loader.parse(header.elf, f"{self.path} (embedded {header.elf_name})",
                                 mem_limit=max(self.config.mem_limit, abi.MEM_LIMIT_DEFAULT),
                                 stack_size=self.config.stack_size)
        if image.sha256 != header.elf_sha256:
            raise LogDamaged(self.path, 0, len(R.FILE_MAGIC), "the embedded guest ELF does not match its SHA-256")
        self.m = machine if machine is not None else Machine(image, self.config, "replay", console)
        self._init_rest()

    def _init_rest(self):
        self.kernel = getattr(self.m, "kernel", None)
        if self.kernel is not None:
            self.kernel.mode = "replay"
        self._safe_blocks = self.m.blocks
        self.last_golive = None
        self.disk_path = None      # the shared disk image, for reads not carried in the log
        self.last_disk_read_record = 0
        self._side_table = self._sides()

    # --- reading --------------------------------------------------------------------
    def _take(self, rec):
        """Queue a value record; returns the record if it is a point event."""
        m = self.m
        self.records += 1
        if rec.kind == R.TSC:
            m.vtime.feed(rec)
            self._safe_blocks = max(self._safe_blocks, rec.entries[-3])
            return None
        if rec.kind == R.RNG:
            m.rng.feed(rec)    # read mid-block: says nothing about how far is safe
            return None
        if rec.kind == R.HEADER:
            raise LogDamaged(self.path, self.records - 1, 0, "a second header record")
        self._safe_blocks = max(self._safe_blocks, rec.blocks)
        if rec.kind == R.SYSCALL and self._inhook is not None and self._inhook.queue(rec):
            return None     # a clock read: C applies it when the guest makes it
        return rec

    def _next_event(self):
        """The next record that happens at an execution point, queueing RDTSC and
        random-number results met on the way; or a _Stop."""
        src, m = self.source, self.m
        try:
            while True:
                rec = src.next()
                if rec is not None:
                    ev = self._take(rec)
                    if ev is not None:
                        return ev
                    continue
                if not src.streaming:
                    return _Stop(CUT, self._safe_blocks, src.end_error())
                if src.ended:
                    return _Stop(CUT, self._safe_blocks)
                if self._safe_blocks > m.blocks:
                    return _Stop(HORIZON, self._safe_blocks)
                self.on_progress(self)
                rec = src.poll(0.02)
                if m.cpu.signal or self.should_stop():
                    return _Stop(CUT, m.blocks, None)
                if rec is not None:
                    ev = self._take(rec)
                    if ev is not None:
                        return ev
        except LogTruncated as e:
            return _Stop(CUT, self._safe_blocks, e)

    # --- the loop -------------------------------------------------------------------
    def run(self) -> ReplayResult:
        lib.ftvm_install_signals(self.m.cpu)
        self._inhook = None
        if (self.kernel is not None and self.to_blocks is None and self.to_event is None and self.to_syscall is None
                and self.chaos is None and inhook_enabled()):
            self._inhook = inhook.InHook(self.m.cpu, self._hook_call)
            self._inhook.install()
            self._inhook.replay_clocks(self.kernel.realtime_base_ns)
            self._inhook.replay_sockets(self._hook_sock)
            if hasattr(self.source, "take_frame"):
                self.source.take_frame = self._take_clock_frame
        try:
            return self._loop()
        finally:
            if self._inhook is not None:
                if hasattr(self.source, "take_frame"):
                    self.source.take_frame = None
                self._inhook.remove()
            lib.ftvm_restore_signals()
            self.m.console.flush()

    def _take_clock_frame(self, blob, off):
        """A SYSCALL frame from the stream: if it is a clock read C applies, C queues it
        straight from the frame (fastpath.c), with no record decoded in Python (one
        clock read in every two records of a busy server); Python decodes it only if C
        cannot apply it after all (``InHook.pop``). False: decode it as usual."""
        if blob is not self._frame_blob:
            self._frame_blob, self._frame_ptr = blob, ffi.from_buffer(blob)
        blocks = lib.ftvm_tq_push_frame(self.m.cpu, self._frame_ptr, off)
        if blocks < 0:
            return False
        self.records += 1
        if blocks > self._safe_blocks:
            self._safe_blocks = blocks
        self._inhook.queued.append((blob, off))
        return True

    def _head_is_the_wait(self, k):
        """The queued record is the call the running thread waits in, made again here
        (a read of standard input, or of a blocking socket, that waited; its WAIT record
        came before): the record completes it, as it would as the next event."""
        head = self._inhook.head()
        return head.blocks == self.m.blocks and head.nr == k.pending[0] and head.pc == k.pending[2]

    def _hook_sock(self):
        """Inside the syscall hook: the guest reads or writes a socket just as the record
        at the head of C's queue says (fastpath.c checked the point and arguments). Move
        the bytes and check the result; False (nothing changed) leaves the record to the
        general path."""
        k, cpu = self.kernel, self.m.cpu
        r = cpu.sys_regs
        ret = inhook.socket_io(k, r[0], (r[1], r[2], r[3]), cpu.sys_pc)
        if ret is None:
            return False
        k.calls -= 1        # counted with the clock reads C applied (_clocks_applied)
        e = self._inhook.entry()
        if ret != e[5]:
            raise Divergence(f"block {self.m.blocks} pc {cpu.sys_pc + 2:#x}",
                             f"system call {NAMES.get(r[0], r[0])} returned {ret} in replay, "
                             f"{_ret_text(e[5])} in the recording")
        return True

    def _hook_call(self):
        """Inside the syscall hook (linux/inhook.py): if the log's next event is this
        call's SYSCALL record, apply it there, as the loop would at the stop, and arm
        the stop for the event after it. Returns STOP, DONE or DONE_STOP."""
        ev, m, k = self._ev, self.m, self.kernel
        cpu = m.cpu
        if self._clocks_applied() and self._inhook.queued:
            # A clock read C did not apply, or another call where the log has one: the
            # record decides (run_replay names the difference).
            k.take_hook()
            k.hook_rip = k.pending[2] + 2
            try:
                self._apply(self._inhook.pop())
            finally:
                k.hook_rip = None
            return inhook.DONE
        r = cpu.sys_regs
        if (ev is None or ev.kind != R.SYSCALL or ev.blocks != m.blocks or ev.nr != r[0]
                or not inhook.eligible(k, r[0], r[1])):
            return inhook.STOP
        args = (r[1], r[2], r[3])
        ret = None
        if ev.pc == cpu.sys_pc and not ev.values and len(ev.args) == 3 and args == tuple(ev.args):
            ret = inhook.socket_io(k, ev.nr, args, ev.pc)
        if ret is not None:
            cpu.sys_pending = 0
            self.events += 1
            if ret != ev.ret:
                raise Divergence(f"block {m.blocks} pc {ev.pc + 2:#x}",
                                 f"system call {NAMES.get(ev.nr, ev.nr)} returned {ret} in replay, "
                                 f"{_ret_text(ev.ret)} in the recording")
        else:
            k.take_hook()
            k.hook_rip = k.pending[2] + 2
            try:
                self._apply(ev)
            finally:
                k.hook_rip = None
        self._ev = nxt = self._next_event_now()
        if nxt is None or nxt.blocks <= m.blocks:
            return inhook.DONE_STOP      # the loop takes it from here
        lib.ftvm_arm(cpu, nxt.blocks)
        return inhook.DONE

    def _clocks_applied(self):
        """Count the clock reads C applied from the queue; True if clock reads are
        queued for C at all (in-hook replay)."""
        ih = self._inhook
        if ih is None:
            return False
        n = ih.sync()
        if n:
            self.kernel.calls += n
            self.events += n
        return True

    def _next_event_now(self):
        """The next point event if the source has it at hand (value records met on the
        way are queued); None if it would have to wait or the log ends here."""
        try:
            while True:
                rec = self.source.next()
                if rec is None:
                    return None
                ev = self._take(rec)
                if ev is not None:
                    return ev
        except LogTruncated as e:
            return _Stop(CUT, self._safe_blocks, e)

    def _point(self):
        return self.m.point()

    def _loop(self):
        m, cpu = self.m, self.m.cpu
        ev = self._ev = self._next_event()
        while True:
            if self._clocks_applied() and self._inhook.queued:
                k = self.kernel
                if k.pending is not None and (k.threads.cur.blocked is None or self._head_is_the_wait(k)):
                    self._apply(self._inhook.pop())     # a queued clock read, at a stop
                    continue
                if m.blocks >= ev.blocks:
                    head = self._inhook.head()
                    raise Divergence(self._point(), f"the log has system call {k.describe_record(head)} at block "
                                                    f"{head.blocks} pc {head.pc:#x}, but the guest did not make it")
            if self.to_event is not None and self.events >= self.to_event and m.blocks >= ev.blocks:
                return self._stop_here(f"stopped before event #{self.events}")
            if self.to_blocks is not None and m.blocks >= self.to_blocks:
                return self._stop_here(f"stopped at block {m.blocks}")
            if m.blocks == ev.blocks:
                if ev.kind == CUT:
                    m.console.flush()
                    if cpu.signal:
                        return ReplayResult(EXIT_INTERRUPTED, None, f"replay stopped by signal {cpu.signal} at {self._point()}")
                    if ev.error is None:
                        return ReplayResult(0, None, f"the log stream ended at {self._point()}", handover=True)
                    e = ev.error
                    raise LogTruncated(e.path, e.index, e.offset,
                                       f"{e.reason}; replayed everything before it, up to block {m.blocks}")
                if ev.kind == HORIZON:
                    ev = self._ev = self._next_event()
                    continue
                result = self._apply(ev)
                if result is not None:
                    return result
                ev = self._ev = self._next_event()
                continue
            if m.blocks > ev.blocks:
                raise Divergence(self._point(), f"ran past the log's next {R.KIND_NAMES.get(ev.kind, 'point')} at block {ev.blocks}")
            target = ev.blocks
            if self.to_blocks is not None:
                target = min(target, self.to_blocks)
            if self.chaos:
                target = min(target, self.chaos.next_stop(m.blocks))
            if self.kernel is not None and self.kernel.pending is not None and self.kernel.threads.cur.blocked is None:
                raise Divergence(self._point(), f"the guest called {self.kernel.describe_pending()} here, but the "
                                                f"log's next event is {R.KIND_NAMES.get(ev.kind, 'the end of the log')} "
                                                f"at block {ev.blocks}")
            lib.ftvm_arm(cpu, target)
            fault = m.vcpu.run()
            if self._inhook is not None:
                self._clocks_applied()
                self._inhook.raise_error()
                if self._ev is None:
                    self._ev = self._next_event()
                ev = self._ev
            if cpu.sync_req & SYNC_DIVERGED:
                raise m.vtime.divergence(self._point())
            if self.kernel is not None and fault is None:
                self.kernel.take_hook()
                if (self.to_syscall is not None and self.kernel.pending is not None
                        and self.kernel.calls >= self.to_syscall):
                    return self._stop_here(f"stopped before system call #{self.kernel.calls}")
                status = self.kernel.exit_pending()
                if status is not None:
                    m.exit_status = status
            if cpu.signal:
                m.console.flush()
                return ReplayResult(EXIT_INTERRUPTED, None, f"replay stopped by signal {cpu.signal} at {self._point()}")
            if fault is not None and self.kernel is not None and ev.kind == R.SIGNAL and ev.blocks == m.blocks:
                continue        # the recording sent this fault to the guest's handler: the record applies it
            if fault is not None:
                return self._check_end(ev, "fault", fault.status, f"guest fault: {fault.describe()}")
            if m.exit_status is not None:
                return self._check_end(ev, "exit", m.exit_status, f"guest exited with status {m.exit_status}")
            halted = m.vcpu.halted
            cpu.sync_req = 0
            cpu.async_req = 0
            if self.should_stop():
                m.console.flush()
                return ReplayResult(0, None, f"replay stopped on request at {self._point()}")
            if m.iret_pending:
                m.finish_iret()
            if m.vtime.cpu.tsc_more and cpu.tsc_len - cpu.tsc_pos < 1024:
                m.vtime.refill()
            if self.chaos:
                self.chaos.at_stop(m)
            if halted and m.blocks < ev.blocks:
                raise Divergence(self._point(), f"the guest halted, but the log's next event "
                                                f"({R.KIND_NAMES.get(ev.kind, 'end of log')}) is at block {ev.blocks}")

    def _stop_here(self, why):
        self.m.console.flush()
        return ReplayResult(0, None, f"{why}: {self._point()}", stopped_at=self.m.vcpu.regs())

    def _check_pc(self, ev):
        rip = self.m.vcpu.reg("rip")
        if rip != ev.pc:
            raise Divergence(self._point(), f"the log's {R.KIND_NAMES[ev.kind]} record is at pc {ev.pc:#x}")

    # --- applying point records: each source's replay side ---------------------------------------
    def _sides(self):
        """The replay side of every point record, by kind: (apply, counts as an event,
        happens at the logged pc). An apply returns None, or what does not match (a
        divergence at this point). Each lives with its source (hypervisor/sources/,
        and the Linux personality's families); the record sides sit next to them."""
        sides = {   # the machine's devices are looked up at each record: a snapshot restore replaces them
            R.INPUT: (lambda ev: self.m.input.replay(ev), True, True),
            R.IRQ: (lambda ev: self.m.irq.replay(ev), True, True),
            R.NET: (lambda ev: self.m.net.replay(ev), True, True),
            R.DISK: (self._disk_done, True, True),
            R.DIGEST: (self._digest, False, True),
            R.GOLIVE: (self._golive, False, True),
            # marks, no source's: where the primary stood (output covered, a view began,
            # a state transfer was taken); replay only checks it stands there too
            R.PROGRESS: (lambda ev: None, False, True),
            R.VIEW: (lambda ev: None, False, True),
            R.TRANSFER: (lambda ev: None, False, True),
        }
        if self.kernel is not None:
            from .linux.replay_sides import sides as linux_sides
            sides.update(linux_sides(self.kernel, self._check_pc))
        return sides

    def _apply(self, ev):
        if ev.kind == R.END:
            return self._end_record(ev)
        side = self._side_table.get(ev.kind)
        if side is None:
            if ev.kind in LINUX_KINDS:
                raise Divergence(self._point(), f"a {R.KIND_NAMES.get(ev.kind)} record in the log of an "
                                                "ftvm-ABI guest")
            raise Divergence(self._point(), f"a record of kind {ev.kind} that no source replays")
        apply, counts, at_pc = side
        if counts:
            self.events += 1
        if at_pc:
            self._check_pc(ev)
        problem = apply(ev)
        if problem:
            raise Divergence(self._point(), problem)
        return None

    def _end_record(self, ev):
        m = self.m
        if ev.reason == "exit" and m.exit_status is not None:
            return self._check_end(ev, "exit", m.exit_status, f"guest killed by signal {m.exit_status - 128}")
        if ev.reason in ("exit", "fault"):
            raise Divergence(self._point(), f"the log says the guest ended here ({ev.detail}), but replay did not")
        self._check_pc(ev)
        return self._finish(ev, ev.status, ev.detail)

    def _disk_done(self, ev):
        problem = self.m.disk.replay(ev, self.disk_path)
        self.last_disk_read_record = self.records
        return problem

    def _digest(self, ev):
        diffs = compare_digests(ev, self.m.digest())
        return "state digest differs: " + "; ".join(diffs) if diffs else None

    def _golive(self, ev):
        self.last_golive = ev

    def _check_end(self, ev, reason, status, detail):
        m = self.m
        if ev.kind != R.END or ev.reason != reason:
            what = R.KIND_NAMES.get(ev.kind, "the end of the log")
            raise Divergence(self._point(), f"{detail}, but the log's next event is {what} at block {ev.blocks}")
        if (ev.blocks, ev.pc) != (m.blocks, m.vcpu.reg("rip")):
            raise Divergence(self._point(), f"{detail}, but the log has it at block {ev.blocks} pc {ev.pc:#x}")
        if ev.status != status:
            raise Divergence(self._point(), f"exit status {status}, the log has {ev.status}")
        return self._finish(ev, status, detail)

    def _finish(self, ev, status, detail):
        m = self.m
        diffs = compare_digests(ev.digest, m.digest())
        if diffs:
            raise Divergence(self._point(), "final state differs: " + "; ".join(diffs))
        left_tsc, left_rng = m.vtime.pending(), m.rng.pending()
        if left_tsc or left_rng:
            raise Divergence(self._point(), f"the guest ended with {left_tsc} RDTSC and {left_rng} random results of the log unused")
        if not self.source.streaming:
            try:
                extra = self.source.next()
            except (LogDamaged, LogTruncated):
                extra = True
            if extra is not None:
                raise LogDamaged(self.path, self.source.records_read, 0, "data after the end record")
        m.console.flush()
        if ev.reason == "interrupted":
            return ReplayResult(ev.status, ev, f"replay complete: the recording was interrupted here ({detail})")
        return ReplayResult(ev.status, ev, f"replay complete: {detail}")
