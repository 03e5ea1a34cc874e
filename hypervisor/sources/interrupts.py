"""Interrupts and the devices that raise them: the input device and the timer.

Unicorn has no way to inject an interrupt, so delivery is paravirtual: the guest
registers a handler and a return trampoline (port 0x510); to deliver, the hypervisor
saves the whole CPU context, enters the handler with the vector in RDI, interrupts
masked and the trampoline as return address; the trampoline's OUT to port 0x511 makes
the hypervisor restore the saved context. RFLAGS.IF masks delivery, as on hardware.

Record side: ``HostEvents`` gathers what arrives from the host (stdin bytes, timer
ticks) on threads and pokes the CPU to stop at the next block; the machine then turns
arrivals into Input records and deliveries into Irq records, each at the execution
point where it happened. Replay side: the machine applies those records at the same
points, so nothing here runs on a thread during replay.
"""
from __future__ import annotations

import os
import threading
import time

from logging_channel import records as R

from .. import abi
from ..uc import lib

HLT = 0xF4


class InputDevice:
    """A FIFO of bytes the guest reads through ports 0x530/0x531."""

    FIFO_MAX = 1 << 20   # bytes; the host side stops reading stdin while the FIFO is this full

    def __init__(self):
        self.fifo = bytearray()
        self.eof = False       # end of input has been appended
        self.total = 0         # bytes ever appended (the input stream offset)

    def append(self, data: bytes | None):
        if data is None:
            self.eof = True
        else:
            self.fifo += data
            self.total += len(data)

    def status(self) -> int:
        return min(len(self.fifo), 0xFFFF) | (abi.INPUT_EOF_BIT if self.eof and not self.fifo else 0)

    def read(self) -> int:
        if not self.fifo:
            return abi.INPUT_NONE
        b = self.fifo[0]
        del self.fifo[0]
        return b

    # --- record and replay of INPUT records ---------------------------------------------
    def record(self, log, blocks: int, rip: int, data: bytes | None):
        """Record side, at a stop: host input (None: its end) arrives at this point."""
        log(R.Input(blocks, rip, data))
        self.append(data)

    def replay(self, ev: R.Input):
        self.append(ev.data)


class InterruptController:
    """Which vectors wait, where the handler is, and the context saved on delivery."""

    def __init__(self, vcpu):
        self.vcpu = vcpu
        self.handler = 0
        self.trampoline = 0
        self.saved = None          # the interrupted context while a handler runs
        self.pending = set()       # record side: vectors raised and not yet delivered
        self.delivered = 0

    @property
    def in_handler(self) -> bool:
        return self.saved is not None

    def raise_line(self, vector: int):
        self.pending.add(vector)

    def can_deliver(self) -> bool:
        return bool(self.handler) and not self.in_handler and bool(self.vcpu.reg("rflags") & abi.RFLAGS_IF)

    def next_vector(self):
        return min(self.pending) if self.pending else None

    def deliver(self, vector: int):
        """Enter the guest's handler for ``vector``. Returns None, or a string saying
        why the guest cannot take it (the stack has no room)."""
        v = self.vcpu
        self.pending.discard(vector)
        rsp = v.reg("rsp")
        new_rsp = ((rsp - abi.RED_ZONE) & ~0xF) - 8   # as after a call: (rsp + 8) % 16 == 0
        try:
            v.write(new_rsp, self.trampoline.to_bytes(8, "little"))
        except Exception:
            return f"no room on the guest stack (rsp {rsp:#x}) to deliver interrupt {vector}"
        self.saved = v.context()
        v.set_reg("rsp", new_rsp)
        v.set_reg("rip", self.handler)
        v.set_reg("rdi", vector)
        v.set_reg("rflags", v.reg("rflags") & ~abi.RFLAGS_IF)
        self.delivered += 1
        return None

    # --- record and replay of IRQ records -------------------------------------------------
    def record_delivery(self, log, blocks: int, cpu) -> bool:
        """Record side, at a stop: deliver the lowest raised vector if the guest can take
        it here, and log where. Returns True if one was delivered."""
        vector = self.next_vector()
        if vector is None or not self.handler:
            return False              # the line stays raised until a handler is registered
        v = self.vcpu
        rip = v.reg("rip")
        if v.read(rip, 1)[0] == HLT:
            # Let the HLT run first and deliver after it. This keeps `sti; hlt` free of
            # the lost-wakeup race, as the STI interrupt shadow does on hardware.
            return False
        if not self.can_deliver():
            if not self.in_handler:
                cpu.irq_wait = 1      # stop as soon as the guest sets RFLAGS.IF
            return False
        if self.deliver(vector):
            self.pending.discard(vector)
            return False
        log(R.Irq(blocks, rip, vector))
        return True

    def replay(self, ev: R.Irq):
        """Replay side: deliver where the log says. Returns None, or why the guest
        cannot take it here (a divergence)."""
        if not self.can_deliver():
            return f"the log delivers interrupt {ev.vector} here, but the guest cannot take it"
        return self.deliver(ev.vector)

    def iret(self):
        """Back to the interrupted context. Returns False if no handler was running."""
        if self.saved is None:
            return False
        self.vcpu.restore_context(self.saved)
        self.saved = None
        return True


class HostEvents:
    """Record side: stdin bytes and timer ticks arriving on host threads.

    Every arrival sets the CPU's async stop request, so the emulation thread picks it up
    at the next block boundary. ``take`` hands over what has arrived; ``wait`` blocks a
    halted guest until something does."""

    def __init__(self, cpu, stdin_fd: int | None, external_input=False, eof_taken=False):
        self._cpu = cpu
        self._cond = threading.Condition()
        self._data = bytearray()
        self._eof = (stdin_fd is None and not external_input) or eof_taken
        self._eof_taken = eof_taken
        self._ticks = 0
        self._timer_period_us = 0
        self._timer_gen = 0
        self._closed = False
        self._net = []               # (conn, type, data) from the front end
        self._disk = []              # (request id, status, data) from the disk worker
        self.net_attached = False    # a front end may bring connections at any time
        self._stdin_fd = stdin_fd
        if stdin_fd is not None:
            threading.Thread(target=self._read_stdin, name="ftvm-stdin", daemon=True).start()

    def _read_stdin(self):
        while True:
            with self._cond:
                while len(self._data) >= InputDevice.FIFO_MAX and not self._closed:
                    self._cond.wait(0.1)   # back-pressure: the guest is not reading
                if self._closed:
                    return
            try:
                chunk = os.read(self._stdin_fd, 65536)
            except OSError:
                chunk = b""
            with self._cond:
                if chunk:
                    self._data += chunk
                else:
                    self._eof = True
                self._poke()
            if not chunk:
                return

    def set_timer(self, period_us: int):
        with self._cond:
            self._timer_gen += 1
            self._timer_period_us = period_us
            if period_us:
                threading.Thread(target=self._tick, args=(self._timer_gen, period_us / 1e6),
                                 name="ftvm-timer", daemon=True).start()

    def _tick(self, gen, period_s):
        deadline = time.monotonic() + period_s
        while True:
            time.sleep(max(0.0, deadline - time.monotonic()))
            deadline += period_s
            with self._cond:
                if self._timer_gen != gen or self._closed:
                    return
                self._ticks += 1
                self._poke()

    def bind(self, cpu):
        """Poke this CPU on arrivals (for a HostEvents made before its machine)."""
        with self._cond:
            self._cpu = cpu
            if self._data or self._eof:
                lib.ftvm_poke(cpu)

    def _poke(self):
        if self._cpu is not None:
            lib.ftvm_poke(self._cpu)
        self._cond.notify_all()

    def push_input(self, data: bytes | None):
        """Input from elsewhere (the observer, over the network); None is end of input."""
        with self._cond:
            if data is None:
                self._eof = True
            else:
                self._data += data
            self._poke()

    def push_net(self, events):
        """Network events from the front end: [(conn, type, data)]."""
        with self._cond:
            self._net.extend(events)
            self._poke()

    def push_disk(self, req: int, status: int, data):
        with self._cond:
            self._disk.append((req, status, data))
            self._poke()

    def take_net(self):
        with self._cond:
            out, self._net = self._net, []
            return out

    def take_disk(self):
        with self._cond:
            out, self._disk = self._disk, []
            return out

    def start_poker(self, interval_s: float):
        """Ask for a stop every ``interval_s`` (for periodic digests); nothing is logged
        by the poke itself."""
        def poke():
            while True:
                time.sleep(interval_s)
                with self._cond:
                    if self._closed:
                        return
                    if self._cpu is not None:
                        lib.ftvm_poke(self._cpu)
        threading.Thread(target=poke, name="ftvm-poker", daemon=True).start()

    def take(self):
        """(data or b'', eof_now, ticks): what arrived since the last call. eof_now is
        true once, when end of input is first handed over."""
        with self._cond:
            data, self._data = bytes(self._data), bytearray()
            eof_now = self._eof and not self._data and not self._eof_taken
            if eof_now:
                self._eof_taken = True
            ticks, self._ticks = self._ticks, 0
            if data:
                self._cond.notify_all()
            return data, eof_now, ticks

    def input_may_come(self) -> bool:
        with self._cond:
            return not self._eof_taken or bool(self._data)

    def timer_running(self) -> bool:
        return self._timer_period_us != 0

    def wait(self, timeout_s: float):
        with self._cond:
            if not self._data and not self._ticks and not (self._eof and not self._eof_taken) \
                    and not self._net and not self._disk:
                self._cond.wait(timeout_s)

    def close(self):
        with self._cond:
            self._closed = True
            self._timer_gen += 1
            self._cond.notify_all()
