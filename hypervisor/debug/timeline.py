"""Time travel on a replay: go to any instruction of a recorded run, forwards or
backwards, with breakpoints and watchpoints. The gdb server (server.py) drives it.

Execution points
----------------
The log names instants by (blocks, pc) at block boundaries. A debugger also stops
between the instructions of a block, so a point here is ``Point(blocks, insns)``:
run until ``blocks`` blocks have run (the state at that boundary, after the log's
events there are applied), then ``insns`` more instructions. ``insns`` stays below the
length of the next block: one more instruction and the point is the next boundary,
``Point(blocks + 1, 0)``. Points are ordered like tuples and name the same state on
every replay. ``goto`` of the Nth event (``#N``) is the one state that is not a point:
the boundary of event N with the events before it applied and N not yet.

How instructions are executed one at a time (Unicorn's ``count``) without upsetting the
block count: stepping from the middle of a block makes Unicorn begin a new translated
block there, which the block counter would count; ``resume_mid`` tells it not to (the
block was counted when it began). A step that ends in front of a new block has had that
block counted before Unicorn's instruction counter stopped it; it is uncounted again
here. Both counters (hypervisor/counter.py: the patched engine's inline one, or the C
block hook) behave so, and the debugger uses whichever the process has: the inline one
replays a CPU-bound guest of small blocks about 1.5 times as fast.

Breakpoints are code hooks bounded to their address (no guest memory is written);
watchpoints are memory hooks over their range, present only while watchpoints exist.
Any memory hook puts every guest load and store on Unicorn's slow path (the i386 TCG
backend jumps to the helper whenever a UC_HOOK_MEM_READ or _WRITE exists, however
narrow its range): bounding the range spares the Python calls for other addresses,
not the slow path.

Going backwards
---------------
Checkpoints are machine snapshots (``snapshot.capture``: CPU, memory, devices, the
Linux personality's state) plus where the replay stands in the log. One is taken at the
start and then whenever forward execution has cost ``interval_s`` of emulation since
the last one, so going to any earlier point costs one restore and at most about
``interval_s`` of re-execution. They can reach back to the start of the recording. Each
holds a full copy of guest memory; past ``mem_max_bytes`` the checkpoint whose loss
leaves the smallest gap is dropped (the first one, at the start, is always kept), so
going back gets slower, never impossible.

Cost model (docs/debugging.md says the same for users):

- memory: one full copy of guest memory per checkpoint in MEM_CHUNK pieces, a piece
  equal to the previous checkpoint's shared; bounded by ``mem_max_bytes``.
- going to an earlier point (reverse-stepi, goto): one restore (a copy of the
  snapshot into a fresh engine) plus at most one interval of re-execution; a costly
  one leaves a temporary checkpoint where it landed.
- reverse-continue with a write or access watchpoint: comparing the watched bytes in
  the checkpoints' copies of memory with the current ones costs no execution. The
  latest checkpoint where they differ (C) lies before the last write that changed
  them, so the last hit of any hook lies between C and here: one restore of C, one
  forward run to here with the hooks collecting hits (only the latest kept), then a
  goto to that hit. Cost: the replay time from C to here, with memory hooks on (every
  guest load and store on Unicorn's slow path). Every write is a hit, a write of the
  value already there too (as x86 debug registers and rr report them; gdb ignores a
  write-watchpoint report whose value did not change and goes on), so the comparison
  only bounds the search, it never decides a hit: a value changed and changed back
  between two checkpoints is found.
- otherwise (breakpoints, read watchpoints, no checkpoint differing, or no hit after
  C because a system call made the change): the stretch between the checkpoint before
  here and here is replayed with the hooks collecting hits, then the stretch before
  that, and so on, each up to STRETCH_MAX intervals; about the replay time back to the
  hit.

For a watchpoint the stop is in front of the instruction that made the access, so
that gdb sees the value change.
"""
from __future__ import annotations

import collections
import dataclasses
import time

import capstone
from unicorn import unicorn_const as UC

from logging_channel import records as R

from .. import snapshot
from ..console import Console
from ..errors import FtvmError
from ..replay import CUT, HORIZON, Replayer, _Stop
from ..uc import SYNC_DIVERGED, lib, unicorn
from ..vcpu import Fault, _close_engine, abi_status_for
from .history import MEM_CHUNK, Checkpoint, HighWaterSink, ListSource, Point, _Cursor

STOP_NEVER = (1 << 64) - 1
SYNC_DEBUG = 8                  # a watchpoint hit: stop at the next block boundary
EVENT_KINDS = (R.SYSCALL, R.INPUT, R.IRQ, R.NET, R.DISK)   # what the replayer counts as events
CHUNK_S = 0.05                  # forward runs stop this often (interrupts, checkpoints)
STRETCH_MAX = 4                 # reverse-continue: snapshot intervals replayed per restore, at most


class BadPoint(FtvmError):
    """A point given by the user that names nothing in this log."""
    exit_status = 2


@dataclasses.dataclass(frozen=True)
class Hit:
    point: Point
    kind: str                  # "break", "watch", "rwatch", "awatch"
    addr: int


@dataclasses.dataclass
class Stop:
    """Why a run stopped: "step", "target", "break", "watch"/"rwatch"/"awatch",
    "interrupt", "begin" (no history before), "exit", "fault", "end" (log ends)."""
    reason: str
    addr: int | None = None
    status: int | None = None
    message: str = ""


class Timeline:
    def __init__(self, log_path, write=lambda b: None, interval_s: float = 0.25,
                 mem_max_bytes: int = 1 << 30, interrupted=lambda: False):
        self.src = ListSource(log_path)
        self.path = str(log_path)
        self.sink = HighWaterSink(write)
        self.console = Console(self.sink)
        self.sink.console = self.console
        self.interval_s = interval_s
        self.mem_max_bytes = mem_max_bytes
        self.interrupted = interrupted
        self.rp = Replayer(_Cursor(self.src, 0), self.console)
        self.header = self.rp.header
        self.header_frame = R.encode(self.header)
        self.ev = self.rp._next_event()
        self.k = 0                       # instructions run since the last boundary
        self.ended: Stop | None = None
        self.breakpoints: dict[int, object] = {}    # address -> hook handle
        self.watchpoints: dict[tuple, object] = {}  # (kind, addr, length) -> hook handle
        self.mode = None                 # hooks: None (ignore), "stop", "collect"
        self.hits: list = []             # raw hits of the current run
        self._skip_pc = None             # a breakpoint at the resume pc is not hit at once
        self._step_ready = False         # the translation cache suits counted stepping
        self._cost = 0.0                 # emulation seconds since the last checkpoint/restore
        self._capture_s = 0.0            # what the last checkpoint took: snapshots keep to 1/4 of the time
        self._chunk_blocks = 200_000
        self._md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self._insn_cache = {}
        self.checkpoints: list[Checkpoint] = []
        self.restores = 0
        self.event_blocks = self._index_events()
        self._checkpoint()

    # --- where we are ----------------------------------------------------------------------
    @property
    def m(self):
        return self.rp.m

    def pos(self) -> Point:
        b = int(self.m.cpu.blocks)
        return Point(b - 1, self.k) if self.k else Point(b, 0)

    def pc(self) -> int:
        return self.m.vcpu.reg("rip")

    @property
    def events(self) -> int:
        return self.rp.events

    def describe(self) -> str:
        p = self.pos()
        where = f"block {p.blocks} pc {self.pc():#x}" if not p.insns else \
            f"block {p.blocks} +{p.insns} instructions, pc {self.pc():#x}"
        nxt = self._next_event_text()
        calls = f", {self.rp.kernel.calls} system calls done" if self.rp.kernel is not None else ""
        return f"{where} (point {p}); {self.events} events applied{calls}; next: {nxt}"

    def _next_event_text(self):
        ev = self.ev
        if isinstance(ev, _Stop):
            return "end of the log"
        name = R.KIND_NAMES.get(ev.kind, "record")
        return f"{name} at block {ev.blocks}" + (f" (event #{self.events})" if ev.kind in EVENT_KINDS else "")

    def _index_events(self):
        out, sys_events = [], []
        self.golive = [(rec.blocks, rec.pc) for rec in self.src.records if rec.kind == R.GOLIVE]
        for rec in self.src.records:
            if rec.kind in EVENT_KINDS:
                if rec.kind == R.SYSCALL:
                    sys_events.append(len(out))
                out.append(rec.blocks)
        self.syscall_events = sys_events
        return out

    # --- hooks ---------------------------------------------------------------------------------
    def add_breakpoint(self, addr):
        if addr not in self.breakpoints:
            self.breakpoints[addr] = self.m.vcpu.uc.hook_add(UC.UC_HOOK_CODE, self._on_code, None, addr, addr)
            self._flush()

    def remove_breakpoint(self, addr):
        h = self.breakpoints.pop(addr, None)
        if h is not None:
            self.m.vcpu.uc.hook_del(h)
            self._flush()

    def add_watchpoint(self, kind, addr, length):
        key = (kind, addr, length)
        if key not in self.watchpoints:
            self.watchpoints[key] = self._watch_hook(self.m.vcpu.uc, key)
            self._flush()

    def remove_watchpoint(self, kind, addr, length):
        h = self.watchpoints.pop((kind, addr, length), None)
        if h is not None:
            self.m.vcpu.uc.hook_del(h)
            self._flush()

    def _watch_hook(self, uc, key):
        kind, addr, length = key
        types = {"watch": UC.UC_HOOK_MEM_WRITE, "rwatch": UC.UC_HOOK_MEM_READ,
                 "awatch": UC.UC_HOOK_MEM_READ | UC.UC_HOOK_MEM_WRITE}[kind]

        def on_mem(uc_, access, address, size, value, user):
            if address < addr + length and addr < address + size:
                self._on_mem(kind, address)
        # A hook's range is matched against the access's first byte: widen it by 7 bytes
        # so that an access of up to 8 bytes starting before the range is seen too.
        return uc.hook_add(types, on_mem, None, max(0, addr - 7), addr + length - 1)

    def _install_hooks(self):
        uc = self.m.vcpu.uc
        for addr in list(self.breakpoints):
            self.breakpoints[addr] = uc.hook_add(UC.UC_HOOK_CODE, self._on_code, None, addr, addr)
        for key in list(self.watchpoints):
            self.watchpoints[key] = self._watch_hook(uc, key)

    def _flush(self):
        self.m.vcpu.uc.ctl_flush_tb()
        self._step_ready = True

    def _on_code(self, uc, addr, size, user):
        if self.mode is None:
            return
        if self._skip_pc is not None:
            skip, self._skip_pc = self._skip_pc == addr, None
            if skip:
                return
        c = self.m.cpu
        self.hits.append(("break", addr, int(c.blocks), int(c.block_pc), addr))
        if self.mode == "stop":
            uc.emu_stop()

    def _on_mem(self, kind, address):
        if self.mode is None:
            return
        c = self.m.cpu
        self.hits.append((kind, address, int(c.blocks), int(c.block_pc), self.m.vcpu.reg("rip")))
        if self.mode == "stop":
            lib.ftvm_request(c, SYNC_DEBUG)

    def _hit_point(self, raw, after: bool) -> Point:
        """The point of a raw hit: in front of its instruction, or (``after``) just after."""
        _, _, blocks, block_pc, pc = raw
        k = self._insns_between(block_pc, pc)
        return Point(blocks - 1, k + (1 if after else 0))

    def _insns_between(self, start, pc):
        if pc == start:
            return 0
        key = (start, pc)
        got = self._insn_cache.get(key)
        if got is None:
            code = self.m.vcpu.read(start, pc - start + 16) if pc > start else b""
            got, at = 0, start
            for addr, size, _, _ in self._md.disasm_lite(code, start):
                if addr >= pc:
                    break
                got += 1
                at = addr + size
            if at != pc:
                raise FtvmError(f"internal error: pc {pc:#x} is not an instruction of the block at {start:#x}")
            self._insn_cache[key] = got
        return got

    # --- running forwards ------------------------------------------------------------------------
    def _after_run(self, fault):
        """What the replay loop does after the engine stops (see Replayer._loop)."""
        rp, m, cpu = self.rp, self.m, self.m.cpu
        if cpu.sync_req & SYNC_DIVERGED:
            raise m.vtime.divergence(rp._point())
        if rp.kernel is not None and fault is None:
            rp.kernel.take_hook()
            status = rp.kernel.exit_pending()
            if status is not None:
                m.exit_status = status
        cpu.sync_req = 0
        cpu.async_req = 0
        if fault is not None:
            self.k = 0
            res = rp._check_end(self.ev, "fault", fault.status, f"guest fault: {fault.describe()}")
            self.ended = Stop("fault", status=res.status, message=res.message)
            return self.ended
        if m.exit_status is not None:
            self.k = 0
            res = rp._check_end(self.ev, "exit", m.exit_status, f"guest exited with status {m.exit_status}")
            self.ended = Stop("exit", status=res.status, message=res.message)
            return self.ended
        if m.iret_pending:
            m.finish_iret()
        if m.vtime.cpu.tsc_more and cpu.tsc_len - cpu.tsc_pos < 1024:
            m.vtime.refill()
        return None

    def _settle(self, max_events=None):
        """Apply the log's events at this boundary (all, or up to event ``max_events``)."""
        rp, m = self.rp, self.m
        while True:
            ev = self.ev
            if m.blocks > ev.blocks:
                from ..errors import Divergence
                raise Divergence(rp._point(), f"ran past the log's next {R.KIND_NAMES.get(ev.kind, 'point')} "
                                              f"at block {ev.blocks}")
            if m.blocks < ev.blocks:
                return None
            if isinstance(ev, _Stop):
                if ev.kind == HORIZON:
                    self.ev = rp._next_event()
                    continue
                assert ev.kind == CUT
                self.ended = Stop("end", message=f"the log ends here ({ev.error.reason if ev.error else 'cut'})")
                return self.ended
            if max_events is not None and ev.kind in EVENT_KINDS and rp.events >= max_events:
                return None
            res = rp._apply(ev)
            if res is not None:
                self.ended = Stop("end", status=res.status, message=res.message)
                return self.ended
            self.ev = rp._next_event()

    def _call_pending(self):
        """A system call waits at this boundary that the log has not answered (a
        thread blocked in one is not: it waits for another thread)."""
        k = self.rp.kernel
        if k is None or k.pending is None:
            return False
        th = getattr(k, "threads", None)
        return th is None or th.cur.blocked is None

    # --- threads (Linux programs) ------------------------------------------------------------------
    def threads(self):
        """[(tid, state text)] of the guest's threads; one thread (1) for an ftvm-ABI guest."""
        th = getattr(self.rp.kernel, "threads", None) if self.rp.kernel is not None else None
        if th is None:
            return [(1, "running")]
        out = []
        for tid in sorted(th.all):
            t = th.all[tid]
            if t.exited:
                continue
            state = "running" if t is th.cur else (f"waiting ({t.blocked.what})" if t.blocked is not None
                                                   else "runnable")
            out.append((tid, state))
        return out

    def current_tid(self):
        th = getattr(self.rp.kernel, "threads", None) if self.rp.kernel is not None else None
        return th.cur.tid if th is not None else 1

    def registers_of(self, tid):
        """Something with reg_read for thread ``tid``: the CPU, or its saved context."""
        th = getattr(self.rp.kernel, "threads", None) if self.rp.kernel is not None else None
        if th is None or tid in (None, 0, -1) or tid == th.cur.tid:
            return self.m.vcpu.uc
        t = th.all.get(tid)
        if t is None or t.ctx is None:
            return None
        return t.ctx

    def _run_blocks(self, goal):
        """Run from a boundary to block ``goal`` at most; stops early at a hit."""
        m, cpu = self.m, self.m.cpu
        if self._call_pending():
            from ..errors import Divergence
            raise Divergence(self.rp._point(), f"the guest called {self.rp.kernel.describe_pending()} here, but "
                                               f"the log's next event is at block {self.ev.blocks}")
        self._step_ready = False     # emu_start without a count drops the instruction counter
        n0 = len(self.hits)
        lib.ftvm_arm(cpu, goal)
        t0 = time.perf_counter()
        fault = m.vcpu.run()
        dt = time.perf_counter() - t0
        self._cost += dt
        if dt > 0:
            self._chunk_blocks = int(min(max(self._chunk_blocks * min(CHUNK_S / dt, 4.0), 20_000), 50_000_000))
        new = self.hits[n0:] if self.mode == "stop" else []
        if new and new[0][0] == "break" and fault is None:
            raw = new[0]
            del self.hits[n0 + 1:]
            if raw[4] == raw[3]:          # in front of a block's first instruction: uncount it
                cpu.blocks -= 1
                self.k = 0
            else:
                self.k = self._insns_between(raw[3], raw[4])
            return Stop("break", addr=raw[1])
        r = self._after_run(fault)
        if r is not None:
            return r
        if new:
            return self._watch_stop(new[0])
        return None

    def _watch_stop(self, raw):
        """A watchpoint fired in a block run as a whole; the run went on to the block's
        end. Go back to just after the instruction that made the access."""
        target = self._hit_point(raw, after=True)
        self.goto(target)
        return Stop(raw[0], addr=raw[1])

    def step(self):
        """One instruction forwards (hooks collect hits: a watchpoint reports)."""
        if self.ended is not None:
            return self.ended
        if self.k == 0:
            r = self._settle()
            if r is not None:
                return r
        mode, self.mode = self.mode, "collect"
        self.hits = []
        try:
            r = self._step_insn()
        finally:
            self.mode = mode
        if r is not None:
            return r
        for raw in self.hits:
            if raw[0] != "break":
                return Stop(raw[0], addr=raw[1])
        return Stop("step")

    def _step_insn(self):
        """One instruction. In "stop" mode a breakpoint on it stops in front of it
        (returns Stop("break")); a watchpoint stops after it."""
        cpu, v = self.m.cpu, self.m.vcpu
        if self.k == 0 and self._call_pending():
            from ..errors import Divergence
            raise Divergence(self.rp._point(), "a system call is pending where the log has none")
        if not self._step_ready:
            v.uc.ctl_flush_tb()          # so that the instruction counter sees every instruction
            self._step_ready = True
        lib.ftvm_arm(cpu, STOP_NEVER)
        if self.k:
            cpu.resume_mid = 1
            lib.ftvm_request(cpu, 0)
        b0, stops0 = int(cpu.blocks), int(cpu.hook_stops)
        n = b0 if self.k == 0 else b0 - 1          # the boundary we are at or after
        pc0 = self.pc()
        n0 = len(self.hits)
        v.fault = None
        t0 = time.perf_counter()
        try:
            v.uc.emu_start(pc0, STOP_NEVER, 0, 1)
        except unicorn.UcError as e:
            if v.fault is None:
                v.fault = Fault(f"emulation error: {e}", None, self.pc(), abi_status_for(e))
        self._cost += time.perf_counter() - t0
        cpu.resume_mid = 0
        fault = v.fault
        rip = self.pc()
        new = self.hits[n0:]
        if fault is None and self.mode == "stop" and new and new[0][0] == "break":
            del self.hits[n0 + 1:]
            cpu.blocks = b0                     # stopped in front of the instruction
            return Stop("break", addr=new[0][1])
        if fault is None:
            if int(cpu.hook_stops) != stops0:
                self.k = 0                      # the block hook stopped in front of the next block
            elif int(cpu.blocks) == n + 2 and rip == int(cpu.block_pc):
                cpu.blocks -= 1                 # counted in front of the next block: uncount
                self.k = 0
            elif int(cpu.blocks) == n + 1:
                start = int(cpu.block_pc)
                self.k += 1
                tb = v.uc.ctl_request_cache(start)
                if rip == start + tb[2]:      # a block cut short by its size ends here
                    self.k = 0
            else:
                raise FtvmError(f"internal error: a single step went from block {b0} to {int(cpu.blocks)}")
        r = self._after_run(fault)
        if r is not None:
            return r
        if self.mode == "stop" and new:
            return Stop(new[0][0], addr=new[0][1])
        return None

    def forward(self, target: Point | None = None, mode="stop", max_events=None):
        """Run forwards to ``target`` (or the end). ``mode``: "stop" at hits, "collect"
        them into ``hits`` and go on, or None (hooks ignored)."""
        if self.ended is not None:
            return self.ended
        old, self.mode = self.mode, mode
        if mode != "collect":
            self.hits = []
        pc0 = self.pc()
        self._skip_pc = pc0 if (mode == "stop" and pc0 in self.breakpoints) else None
        try:
            return self._forward(target, max_events)
        finally:
            self.mode = old
            self._skip_pc = None

    def _forward(self, target, max_events):
        while True:
            p = self.pos()
            if self.k == 0:
                at_target = target is not None and p.blocks == target.blocks
                r = self._settle(max_events if at_target else None)
                if r is not None:
                    return r
            if target is not None and p >= target:
                return Stop("target")
            if self.interrupted():
                return Stop("interrupt")
            if self.k or (target is not None and p.blocks == target.blocks):
                r = self._step_insn()
                if r is not None:
                    return r
                continue
            if self._cost >= max(self.interval_s, 3 * self._capture_s) and p > self.checkpoints[-1].point:
                self._checkpoint()      # only past the last one: re-executing the past adds none
            goal = min(self.ev.blocks, p.blocks + self._chunk_blocks)
            if target is not None:
                goal = min(goal, target.blocks)
            r = self._run_blocks(goal)
            if r is not None:
                return r

    # --- checkpoints ---------------------------------------------------------------------------
    def _checkpoint(self, temporary=False):
        assert self.k == 0
        p = self.pos()
        for cp in self.checkpoints:
            if cp.point == p and cp.events == self.events:
                self._cost = 0.0
                return
        m, rp = self.m, self.rp
        c = m.cpu
        t0 = time.perf_counter()
        regions = snapshot.memory_regions(m)
        meta = bytes(snapshot.capture(m, self.header_frame, rp.source.pos, self.console.total, b"", digest=False,
                                      memory=False))
        prev = None
        for cp in self.checkpoints:
            if cp.point < p:
                prev = cp
        old = prev.chunks if prev is not None else []
        chunks = []
        for i, piece in enumerate(snapshot.memory_pieces(m, MEM_CHUNK)):
            same = old[i] if i < len(old) else None
            chunks.append(same if same is not None and same == piece else bytes(piece))
        words = list(m.vtime._queue)
        left = int(c.tsc_len - c.tsc_pos)
        if left:
            import array
            from ..uc import ffi
            buf = array.array("Q", bytes(ffi.buffer(c.tsc_buf + 3 * c.tsc_pos, 24 * left)))
            words.insert(0, (buf, 0))
        cp = Checkpoint(p, self.events, meta, chunks, rp.source.pos, self.ev, words, list(m.rng._queue),
                        (rp.events, rp.records, rp._safe_blocks, rp.last_golive, rp.last_disk_read_record),
                        temporary, regions)
        self.checkpoints.append(cp)
        self._capture_s = time.perf_counter() - t0
        self.checkpoints.sort(key=lambda x: (x.point, x.events))
        self._cost = 0.0
        self._trim()

    def _trim(self):
        while self.snapshot_bytes > self.mem_max_bytes and len(self.checkpoints) > 1:
            cps = self.checkpoints
            best, gap = None, None
            for i in range(1, len(cps)):
                nxt = cps[i + 1].point.blocks if i + 1 < len(cps) else cps[i].point.blocks
                g = nxt - cps[i - 1].point.blocks
                if gap is None or g < gap:
                    best, gap = i, g
            del cps[best]

    @property
    def snapshot_bytes(self):
        """Memory the checkpoints hold, shared chunks counted once."""
        seen, total = set(), 0
        for cp in self.checkpoints:
            total += len(cp.meta)
            for c in cp.chunks:
                if id(c) not in seen:
                    seen.add(id(c))
                    total += len(c)
        return total

    def _restore(self, cp: Checkpoint):
        old = self.m
        m, header, k, _ = snapshot.restore(cp.meta, self.console, pieces=cp.chunks)
        rp = Replayer(_Cursor(self.src, cp.log_pos), self.console, header=self.header, machine=m)
        (rp.events, rp.records, rp._safe_blocks, rp.last_golive, rp.last_disk_read_record) = cp.rp_state
        m.vtime._queue = collections.deque(cp.tsc_words)
        m.cpu.tsc_len = m.cpu.tsc_pos = 0
        m.vtime.refill()
        m.rng._queue = collections.deque(cp.rng)
        self.rp = rp
        self.ev = cp.ev
        self.k = 0
        self.ended = None
        self._install_hooks()
        self._step_ready = False
        self._cost = 0.0
        self.restores += 1
        if old is not m:
            _close_engine(old.vcpu.uc)

    # --- going anywhere ------------------------------------------------------------------------------
    def goto(self, target: Point, max_events=None):
        """Go to ``target`` with no hits (with ``max_events``: stop before that event)."""
        here = self.pos()
        back = target < here or (target == here and max_events is not None and self.events > max_events) \
            or self.ended is not None and target <= here
        if back:
            cp = self._checkpoint_before(target, max_events)
            self._restore(cp)
        r = self._goto_forward(target, max_events)
        if back and r.reason == "target" and self.k == 0 and self._cost > 0.02:
            self._checkpoint(temporary=True)        # going back again from here will be cheap
        return r

    def _goto_forward(self, target, max_events):
        if target.insns and self.pos() < Point(target.blocks, 0):
            r = self.forward(Point(target.blocks, 0), mode=None)
            if r.reason != "target":
                return r
            if self._cost > 0.02:
                self._checkpoint(temporary=True)    # the next step back will be cheap
        return self.forward(target, mode=None, max_events=max_events)

    def _checkpoint_before(self, target, max_events):
        best = self.checkpoints[0]
        for cp in self.checkpoints:
            if cp.point < target or (cp.point == target and (max_events is None or cp.events <= max_events)):
                best = cp
        return best

    def goto_event(self, n):
        if not 0 <= n < len(self.event_blocks):
            raise BadPoint(f"no event #{n}: the log has {len(self.event_blocks)} (#0-#{len(self.event_blocks) - 1})")
        return self.goto(Point(self.event_blocks[n], 0), max_events=n)

    def goto_syscall(self, n):
        if not 0 <= n < len(self.syscall_events):
            raise BadPoint(f"no system call #{n}: the log has {len(self.syscall_events)}")
        return self.goto_event(self.syscall_events[n])

    def goto_golive(self, n=0):
        """Where a backup went live as the new primary (the Nth time, from 0)."""
        if not 0 <= n < len(self.golive):
            raise BadPoint(f"no go-live point #{n}: the log has {len(self.golive)} (only the whole-run log of "
                           "an `ftvm run` with a failover has one)")
        blocks, pc = self.golive[n]
        return self.goto(Point(blocks, 0))

    def goto_pc(self, blocks, pc):
        """``block N pc X`` as `ftvm log show` prints it: the boundary, or the
        instruction at X in the block before or after it."""
        r = self.goto(Point(blocks, 0))
        if self.pc() == pc:
            return r
        for base in (blocks - 1, blocks):
            if base < 0:
                continue
            self.goto(Point(base, 0))
            for _ in range(4096):
                if self.pc() == pc:
                    return Stop("target")
                r = self.step()
                if r.reason not in ("step", "watch", "rwatch", "awatch") or self.k == 0:
                    break
            if self.pc() == pc:
                return Stop("target")
        self.goto(Point(blocks, 0))
        raise BadPoint(f"no instruction at pc {pc:#x} next to block {blocks}; stopped at block {blocks}")

    # --- going backwards -------------------------------------------------------------------------------
    def reverse_step(self):
        here = self.pos()
        if here == Point(0, 0):
            return Stop("begin")
        if here.insns:
            self.goto(Point(here.blocks, here.insns - 1))
            return Stop("step")
        # The last instruction of block `here.blocks`: its length comes from the
        # translation of the block at its start.
        self.goto(Point(here.blocks - 1, 0))
        tb = self.m.vcpu.uc.ctl_request_cache(self.pc())
        if tb[1] > 1:
            self.goto(Point(here.blocks - 1, tb[1] - 1))
        if self.pos() >= here:
            raise FtvmError(f"internal error: stepping back from {here} reached {self.pos()}")
        return Stop("step")

    def reverse_continue(self):
        """Back to the last breakpoint or watchpoint hit before here, or the start.

        With a write or access watchpoint, the checkpoints say where to look first:
        the latest one whose watched bytes differ from the current ones lies before
        a write that changed them, so the last hit is between it and here. That
        stretch is replayed once, forwards, collecting hits (exact: a write of the
        same value and a value changed and changed back are hits like any other).
        Otherwise (or if that finds nothing: the change came from a system call,
        which no hook sees), stretches of the past are replayed with the hooks
        collecting hits, the nearest first; each stretch is twice as long as the one
        before, up to STRETCH_MAX snapshot intervals (fewer restores, little
        replayed beyond the hit)."""
        here, here_events = self.pos(), self.events
        cps = [cp for cp in self.checkpoints if cp.point < here or (cp.point == here and cp.events < here_events)]
        end, span, i = here, 1, len(cps)
        j = self._last_change(cps)
        if j is not None:
            r = self._collect_since(cps, j, here)
            if isinstance(r, Stop):
                return r
            end, i, span = cps[j].point, j, STRETCH_MAX
        while i > 0 and (self.breakpoints or self.watchpoints):
            if self.interrupted():
                self.goto(here)
                return Stop("interrupt")
            i = max(0, i - span)
            span = min(2 * span, STRETCH_MAX)
            cp = cps[i]
            self._restore(cp)
            self.hits = []
            self.forward(end, mode="collect")
            found = []
            for raw in self.hits:
                pt = self._hit_point(raw, after=False)
                if cp.point <= pt < here:
                    found.append((pt, raw))
            self.hits = []
            if found:
                pt, raw = max(found, key=lambda e: e[0])
                self.goto(pt)
                return Stop(raw[0], addr=raw[1])
            end = cp.point
        self.goto(Point(0, 0))
        return Stop("begin")

    def _last_change(self, cps):
        """The index in ``cps`` of the latest checkpoint whose bytes under a write or
        access watchpoint differ from the current ones (None: none differs, or no
        such watchpoint). Compares the checkpoints' copies of memory: no execution."""
        ranges = [(addr, n) for kind, addr, n in self.watchpoints if kind in ("watch", "awatch")]
        if not ranges:
            return None
        now = [self._read_now(addr, n) for addr, n in ranges]
        for j in range(len(cps) - 1, -1, -1):
            if any(cps[j].read(addr, n) != v for (addr, n), v in zip(ranges, now)):
                return j
        return None

    def _read_now(self, addr, n):
        try:
            return bytes(self.m.vcpu.uc.mem_read(addr, n))
        except unicorn.UcError:
            return None

    def _collect_since(self, cps, j, here):
        """Replay from checkpoint ``cps[j]`` to ``here`` collecting hits, one snapshot
        interval at a time (only the latest hit is kept); stop at the last one. None
        if there was none."""
        cp = cps[j]
        self._restore(cp)
        best = None
        for target in [c.point for c in cps[j + 1:]] + [here]:
            if self.interrupted():
                self.goto(here)
                return Stop("interrupt")
            self.hits = []
            r = self.forward(min(target, here), mode="collect")
            for raw in self.hits:
                pt = self._hit_point(raw, after=False)
                if cp.point <= pt < here and (best is None or pt > best[0]):
                    best = (pt, raw)
            self.hits = []
            if r.reason == "interrupt":
                self.goto(here)
                return r
            if r.reason != "target":
                break
        if best is None:
            return None
        pt, raw = best
        self.goto(pt)
        return Stop(raw[0], addr=raw[1])
