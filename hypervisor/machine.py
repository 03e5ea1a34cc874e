"""The machine: a VCPU plus ftvm's devices, shared by recording and replaying.

It owns the port I/O of guest ABI v1 and the state digest. The loops that drive it
live in record.py and replay.py.
"""
from __future__ import annotations

import dataclasses

from logging_channel import records as R

from . import abi
from .console import Console
from .sources.disk import DiskDevice
from .sources.interrupts import InputDevice, InterruptController
from .sources.net import NetDevice
from .sources.rng import RngDevice
from .sources.vtime import VirtualTime
from .uc import SYNC_HYPERCALL, lib
from .vcpu import VCPU


@dataclasses.dataclass
class Config:
    stack_size: int = abi.STACK_SIZE_DEFAULT
    mem_limit: int = abi.MEM_LIMIT_DEFAULT
    digest_interval_ms: int = 250        # a state digest every this much guest time (0: off)
    digest_every_events: int = 1000      # ... and every this many events (0: off)
    tsc_synthetic_ns_per_block: int = 0  # 0: guest time follows the host clock
    disk_sectors: int = 0                # size of the attached disk (0: none)
    disk_reads: str = "log"              # "log": read data travels in the log; "shared": the backup reads the image

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Machine:
    def __init__(self, image, config: Config, mode: str, console: Console, log_append=None, entropy=None):
        assert mode in ("record", "replay")
        self.mode = mode
        self.config = config
        self.console = console
        self.vcpu = VCPU(image, config.stack_size, self)
        self.cpu = self.vcpu.cpu
        self.vtime = VirtualTime(self.cpu, mode, config.tsc_synthetic_ns_per_block)
        self.rng = RngDevice(mode, log_append, **({"entropy": entropy} if entropy else {}))
        self.irq = InterruptController(self.vcpu)
        self.input = InputDevice()
        self.netout = Console()          # the network output stream (frames, see sources/net.py)
        self.net = NetDevice(self.vcpu, self.netout)
        self.disk = DiskDevice(self.vcpu, config.disk_sectors)
        self.timer_period_us = 0
        self.on_timer_change = None      # record side: start/stop the host timer
        self.exit_status = None
        self.iret_pending = False
        self.bad_hypercall = None

    # --- execution point -------------------------------------------------------------
    @property
    def blocks(self) -> int:
        return int(self.cpu.blocks)

    def point(self) -> str:
        return f"block {self.blocks} pc {self.vcpu.reg('rip'):#x}"

    def _stop_after_this_block(self):
        lib.ftvm_request(self.cpu, SYNC_HYPERCALL)

    # --- port I/O (called from Unicorn hooks) -------------------------------------------
    def port_in(self, port, size):
        if port == abi.PORT_CONSOLE:
            return 0xE9
        if port == abi.PORT_INPUT_STATUS:
            return self.input.status()
        if port == abi.PORT_INPUT_DATA:
            return self.input.read()
        if port == abi.PORT_RNG:
            return self.rng.read(self.blocks, f"block {self.blocks}")
        if port == abi.PORT_NET_STATUS:
            return self.net.status()
        if port == abi.PORT_DISK_SECTORS:
            return self.disk.sectors
        return 0xFFFFFFFF            # no device: reads float high, as on a PC

    def port_out(self, port, size, value):
        if port == abi.PORT_CONSOLE:
            self.console.put(value & 0xFF)
        elif port == abi.PORT_EXIT:
            self.exit_status = value & 0xFF
            self._stop_after_this_block()
        elif port == abi.PORT_IRQ_HANDLER:
            self.irq.handler = self.vcpu.reg("rdi")
            self.irq.trampoline = self.vcpu.reg("rsi")
            self._stop_after_this_block()   # a raised line may now be deliverable
        elif port == abi.PORT_IRQ_RETURN:
            self.iret_pending = True
            self._stop_after_this_block()
        elif port == abi.PORT_TIMER:
            period = value & 0xFFFFFFFF
            if period:
                period = max(period, abi.TIMER_PERIOD_MIN_US)
            self.timer_period_us = period
            if self.on_timer_change:
                self.on_timer_change(period)
        elif abi.PORT_NET_RECV <= port <= abi.PORT_NET_CLOSE or port == abi.PORT_DISK_SUBMIT:
            self._hypercall(port)
        # Writes to other ports go nowhere, as on a PC.

    def _hypercall(self, port):
        v = self.vcpu
        a, b, c = v.reg("rdi"), v.reg("rsi"), v.reg("rcx")
        try:
            if port == abi.PORT_NET_RECV:
                self.net.recv(a, b, c)
            elif port == abi.PORT_NET_SEND:
                self.net.send(a, b, c & 0xFFFFFFFF)
            elif port == abi.PORT_NET_CLOSE:
                self.net.close(a)
            else:
                self.disk.submit(a)
                self._stop_after_this_block()    # hand the request to the host at once
        except Exception as e:   # a bad guest pointer or length: the guest's fault, not ours
            from .vcpu import Fault
            what = {abi.PORT_NET_RECV: "NET_RECV", abi.PORT_NET_SEND: "NET_SEND",
                    abi.PORT_NET_CLOSE: "NET_CLOSE", abi.PORT_DISK_SUBMIT: "DISK_SUBMIT"}[port]
            v.fault = Fault(f"bad arguments to the {what} hypercall ({e})", a, v.reg("rip"), 139)
            v.uc.emu_stop()

    def finish_iret(self):
        """Complete a return from the interrupt handler (after the stop it asked for)."""
        self.iret_pending = False
        return self.irq.iret()

    # --- digest ----------------------------------------------------------------------
    def digest(self) -> R.Digest:
        regs = self.vcpu.regs(R.DIGEST_REGS)
        out_bytes, out_crc = self.console.summary()
        return R.Digest(self.blocks, regs["rip"], int(self.cpu.tsc_last),
                        tuple(regs[n] for n in R.DIGEST_REGS), tuple(self.vcpu.mem_crcs()), out_bytes, out_crc)


def compare_digests(want: R.Digest, got: R.Digest):
    """What differs between two digests, as a list of short strings (empty: equal)."""
    diffs = []
    if (want.blocks, want.pc) != (got.blocks, got.pc):
        diffs.append(f"execution point: log block {want.blocks} pc {want.pc:#x}, replay block {got.blocks} pc {got.pc:#x}")
    for name, a, b in zip(R.DIGEST_REGS, want.regs, got.regs):
        if a != b:
            diffs.append(f"{name}: log {a:#x}, replay {b:#x}")
    for (start, a), (_, b) in zip(want.mem, got.mem):
        if a != b:
            diffs.append(f"memory region at {start:#x}: crc32 log {a:#010x}, replay {b:#010x}")
    if want.vtime != got.vtime:
        diffs.append(f"guest time: log {want.vtime} ns, replay {got.vtime} ns")
    if (want.out_bytes, want.out_crc) != (got.out_bytes, got.out_crc):
        diffs.append(f"console output: log {want.out_bytes} bytes crc {want.out_crc:#010x}, "
                     f"replay {got.out_bytes} bytes crc {got.out_crc:#010x}")
    return diffs
