"""Recording: run a guest on the host's real inputs and log every nondeterministic
thing that happens, at the execution point where it happens.

The loop: run the CPU until something stops it (an arrival from the host, a hypercall,
HLT, a full RDTSC buffer, console output to hand out, a fault). At each stop, drain
RDTSC results into the log, hand host arrivals to the devices (Input records), deliver
one interrupt if the guest can take it (Irq record), write a digest when one is due,
hand console output on, and go on.

Console output leaves only at stops, with the log position that covers it, so that
the fault-tolerant primary can hold it until the backup has that position (the
Output Rule). Plain recording releases it at once.
"""
from __future__ import annotations

import time

from logging_channel import records as R

from . import abi
from .errors import EXIT_INTERRUPTED, GuestStuck
from .linux import cfiles, inhook
from .linux.recording import LinuxRecording
from .machine import Config, Machine
from .sources.interrupts import HostEvents
from .uc import NO_STOP, SYNC_HYPERCALL, TSC_HOST, lib



class Chaos:
    """Test hook: extra stops at given block counts, some of them moving the state into
    a fresh engine. Must not change anything the guest can see."""

    def __init__(self, stops=(), migrate_every=0):
        self.stops = sorted(set(stops))
        self.migrate_every = migrate_every
        self.count = 0

    def next_stop(self, blocks):
        while self.stops and self.stops[0] < blocks:
            self.stops.pop(0)
        return self.stops[0] if self.stops else NO_STOP

    def at_stop(self, machine):
        if self.stops and self.stops[0] == machine.blocks:
            self.stops.pop(0)
            self.count += 1
            if self.migrate_every and self.count % self.migrate_every == 0:
                machine.vcpu.migrate()


class ScriptedInput:
    """Test hook: arrivals at given block counts instead of from stdin and the host
    timer. ``events`` is [(blocks, what)], what being bytes, None (end of input) or
    "tick" (a timer tick)."""

    def __init__(self, events):
        self.events = sorted(events, key=lambda e: e[0])

    def next_stop(self):
        return self.events[0][0] if self.events else NO_STOP

    def due(self, blocks):
        out = []
        while self.events and self.events[0][0] <= blocks:
            out.append(self.events.pop(0)[1])
        return out

    def advance(self):
        """The guest halts: bring the next arrival forward to now."""
        if self.events:
            self.events[0] = (0, self.events[0][1])


class PlainOutput:
    """Where recorded console output goes without fault tolerance: straight out.
    Network output goes to ``net_write(offset, frames)`` (the front end), if any."""

    def __init__(self, write, net_write=None):
        self._write = write
        self._net_write = net_write

    def output(self, offset, data, cover):
        self._write(data)

    def net_output(self, offset, data, cover):
        if self._net_write is not None:
            self._net_write(offset, data)

    def exit(self, total, status, detail, cover):
        pass

    def after_stop(self, recorder):
        pass


class Recorder(LinuxRecording):
    """Drives a Machine in record mode. Build it with ``new`` (a fresh guest) or
    ``take_over`` (a replayed machine going live)."""

    def __init__(self, machine: Machine, sink, config: Config, out, host: HostEvents,
                 script: ScriptedInput | None = None, chaos: Chaos | None = None, progress_records=False):
        self.m = machine
        self.sink = sink                # has append(record) and .records
        self.config = config
        self.out = out                  # output(offset, data, cover), exit(...), after_stop(recorder)
        self.host = host
        self.script = script
        self.chaos = chaos
        self.progress_records = progress_records
        self.events = 0
        self._events_at_digest = 0
        self._vtime_at_digest = machine.vtime.now()
        # A digest hashes all guest memory: keep it under ~1/10 of the run for big guests
        # (about 40 ms of guest time per MiB between digests: ~1 s for a 24 MiB guest).
        mib = machine.vcpu.memory_bytes >> 20
        # A Linux process maps far more than it touches (libraries, thread stacks,
        # allocator arenas): 200 ms per MiB keeps its digests near 1% of the run.
        per_mib = 200 if getattr(machine, "kernel", None) is not None else 40
        self._digest_interval_ns = max(config.digest_interval_ms, per_mib * mib) * 1_000_000 if config.digest_interval_ms else 0
        self._logged_at_stop = False
        self._t0 = time.monotonic_ns()
        self._console_offset = machine.console.total - len(machine.console.pending())
        self._net_offset = machine.netout.total - len(machine.netout.pending())
        machine.console.on_flush_wanted = self._flush_wanted
        machine.netout.on_flush_wanted = self._flush_soon
        self.disk = None                # DiskWorker: the host side of the disk (attach_disk)
        self.guest_waits = False        # at this stop the guest halts until something arrives
        self._stop_soon = False
        self.disk_reads_in_log = machine.config.disk_reads != "shared"
        self._poker = None
        self._inhook = None             # linux/inhook.py: calls run inside the syscall hook
        self._cfiles = None             # linux/cfiles.py: data-directory files served there in C
        self._sched_after_hook = False  # a call run there must wait (or exit, yield): schedule at the stop
        machine.rng.mode = "record"
        machine.rng.set_append(self._append)
        machine.mode = "record"
        self.kernel = getattr(machine, "kernel", None)     # the Linux personality, if it is one
        if self.kernel is not None:
            self.kernel.mode = "record"
            self.kernel.output_gate = self._output_gate
        if not script:
            machine.on_timer_change = host.set_timer
        else:
            machine.on_timer_change = None

    @classmethod
    def new(cls, elf_bytes, image, elf_name, sink, config: Config, console, out=None, stdin_fd=None,
            script=None, chaos=None, entropy=None, progress_records=False, poke_interval_s=None, host=None):
        from .guest import AbiGuest
        return cls.start(AbiGuest(elf_bytes, image, elf_name), sink, config, console, out=out, stdin_fd=stdin_fd,
                         script=script, chaos=chaos, entropy=entropy, progress_records=progress_records,
                         poke_interval_s=poke_interval_s, host=host)

    @classmethod
    def start(cls, guest, sink, config: Config, console, out=None, stdin_fd=None,
              script=None, chaos=None, entropy=None, progress_records=False, poke_interval_s=None, host=None):
        """Start ``guest`` (guest.AbiGuest or guest.LinuxGuest) afresh and record it."""
        m = guest.machine(config, "record", console, entropy)
        if host is None:
            host = HostEvents(m.cpu, None if script else stdin_fd)
        else:
            host.bind(m.cpu)
        sink.append(guest.header(config))
        rec = cls(m, sink, config, out or PlainOutput(console_write(console)), host, script, chaos,
                  progress_records)
        interval = poke_interval_s if poke_interval_s is not None else (
            config.digest_interval_ms / 1000 if config.digest_interval_ms else 0)
        if interval and not script:
            # A CPU-bound guest must still stop now and then (digests, pacing).
            host.start_poker(interval)
        return rec

    def attach_disk(self, path, setup=None):
        """Do this guest's disk I/O on the image at ``path``. Requests the machine has in
        flight (a replayed guest going live) are issued again, in order: they are
        idempotent by design. ``setup(worker)`` runs before they are (the owner must
        know the worker to release their writes)."""
        from .sources.disk import DiskWorker
        self.disk = DiskWorker(path, self.host.push_disk)
        self.disk.reads_done = self.m.disk.reads_completed
        if setup is not None:
            setup(self.disk)
        for r in self.m.disk.pending_in_order():
            self._issue(r, cover=0)
        self.m.disk.take_new()

    def _issue(self, r, cover):
        self.disk.issue(r)
        if r.op == abi.DISK_WRITE:
            if hasattr(self.out, "disk_write"):
                self.out.disk_write(r.id, cover)    # released through the Output Rule
            else:
                self.disk.release(r.id)

    @classmethod
    def take_over(cls, machine: Machine, sink, config: Config, out, host: HostEvents, tsc_offset_ns: int,
                  golive: R.GoLive | None = None, poke_interval_s=0.02):
        """Go live from a replayed machine: guest time continues from the host clock
        plus ``tsc_offset_ns``, and everything from here on is recorded."""
        cpu = machine.cpu
        cpu.tsc_mode = TSC_HOST
        cpu.tsc_offset_ns = tsc_offset_ns
        cpu.tsc_len = cpu.tsc_pos = 0
        cpu.tsc_more = 0
        rec = cls(machine, sink, config, out, host, progress_records=True)
        if golive is not None:
            rec._append(golive)
        if machine.timer_period_us:
            host.set_timer(machine.timer_period_us)
        host.start_poker(poke_interval_s)
        return rec

    # --- log ---------------------------------------------------------------------------
    def _append(self, rec):
        self.sink.append(rec)

    def _event(self, rec):
        self.sink.append(rec)
        self.events += 1
        self._logged_at_stop = True

    def _flush_wanted(self):
        lib.ftvm_request(self.m.cpu, SYNC_HYPERCALL)   # hand it out at the end of this block

    FLUSH_SOON_BLOCKS = 4096
    DIGEST_COST_FACTOR = 50     # a Linux guest's digests: at most ~1/50 of the run

    def stop_soon(self):
        """Make the next stop come within FLUSH_SOON_BLOCKS blocks (asked at a stop)."""
        self._stop_soon = True

    def _flush_soon(self):
        """Network replies: hand them out at the next stop, which a serving guest makes
        soon anyway (it halts when idle); at the latest FLUSH_SOON_BLOCKS blocks on.
        Saves a stop per batch of replies (2.5x the kv's throughput)."""
        c = self.m.cpu
        t = int(c.blocks) + self.FLUSH_SOON_BLOCKS
        if c.stop_at > t:
            c.stop_at = t
        if c.trip > t:
            c.trip = t

    # --- the loop ----------------------------------------------------------------------
    def run(self):
        """Record until the guest ends. Returns the End record written."""
        m, cpu = self.m, self.m.cpu
        lib.ftvm_install_signals(cpu)
        if self.kernel is not None and inhook_enabled():
            self._inhook = inhook.InHook(cpu, self._hook_call)
            self._inhook.install()
            self._inhook.record_clocks(self.kernel.realtime_base_ns, cfiles.FRAMES_BYTES)
            self._cfiles = cfiles.CFiles(cpu, self.kernel.files)
        try:
            return self._loop(m, cpu)
        finally:
            if self._cfiles is not None:
                self._cfiles.detach()
                self._cfiles = None
            if self._inhook is not None:
                self._inhook.remove()
            lib.ftvm_restore_signals()
            if self._poker is not None:
                self._poker.close()
            self.host.close()
            if self.disk is not None:
                self.disk.close()

    def _loop(self, m, cpu):
        if self.kernel is not None:
            end = self._linux_resume()
            if end is not None:
                return end
        while True:
            self._arm(m)
            fault = m.vcpu.run()
            if self._inhook is not None:
                self._drain_frames()
                self._cfiles.sync()
                self._inhook.raise_error()
            self._logged_at_stop = False
            self._drain_tsc()
            if self.kernel is not None and fault is None:
                fault = self._linux_after_run()
            if fault is not None and self.kernel is not None and self._linux_fault_to_handler(fault):
                continue
            if fault is not None:
                return self._end("fault", fault.status, f"guest fault: {fault.describe()}")
            if m.exit_status is not None:
                return self._end("exit", m.exit_status, f"guest exited with status {m.exit_status}")
            if cpu.signal and self.kernel is None:
                return self._end("interrupted", EXIT_INTERRUPTED, f"recording stopped by signal {cpu.signal}")
            halted = m.vcpu.halted
            arrived = cpu.async_req
            cpu.async_req = 0
            cpu.sync_req = 0
            cpu.irq_wait = 0
            if m.iret_pending:
                m.finish_iret()
            if self.chaos:
                self.chaos.at_stop(m)
            if self.kernel is not None:
                # Host arrivals poke the CPU (async_req): a stop without one has none.
                if arrived or self.script:
                    self._take_host_events()
                end = self._linux_stop()
                if end is not None:
                    return end
                self._maybe_digest()
                self._flush_console()
                self._flush_net()
                self._mark_progress()
                self.out.after_stop(self)
                continue
            self._take_host_events()
            delivered = self._maybe_deliver()
            while halted and not delivered:
                self._stop_to_wait()
                if not self._can_wake():
                    return self._end("stuck", GuestStuck.exit_status, self._stuck_reason())
                if self.script:
                    # Scripted time stands still while the guest halts: the next scripted
                    # arrival comes now, at this (deterministic) point.
                    self.script.advance()
                else:
                    self.host.wait(0.05)
                if cpu.signal:
                    return self._end("interrupted", EXIT_INTERRUPTED, f"recording stopped by signal {cpu.signal}")
                self._take_host_events()
                delivered = self._maybe_deliver()
            self._maybe_digest()
            self._flush_console()
            self._flush_net()
            self._mark_progress()
            self.out.after_stop(self)

    def _mark_progress(self):
        """Let a backup know it may replay up to this stop (once per stop)."""
        if self.progress_records and not self._logged_at_stop:
            self._append(R.Progress(self.m.blocks, self.m.vcpu.reg("rip")))
            self._logged_at_stop = True

    def _arm(self, m):
        stop = NO_STOP
        if self.script:
            stop = min(stop, self.script.next_stop())
        if self.chaos:
            stop = min(stop, self.chaos.next_stop(m.blocks))
        if self._stop_soon:
            self._stop_soon = False
            stop = min(stop, m.blocks + self.FLUSH_SOON_BLOCKS)
        if self.kernel is not None:
            th = self.kernel.threads
            due = th.preempt_at(m.vtime.now())
            if due is not None:
                stop = min(stop, max(due, m.blocks + 1))
            deadline = th.earliest_deadline()
            if deadline is not None and len(th.all) > 1:
                # Another thread sleeps until then: stop the running one when it is due.
                self._deadline_poker().poke_at(deadline - int(m.cpu.tsc_offset_ns))
        lib.ftvm_arm(m.cpu, stop)

    def _deadline_poker(self):
        if self._poker is None:
            self._poker = DeadlinePoker(self.m.cpu)
        return self._poker

    def _drain_tsc(self):
        batch = self.m.vtime.drain()
        if batch is not None:
            self.sink.append(batch)

    def _flush_log(self):
        """Buffered log frames to the OS: before output leaves and before a wait."""
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            flush()

    def _flush_console(self):
        """Hand console output on, covered by everything logged so far. A Progress
        record marks this point, so a backup can replay up to the output."""
        data = self.m.console.take()
        if not data:
            return
        self._mark_progress()
        self._flush_log()
        self.out.output(self._console_offset, data, self.sink.records)
        self._console_offset += len(data)

    def _flush_net(self):
        data = self.m.netout.take()
        if not data:
            return
        self._mark_progress()
        self._flush_log()
        self.out.net_output(self._net_offset, data, self.sink.records)
        self._net_offset += len(data)

    def _take_host_events(self):
        m = self.m
        rip = m.vcpu.reg("rip")
        if self.script:
            for what in self.script.due(m.blocks):
                if what == "tick":
                    if m.timer_period_us:
                        m.irq.raise_line(abi.IRQ_TIMER)
                else:
                    self._input(rip, what)
            return
        data, eof_now, ticks = self.host.take()
        if data:
            self._input(rip, data)
        if eof_now:
            self._input(rip, None)
        if ticks and m.timer_period_us:
            m.irq.raise_line(abi.IRQ_TIMER)
        if m.net.record(self._event, m.blocks, rip, self.host.take_net()):
            m.irq.raise_line(abi.IRQ_NET)
        self._disk_stop(rip)

    def _disk_stop(self, rip):
        """Completions from the host become DISK records; new requests go to the host."""
        m = self.m
        done = self.host.take_disk() if self.disk is not None else []
        m.disk.record_completions(self._event, m.blocks, rip, done, self.disk_reads_in_log)
        if done or m.disk.completed_now:
            m.disk.completed_now = False
            m.irq.raise_line(abi.IRQ_DISK)
        new = m.disk.take_new()
        if new:
            if self.disk is None:      # no image attached (cannot happen: sectors would be 0)
                for r in new:
                    m.disk.complete(r.id, abi.DISK_EIO, None)
                m.irq.raise_line(abi.IRQ_DISK)
                return
            self._mark_progress()      # the backup can replay up to the submits
            for r in new:
                self._issue(r, self.sink.records)

    def _input(self, rip, data):
        self.m.input.record(self._event, self.m.blocks, rip, data)
        self.m.irq.raise_line(abi.IRQ_INPUT)

    def _maybe_deliver(self) -> bool:
        return self.m.irq.record_delivery(self._event, self.m.blocks, self.m.cpu)

    def _stop_to_wait(self):
        """The guest waits (halted, or every thread blocked): everything it did so far
        leaves (output, the log to the OS), and the stop says the guest waits, so that
        a primary sends its log now rather than batching it."""
        self._flush_console()
        self._flush_net()
        self._mark_progress()
        self._flush_log()
        self.guest_waits = True
        self.out.after_stop(self)
        self.guest_waits = False

    def _can_wake(self) -> bool:
        m = self.m
        if not m.irq.handler or m.irq.in_handler or not (m.vcpu.reg("rflags") & abi.RFLAGS_IF):
            return False
        return self.host.timer_running() or bool(m.irq.pending) or self.host.net_attached or bool(
            m.disk.inflight) or (
            self.script is not None and bool(self.script.events)) or (
            self.script is None and self.host.input_may_come())

    def _stuck_reason(self):
        m = self.m
        if not m.irq.handler:
            why = "it never registered an interrupt handler"
        elif m.irq.in_handler:
            why = "it is inside its interrupt handler"
        elif not m.vcpu.reg("rflags") & abi.RFLAGS_IF:
            why = "interrupts are disabled (RFLAGS.IF=0)"
        else:
            why = "no timer is set and input has ended"
        return f"guest halted (HLT at pc {m.vcpu.reg('rip') - 1:#x}) and no interrupt can ever wake it: {why}"

    def _maybe_digest(self):
        m, c = self.m, self.config
        since = m.vtime.now() - self._vtime_at_digest
        # Event-driven digests, too, wait for half of the (memory-scaled) interval:
        # a busy server would otherwise hash all its memory many times a second.
        due = c.digest_every_events and self.events - self._events_at_digest >= c.digest_every_events and (
            since >= self._digest_interval_ns // 2)
        if self._digest_interval_ns and since >= self._digest_interval_ns:
            due = True
        if due:
            t0 = time.monotonic_ns()
            self._append(m.digest())
            if self.kernel is not None and self._digest_interval_ns:
                # A Linux process maps far more memory as it runs (allocator arenas,
                # thread stacks) than at the start, where the interval was sized: keep
                # hashing it near 2% of the run, whatever it has grown to (redis-server
                # under load: 180 ms a digest, which had come every 0.7 s).
                cost_ns = time.monotonic_ns() - t0
                self._digest_interval_ns = max(self._digest_interval_ns, self.DIGEST_COST_FACTOR * cost_ns)
            self._logged_at_stop = True
            self._events_at_digest = self.events
            self._vtime_at_digest = m.vtime.now()

    def _end(self, reason, status, detail):
        self._flush_console()
        self._flush_net()
        end = R.End(reason, status, detail, self.m.digest(), time.monotonic_ns() - self._t0)
        self._append(end)
        self._flush_log()
        self.out.exit(self._console_offset, status, detail, self.sink.records)
        self.out.after_stop(self)
        return end


class DeadlinePoker:
    """Stops the emulation (ftvm_poke) when the earliest sleeping thread's deadline
    comes, so that a busy thread does not keep a sleeping one from waking."""

    def __init__(self, cpu):
        import threading
        self.cpu = cpu
        self.cond = threading.Condition()
        self.at_ns = None
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="ftvm-deadline", daemon=True)
        self.thread.start()

    def poke_at(self, host_ns):
        with self.cond:
            if self.at_ns is None or host_ns < self.at_ns:
                self.at_ns = host_ns
                self.cond.notify()

    def _run(self):
        with self.cond:
            while not self.closed:
                if self.at_ns is None:
                    self.cond.wait()
                    continue
                left = (self.at_ns - int(lib.ftvm_host_ns())) / 1e9
                if left > 0:
                    self.cond.wait(left)
                    continue
                self.at_ns = None
                lib.ftvm_poke(self.cpu)

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify()


def inhook_enabled():
    """Linux calls run inside the syscall hook unless FTVM_INHOOK=0 (to measure what
    it saves, or to rule it out)."""
    import os
    return os.environ.get("FTVM_INHOOK", "1") != "0"


def console_write(console):
    return console.sink if console.sink is not None else (lambda data: None)
