"""Replaying: run the guest again from its log alone and check that it does exactly
what the recording did.

The log's records are read in order. RDTSC and random-number results are queued for
the C and Python hooks, which check each is consumed at its logged block count. Every
other record names an execution point (blocks, pc): the CPU runs to that block count,
the PC is checked, and the record is applied (input bytes, an interrupt, a digest to
compare, or the end). Any mismatch stops the replay with a Divergence that names the
point and what differs.
"""
from __future__ import annotations

import dataclasses

from logging_channel import records as R
from logging_channel.logfile import LogReader, scan

from . import abi, elf_loader
from .errors import Divergence, EXIT_INTERRUPTED, LogDamaged, LogTruncated
from .machine import Config, Machine, compare_digests
from .record import Chaos
from .uc import NO_STOP, SYNC_DIVERGED, SYNC_TSC_DRAIN, lib


@dataclasses.dataclass
class _Cut:
    """Stands in for the records a truncated log lost: replay runs to ``blocks``, the
    furthest point the log still vouches for, and stops there."""
    blocks: int
    error: LogTruncated
    kind = -1


@dataclasses.dataclass
class ReplayResult:
    status: int            # what the CLI exits with
    end: R.End | None      # the log's end record, when replay reached it
    message: str
    stopped_at: dict | None = None   # registers, when --to stopped early


class Replayer:
    def __init__(self, path, console, to_blocks=None, to_event=None, chaos: Chaos | None = None):
        self.path = str(path)
        # Refuse a damaged log before running anything; a truncated one replays up to the cut.
        self.total_records, self.log_complete, self.log_cut = scan(path)
        self.reader = LogReader(path)
        self._records = iter(self.reader)
        self.console = console
        self.to_blocks = to_blocks
        self.to_event = to_event
        self.chaos = chaos
        self.events = 0
        self._max_blocks = 0       # the furthest point the log vouches for so far
        try:
            _, offset, header = next(self._records)
        except StopIteration:
            raise LogTruncated(self.path, 0, len(R.FILE_MAGIC), "the log has no header record") from None
        if header.abi != abi.ABI_VERSION:
            raise LogDamaged(self.path, 0, offset, f"guest ABI version {header.abi}, this ftvm runs version {abi.ABI_VERSION}")
        self.header = header
        self.config = Config.from_dict(header.config)
        image = elf_loader.parse(header.elf, f"{self.path} (embedded {header.elf_name})",
                                 mem_limit=max(self.config.mem_limit, abi.MEM_LIMIT_DEFAULT),
                                 stack_size=self.config.stack_size)
        if image.sha256 != header.elf_sha256:
            raise LogDamaged(self.path, 0, offset, "the embedded guest ELF does not match its SHA-256")
        self.m = Machine(image, self.config, "replay", console)

    # --- reading --------------------------------------------------------------------
    def _next_event(self):
        """The next record that happens at an execution point, queueing RDTSC and
        random-number results met on the way."""
        m = self.m
        try:
            for index, offset, rec in self._records:
                if rec.kind == R.TSC:
                    m.vtime.feed(rec)
                    self._max_blocks = max(self._max_blocks, rec.entries[-3])
                elif rec.kind == R.RNG:
                    m.rng.feed(rec)
                    self._max_blocks = max(self._max_blocks, rec.blocks)
                else:
                    self._max_blocks = max(self._max_blocks, rec.blocks)
                    return rec
        except LogTruncated as e:
            return _Cut(self._max_blocks, e)
        return _Cut(self._max_blocks, LogTruncated(self.path, self.reader.records_read, self.reader.bytes_read,
                                                   "the log has no end record (was the recorder killed?)"))

    # --- the loop -------------------------------------------------------------------
    def run(self) -> ReplayResult:
        lib.ftvm_install_signals(self.m.cpu)
        try:
            return self._loop()
        finally:
            lib.ftvm_restore_signals()
            self.m.console.flush()

    def _point(self):
        return self.m.point()

    def _loop(self):
        m, cpu = self.m, self.m.cpu
        ev = self._next_event()
        while True:
            if self.to_event is not None and self.events >= self.to_event and m.blocks >= ev.blocks:
                return self._stop_here(f"stopped before event #{self.events}")
            if self.to_blocks is not None and m.blocks >= self.to_blocks:
                return self._stop_here(f"stopped at block {m.blocks}")
            if m.blocks == ev.blocks:
                if ev.kind == -1:
                    m.console.flush()
                    raise LogTruncated(ev.error.path, ev.error.index, ev.error.offset,
                                       f"{ev.error.reason}; replayed everything before it, up to block {m.blocks}")
                result = self._apply(ev)
                if result is not None:
                    return result
                ev = self._next_event()
                continue
            if m.blocks > ev.blocks:
                raise Divergence(self._point(), f"ran past the log's next {R.KIND_NAMES.get(ev.kind, 'event')} at block {ev.blocks}")
            target = ev.blocks
            if self.to_blocks is not None:
                target = min(target, self.to_blocks)
            if self.chaos:
                target = min(target, self.chaos.next_stop(m.blocks))
            lib.ftvm_arm(cpu, target)
            fault = m.vcpu.run()
            if cpu.sync_req & SYNC_DIVERGED:
                raise m.vtime.divergence(self._point())
            if cpu.signal:
                m.console.flush()
                return ReplayResult(EXIT_INTERRUPTED, None, f"replay stopped by signal {cpu.signal} at {self._point()}")
            if fault is not None:
                return self._check_end(ev, "fault", fault.status, f"guest fault: {fault.describe()}")
            if m.exit_status is not None:
                return self._check_end(ev, "exit", m.exit_status, f"guest exited with status {m.exit_status}")
            halted = m.vcpu.halted
            cpu.sync_req = 0
            if m.iret_pending:
                m.finish_iret()
            if m.vtime.cpu.tsc_more and cpu.tsc_len - cpu.tsc_pos < 1024:
                m.vtime.refill()
            if self.chaos:
                self.chaos.at_stop(m)
            if halted and m.blocks < ev.blocks:
                raise Divergence(self._point(), f"the guest halted, but the log's next event "
                                                f"({R.KIND_NAMES.get(ev.kind, 'cut')}) is at block {ev.blocks}")

    def _stop_here(self, why):
        self.m.console.flush()
        return ReplayResult(0, None, f"{why}: {self._point()}", stopped_at=self.m.vcpu.regs())

    def _check_pc(self, ev):
        rip = self.m.vcpu.reg("rip")
        if rip != ev.pc:
            raise Divergence(self._point(), f"the log's {R.KIND_NAMES[ev.kind]} record is at pc {ev.pc:#x}")

    def _apply(self, ev):
        m = self.m
        if ev.kind == R.END:
            if ev.reason in ("exit", "fault"):
                raise Divergence(self._point(), f"the log says the guest ended here ({ev.detail}), but replay did not")
            self._check_pc(ev)
            return self._finish(ev, ev.status, ev.detail)
        self._check_pc(ev)
        self.events += 1
        if ev.kind == R.INPUT:
            m.input.append(ev.data)
        elif ev.kind == R.IRQ:
            if not m.irq.can_deliver():
                raise Divergence(self._point(), f"the log delivers interrupt {ev.vector} here, but the guest cannot take it")
            problem = m.irq.deliver(ev.vector)
            if problem:
                raise Divergence(self._point(), problem)
        elif ev.kind == R.DIGEST:
            diffs = compare_digests(ev, m.digest())
            if diffs:
                raise Divergence(self._point(), "state digest differs: " + "; ".join(diffs))
        return None

    def _check_end(self, ev, reason, status, detail):
        m = self.m
        if ev.kind != R.END or ev.reason != reason:
            raise Divergence(self._point(), f"{detail}, but the log's next event is "
                                            f"{R.KIND_NAMES.get(ev.kind, 'the cut')} at block {ev.blocks}")
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
        try:
            extra = next(self._records, None)
        except (LogDamaged, LogTruncated):
            extra = True
        if extra is not None:
            raise LogDamaged(self.path, self.reader.records_read, self.reader.bytes_read, "data after the end record")
        m.console.flush()
        if ev.reason == "interrupted":
            return ReplayResult(ev.status, ev, f"replay complete: the recording was interrupted here ({detail})")
        return ReplayResult(ev.status, ev, f"replay complete: {detail}")
