"""The Linux machine: a VCPU whose memory is a Linux address space, the kernel of the
Linux personality, and the devices a Linux process reaches through it (the console
for stdout and stderr, the input device for stdin). It offers the same interface as
the ftvm-ABI Machine, so recording, replay, the backup and the observer drive both.
"""
from __future__ import annotations

import os

from logging_channel import records as R

from ..console import Console
from ..machine import Config
from ..sources.disk import DiskDevice
from ..sources.interrupts import InputDevice, InterruptController
from ..sources.rng import RngDevice
from ..sources.vtime import VirtualTime
from ..uc import X86, lib
from ..vcpu import VCPU
from . import loader
from .calls_files import Files
from .fs import RootMismatch, file_identity
from .kernel import Kernel
from .memory import AddressSpace
from .spec import LinuxSpec
from .table import load_families


class LinuxVCPU(VCPU):
    def __init__(self, ports, tsc_buf_pairs: int = 1 << 16):
        self.image = None
        self.stack_size = 0
        self.regions, self.ram = [], []
        self._init_cpu(ports, tsc_buf_pairs)
        self.mem = None
        self.uc = self._new_engine()
        self.mem = AddressSpace(self.uc)

    def _map_memory(self, uc):
        # The address space maps memory as the guest asks. (Unicorn's virtual TLB mode
        # measured 3x slower on python3: without a fill hook it grants one access kind
        # per fill, so a page read and written refills on every switch.)
        pass

    def _syscall_hook(self, uc, user):
        self._add_c_hook(uc, 2, "ftvm_syscall_hook", user, X86.UC_X86_INS_SYSCALL)   # UC_HOOK_INSN

    def _on_in(self, uc, port, size, user):
        from ..vcpu import Fault
        self.fault = Fault("in instruction (privileged in a Linux process)", None, self.reg("rip"), 139)
        uc.emu_stop()
        return 0

    def _on_out(self, uc, port, size, value, user):
        from ..vcpu import Fault
        self.fault = Fault("out instruction (privileged in a Linux process)", None, self.reg("rip"), 139)
        uc.emu_stop()

    def migrate(self):
        ctx = self.uc.context_save()
        st = self.mem.state()
        blobs = {v[0]: self.mem.read(v[0], v[1] - v[0]) for v in self.mem.vmas}
        from ..vcpu import _close_engine
        old, self.uc = self.uc, None
        self.uc = self._new_engine()
        self.uc.context_restore(ctx)
        self.mem.uc = self.uc
        self.mem.restore(st, lambda a, b: blobs[a])
        _close_engine(old)

    def mem_crcs(self):
        return self.mem.crcs()

    @property
    def memory_bytes(self):
        return self.mem.mapped_bytes


class LinuxMachine:
    """Same interface as machine.Machine (see there); ``kernel`` is the personality."""

    def __init__(self, spec: LinuxSpec, config: Config, mode: str, console: Console, entropy=None, start=True):
        assert mode in ("record", "replay")
        load_families()
        self.linux = True
        self.spec = spec
        self.mode = mode
        self.config = config
        self.console = console
        self.vcpu = LinuxVCPU(self)
        self.cpu = self.vcpu.cpu
        self.vtime = VirtualTime(self.cpu, mode, config.tsc_synthetic_ns_per_block)
        self.rng = RngDevice(mode, None, **({"entropy": entropy} if entropy else {}))
        self.irq = InterruptController(self.vcpu)
        self.input = InputDevice()
        self.netout = Console()
        from .net import LinuxNet
        self.net = LinuxNet(self.vcpu, self.netout)
        self.disk = DiskDevice(self.vcpu, 0)
        self.timer_period_us = 0
        self.on_timer_change = None
        self.exit_status = None
        self.iret_pending = False
        self.bad_hypercall = None
        k = self.kernel = Kernel(self, mode)
        _setup_kernel(k, spec)
        self.net.kernel = k
        if start:
            self._start()       # else a snapshot fills it in

    def _start(self):
        spec, k = self.spec, self.kernel
        host_prog = k.files.root_host(spec.program)
        ident = file_identity(host_prog)
        if ident is None:
            from ..errors import BadElf
            raise BadElf(f"{spec.program}: no such program in the root {spec.root}")
        if spec.program_sha256 and ident[2] != spec.program_sha256:
            raise RootMismatch(f"root file {spec.program}: the recording ran {spec.program_sha256[:16]}…, "
                               f"this host has {ident[2][:16]}…")
        with open(host_prog, "rb") as f:
            data = f.read()
        prog = loader.parse(data, spec.program)

        def read_root(path):
            host = k.files.root_host(path)
            got = file_identity(host)
            if got is None:
                from ..errors import BadElf
                raise BadElf(f"{spec.program}: its interpreter {path} is not in the root {spec.root} "
                             "(a dynamically linked program needs its loader and libraries there)")
            want = spec.files.get(path)
            if want is not None and want != got[2]:
                raise RootMismatch(f"root file {path}: the recording used sha256 {want[:16]}…, this host has "
                                   f"{got[2][:16]}…")
            spec.files[path] = got[2]
            with open(host, "rb") as f:
                return f.read()
        pc, rsp, brk = loader.load_process(k.mem, spec.root, spec.program, prog, spec.argv, spec.env,
                                           bytes.fromhex(spec.at_random), read_root)
        k.mem.set_brk_start(brk)
        v = self.vcpu
        v.set_reg("rip", pc)
        v.set_reg("rsp", rsp)
        v.set_reg("rdx", 0)

    # --- the Machine interface -------------------------------------------------------------
    @property
    def blocks(self) -> int:
        return int(self.cpu.blocks)

    def point(self) -> str:
        return f"block {self.blocks} pc {self.vcpu.reg('rip'):#x}"

    def port_in(self, port, size):
        return 0xFFFFFFFF

    def port_out(self, port, size, value):
        pass

    def finish_iret(self):
        self.iret_pending = False
        return False

    def digest(self) -> R.Digest:
        regs = self.vcpu.regs(R.DIGEST_REGS)
        out_bytes, out_crc = self.console.summary()
        return R.Digest(self.blocks, regs["rip"], int(self.cpu.tsc_last),
                        tuple(regs[n] for n in R.DIGEST_REGS), tuple(self.vcpu.mem_crcs()), out_bytes, out_crc)


def _setup_kernel(k, spec):
    k.mem = k.m.vcpu.mem
    k.argv, k.envp = spec.argv, spec.env
    k.realtime_base_ns = spec.realtime_base_ns
    k.files = Files(spec.root, spec.data_host, spec.data_guest, spec.cwd, spec.program)
    k.files.std()
    k.shared_maps = []
    k.rlimits = {}
    k.sigactions = {}
    from .threads import Threads
    from .net import Sockets
    k.threads = Threads(k)
    k.spec_listen_port = spec.listen_port
    k.sockets = Sockets(k)
    k.rseq = 0
    k._sleep_start = None
    _ = os
    _ = lib
