"""The Linux personality's kernel: it runs one system call at a time, at a stop.

A `syscall` instruction ends its translated block; the C hook notes it and asks for a
stop at the end of that block, so every system call happens at an execution point
(blocks run, pc of the next instruction), in recording and in replay alike. There
``run_pending`` calls the handler from the table (``table.py``).

Handlers are written once for both sides. Each interaction with the host goes through
one of three doors, and that is all that differs between record and replay:
- ``host(fn)``: an input. Record calls ``fn`` and logs its result in the call's SYSCALL
  record; replay takes the result from the record instead.
- ``output(fn)``: a change to host state that outlives the guest (the data directory).
  Record waits for the Output Rule (the backup has the log up to this call), then
  calls ``fn`` and logs the result; replay and a backup take it from the record.
- ``check(value)``: something that must be the same on every host (the identity of a
  root file). Record logs it; replay compares and stops on a mismatch.
Everything else a handler does (memory, file positions, /tmp, the fd table) is
computed from the guest's own state, so replay does it again and gets the same result.
Replay then checks the call's number, arguments and result against the record.
"""
from __future__ import annotations

import errno
import sys

from logging_channel import records as R

from ..errors import Divergence, FtvmError
from ..uc import lib
from .fs import GuestErr
from .sysnames import NAMES
from .table import HANDLERS, NARGS, describe_call

SYS_EXIT, SYS_EXIT_GROUP = 60, 231


class Blocked(Exception):
    """The call cannot complete yet (record only): it waits for stdin, time or the
    Output Rule. ``until_ns``: a guest-time deadline, or None."""

    def __init__(self, what, until_ns=None, forever=False, ready=None):
        super().__init__(what)
        self.what, self.until_ns, self.forever, self.ready = what, until_ns, forever, ready


class ExitProcess(Exception):
    def __init__(self, status):
        super().__init__(status)
        self.status = status


class Kernel:
    def __init__(self, machine, mode):
        self.m = machine
        self.mode = mode
        self.rec_values = None         # record: host results of the call in progress
        self.replay_values = None      # replay: host results from its record
        self.calls = 0                 # system calls completed in the run (the call index)
        self.warned = set()            # unsupported calls already named on stderr
        self.output_gate = None        # record: callable() that waits for the Output Rule
        self.on_note = lambda msg: sys.stderr.write(f"ftvm: {msg}\n")
        self.call_strings = None       # record: guest strings (paths) the call read, by address
        self.redo_values = []          # going live: values to reuse (see redo)
        self.redo_now = False
        self.yield_wanted = False      # sched_yield: end the running thread's slice
        self.restored_regs = False     # rt_sigreturn set every register itself
        self.signals_pending = []      # signals the guest sent itself, delivered at this stop
        self.itimer = [0, 0]           # ITIMER_REAL: deadline (guest ns, 0: off), interval
        self.hook_rip = None           # running inside the syscall hook (inhook.py): the rip a stop would have

    # The running thread's call in progress (threads.py keeps one per thread).
    @property
    def pending(self):
        return self.threads.cur.pending

    @pending.setter
    def pending(self, value):
        self.threads.cur.pending = value

    @property
    def intent(self):
        return self.threads.cur.intent

    @intent.setter
    def intent(self, value):
        self.threads.cur.intent = value

    # --- the three doors ------------------------------------------------------------------
    def host(self, fn):
        if self.mode == "replay":
            return self._take_value("input")
        v = self.redo_values.pop(0) if self.redo_values else fn()
        self.rec_values.append(v)
        return v

    def output(self, fn):
        """``fn`` changes host state. When a call is done again after a failover (its
        Intent was logged, its result was not), the values it got before are reused and
        ``redo_now`` is true for the first change: it must accept "already done"."""
        if self.mode == "replay":
            return self._take_value("output")
        if self.redo_values:
            v = self.redo_values.pop(0)
            self.rec_values.append(v)
            return v
        if self.output_gate is not None:
            self.output_gate(self.rec_values)
        try:
            v = fn()
        finally:
            self.redo_now = False
        self.rec_values.append(v)
        return v

    def redo(self, values):
        """Going live with a call pending whose change may already have been made."""
        self.redo_values = list(values)
        self.redo_now = True

    def check(self, value, what):
        if self.mode == "replay":
            logged = self._take_value("check")
            if logged != value:
                from .fs import RootMismatch
                raise RootMismatch(f"{what}: the recording saw {_describe(logged)}, this host has {_describe(value)}")
            return value
        self.rec_values.append(value)
        return value

    def _take_value(self, door):
        if not self.replay_values:
            raise Divergence(self.point(), f"system call {self.pending_name()} asked the host for more "
                                             f"({door}) than the log recorded")
        return self.replay_values.pop(0)

    @property
    def replaying(self):
        return self.mode == "replay"

    # --- guest memory -------------------------------------------------------------------
    def read_mem(self, addr, n):
        if n == 0:
            return b""
        try:
            return bytes(self.m.vcpu.uc.mem_read(addr, n))
        except Exception:
            raise GuestErr(errno.EFAULT) from None

    def write_mem(self, addr, data):
        if not data:
            return
        try:
            self.m.vcpu.uc.mem_write(addr, bytes(data))
        except Exception:
            raise GuestErr(errno.EFAULT) from None

    def check_buffer(self, addr, n):
        if n and not self.mem.is_mapped(addr, addr + min(n, 1 << 30)):
            # Linux writes what fits; a buffer that is not there at all is EFAULT.
            if not self.mem.is_mapped(addr, addr + 1):
                raise GuestErr(errno.EFAULT)

    def read_str(self, addr, limit=4096):
        """A NUL-terminated guest string (a path), read page by page."""
        if addr == 0:
            raise GuestErr(errno.EFAULT)
        out = bytearray()
        start = addr
        while len(out) < limit:
            chunk = 4096 - (addr & 0xFFF)
            data = self.read_mem(addr, chunk)
            z = data.find(b"\0")
            if z >= 0:
                out += data[:z]
                text = out.decode("utf-8", "surrogateescape")
                if self.call_strings is not None and len(self.call_strings) < 4:
                    self.call_strings[start] = text
                return text
            out += data
            addr += chunk
        raise GuestErr(errno.ENAMETOOLONG)

    # --- guest time -------------------------------------------------------------------------
    def vtime_read(self):
        """Record side: guest time now (consumes a value, never backwards)."""
        return int(lib.ftvm_vtime_next(self.m.cpu))

    def vtime_seen(self, ns):
        c = self.m.cpu
        if ns > c.tsc_last:
            c.tsc_last = ns

    def vtime_state(self):
        """The last guest time handed out: the same in record and replay."""
        return int(self.m.cpu.tsc_last)

    def now_ns_state(self):
        return self.vtime_state() + self.realtime_base_ns

    # --- misc ------------------------------------------------------------------------------
    def note_once(self, key, msg):
        if key not in self.warned:
            self.warned.add(key)
            if self.mode == "record":
                self.on_note(msg)

    def write_back_shared(self, addr, size):
        """MAP_SHARED mappings of data-directory files: their pages go back to the file
        (an output) at msync and munmap."""
        for entry in list(self.shared_maps):
            start, length, f, off = entry
            a, b = max(start, addr), min(start + length, addr + size)
            if a >= b:
                continue
            data = self.mem.read(a, b - a)
            f.pwrite(self, data, off + (a - start))
            if addr <= start and start + length <= addr + size:
                self.shared_maps.remove(entry)

    # --- the pending call -------------------------------------------------------------------
    def take_hook(self):
        """After a stop: if the C hook saw a syscall, read it from the registers."""
        cpu = self.m.cpu
        if not cpu.sys_pending:
            return
        cpu.sys_pending = 0
        r = cpu.sys_regs                        # read by the C hook
        self.pending = (r[0], (r[1], r[2], r[3], r[4], r[5], r[6]), cpu.sys_pc)

    def pending_name(self):
        if self.pending is None:
            return "(none)"
        return NAMES.get(self.pending[0], f"syscall {self.pending[0]}")

    def describe_pending(self):
        from .table import describe_call
        nr, args, _ = self.pending
        return describe_call(nr, args, None)

    @staticmethod
    def describe_record(rec):
        return describe_call(rec.nr, rec.args, rec.ret)

    def exit_pending(self):
        """exit_group, or the exit of the last thread, ends the process at once (no
        SYSCALL record: the END record says it). Returns the exit status, or None."""
        if self.pending is None or self.pending[0] not in (SYS_EXIT, SYS_EXIT_GROUP):
            return None
        if self.pending[0] == SYS_EXIT and len(self.threads.all) > 1:
            return None
        status = self.pending[1][0] & 0xFF
        self.pending = None
        return status

    def run_record(self):
        """Record side: run the running thread's pending call. Returns (record,
        waits): a SYSCALL record if it completed, or a WAIT record if it must wait
        (the thread keeps the call pending and is blocked until its wait is over)."""
        t = self.threads.cur
        nr, args, pc = self.pending
        self.rec_values = []
        self.call_strings = {}
        targs = _trim(nr, args)
        try:
            ret = self._run(nr, args)
        except Blocked as b:
            t.blocked = b
            rec = R.Wait(self.m.blocks, pc, nr, targs, self.rec_values, b.what)
            self.rec_values = self.call_strings = None
            return rec, True
        t.blocked = None
        strings = tuple((i, self.call_strings[a]) for i, a in enumerate(targs) if a in self.call_strings)
        rec = R.syscall_record(self.m.blocks, pc, nr, targs, ret & (2**64 - 1), self.rec_values, strings)
        self.rec_values = None
        self.call_strings = None
        self.redo_values, self.redo_now, self.intent = [], False, None
        self.pending = None
        self.calls += 1
        return rec, False

    def run_replay_wait(self, rec):
        """Replay side: the pending call must wait here, as it did in the recording."""
        point = self.m.point()
        self._check_call(rec, point)
        self.replay_values = list(rec.values)
        t = self.threads.cur
        try:
            ret = self._run(rec.nr, self.pending[1])
        except Blocked as b:
            t.blocked = b
            self.replay_values = None
            return
        raise Divergence(point, f"system call {NAMES.get(rec.nr, rec.nr)} returned {_ret_text(ret)} in replay, "
                                f"but in the recording it had to wait ({rec.what})")

    def _check_call(self, rec, point):
        if self.pending is None:
            raise Divergence(point, f"the log has system call {NAMES.get(rec.nr, rec.nr)} here, but the guest "
                                    "made none")
        nr, args, pc = self.pending
        if nr != rec.nr or list(_trim(nr, args)) != list(rec.args) or pc != rec.pc:
            from .table import describe_call
            raise Divergence(point, f"the guest called {describe_call(nr, args, None)} at pc {pc:#x}, "
                                    f"the log has {describe_call(rec.nr, rec.args, None)} at pc {rec.pc:#x}")

    def point(self):
        """The execution point of the call being run (inside the hook too, where rip
        is still the syscall's own address)."""
        if self.hook_rip is None:
            return self.m.point()
        return f"block {self.m.blocks} pc {self.hook_rip:#x}"

    def run_replay(self, rec):
        """Replay side: run the pending call against its SYSCALL record."""
        if self.pending is None:
            self._check_call(rec, self.point())
        nr, args, pc = self.pending
        if nr != rec.nr or pc != rec.pc or args[:len(rec.args)] != tuple(rec.args) or len(rec.args) != NARGS.get(nr, 6):
            self._check_call(rec, self.point())
        self.replay_values = list(rec.values)
        self.threads.cur.blocked = None
        point = self.point
        try:
            ret = self._run(nr, args)
        except Blocked as b:
            point = point()
            raise Divergence(point, f"system call {NAMES.get(nr, nr)} would wait ({b.what}) in replay, "
                                    "but it completed in the recording") from None
        if self.replay_values:
            raise Divergence(point(), f"system call {NAMES.get(nr, nr)} used fewer host results than the log holds")
        if ret & (2**64 - 1) != rec.ret:
            raise Divergence(point(), f"system call {NAMES.get(nr, nr)} returned {_ret_text(ret)} in replay, "
                                    f"{_ret_text(rec.ret)} in the recording")
        self.replay_values = None
        self.pending = None
        self.intent = None
        self.calls += 1

    def _run(self, nr, args):
        h = HANDLERS.get(nr)
        if h is None:
            ret = -errno.ENOSYS
            if nr not in self.warned:
                self.warned.add(nr)
                if self.mode == "record":
                    self.on_note(f"unsupported system call {NAMES.get(nr, nr)} ({nr}); "
                                 "the program gets ENOSYS")
        else:
            try:
                ret = h(self, *args[:NARGS[nr]])
            except GuestErr as e:
                ret = -e.code
            except (Blocked, FtvmError):
                raise
            except Exception as e:     # a bug in a handler: name the call, no traceback
                raise FtvmError(f"internal error in system call {describe_call(nr, args[:NARGS[nr]], None)} at "
                                f"{self.point()}: {type(e).__name__}: {e}") from e
        if self.restored_regs:
            self.restored_regs = False
            return ret
        # rax: the result; rcx and r11: as the syscall instruction leaves them.
        v = self.m.vcpu
        lib.ftvm_sys_return(v._uch, ret & (2**64 - 1), self.hook_rip or 0)
        return ret


def _trim(nr, args):
    return tuple(args[:NARGS.get(nr, 6)])


def _ret_text(ret):
    r = ret - 2**64 if ret >= 2**63 else ret
    if -4096 < r < 0:
        return f"-{errno.errorcode.get(-r, -r)}"
    return str(r)


def _describe(v):
    if v is None:
        return "no such file"
    if isinstance(v, list) and len(v) == 3:
        return f"{v[1]} bytes, sha256 {v[2][:16]}…" if v[2] else "a non-regular file"
    return repr(v)
