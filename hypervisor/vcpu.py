"""The Unicorn shell: one emulated x86-64 CPU with the guest's memory, ftvm's C hooks
(block counting, virtual time) and Python hooks for port I/O and faults.

The engine can be thrown away and rebuilt from a snapshot at any stop (``migrate``):
the execution point, which lives in the C struct ``ftvm_cpu``, carries over unchanged.
"""
from __future__ import annotations

import ctypes
import dataclasses
import mmap

from . import abi, counter, sparse_ram
from .elf_loader import PF_R, PF_W, PF_X, Image
from .uc import UC, X86, ffi, lib, unicorn

_HLT = 0xF4
_STOP_NEVER = (1 << 64) - 1   # emu_start's `until`: not a canonical address, never reached

REGS = {
    "rax": X86.UC_X86_REG_RAX, "rbx": X86.UC_X86_REG_RBX, "rcx": X86.UC_X86_REG_RCX,
    "rdx": X86.UC_X86_REG_RDX, "rsi": X86.UC_X86_REG_RSI, "rdi": X86.UC_X86_REG_RDI,
    "rbp": X86.UC_X86_REG_RBP, "rsp": X86.UC_X86_REG_RSP, "r8": X86.UC_X86_REG_R8,
    "r9": X86.UC_X86_REG_R9, "r10": X86.UC_X86_REG_R10, "r11": X86.UC_X86_REG_R11,
    "r12": X86.UC_X86_REG_R12, "r13": X86.UC_X86_REG_R13, "r14": X86.UC_X86_REG_R14,
    "r15": X86.UC_X86_REG_R15, "rip": X86.UC_X86_REG_RIP, "rflags": X86.UC_X86_REG_RFLAGS,
    "fs_base": X86.UC_X86_REG_FS_BASE, "gs_base": X86.UC_X86_REG_GS_BASE,
    **{f"xmm{i}": X86.UC_X86_REG_XMM0 + i for i in range(16)},
    "mxcsr": X86.UC_X86_REG_MXCSR,
}

# Registers of at most 64 bits, read and written through the C fast path.
_REGS64 = {name: rid for name, rid in REGS.items() if not name.startswith("xmm") and name != "mxcsr"}

# CPU exceptions, and the exit status a native process would get from the signal.
_EXCEPTIONS = {0: ("divide error (#DE)", 136), 1: ("debug trap (#DB)", 133), 3: ("breakpoint (int3)", 133),
               4: ("overflow (#OF)", 139), 5: ("bound range (#BR)", 139), 6: ("invalid opcode (#UD)", 132),
               13: ("general protection fault (#GP)", 139), 14: ("page fault (#PF)", 139)}


@dataclasses.dataclass
class Fault:
    """A guest fault, as seen by a hook: what, where, and the exit status it maps to."""
    what: str
    address: int | None
    pc: int
    status: int

    def describe(self):
        at = f" at address {self.address:#x}" if self.address is not None else ""
        return f"{self.what}{at} (pc {self.pc:#x})"


def _uc_perms(flags):
    p = 0
    if flags & PF_R:
        p |= UC.UC_PROT_READ
    if flags & PF_W:
        p |= UC.UC_PROT_WRITE
    if flags & PF_X:
        p |= UC.UC_PROT_EXEC
    return p


class VCPU:
    """One engine plus the C state. ``ports`` handles IN/OUT; it must offer
    ``port_in(port, size) -> int`` and ``port_out(port, size, value)``."""

    def __init__(self, image: Image, stack_size: int, ports, tsc_buf_pairs: int = 1 << 16):
        self.image = image
        self.stack_size = stack_size
        self._init_cpu(ports, tsc_buf_pairs)
        self.regions = [(start, size, flags) for start, size, flags in image.pages()]
        self.regions.append((abi.STACK_TOP - stack_size, stack_size, PF_R | PF_W))
        # Guest memory is ours (anonymous mappings handed to Unicorn with mem_map_ptr),
        # so digests and snapshots read it in place, without copies.
        self.ram = [mmap.mmap(-1, size) for _, size, _ in self.regions]
        self.uc = self._new_engine()
        for seg in image.segments:
            self.uc.mem_write(seg.vaddr, seg.data)
        self.uc.reg_write(X86.UC_X86_REG_RIP, image.entry)
        self.uc.reg_write(X86.UC_X86_REG_RSP, abi.STACK_TOP - 8)

    def _init_cpu(self, ports, tsc_buf_pairs):
        self.ports = ports
        self.cpu = ffi.new("ftvm_cpu *")
        lib.ftvm_arm(self.cpu, _STOP_NEVER)
        self._tsc_buf = ffi.new("uint64_t[]", 3 * tsc_buf_pairs)
        self.cpu.tsc_buf = self._tsc_buf
        self.cpu.tsc_cap = tsc_buf_pairs
        self.cpu.tsc_high_water = tsc_buf_pairs - 2048
        self.fault: Fault | None = None
        self.halted = False

    # --- engine --------------------------------------------------------------------
    def _new_engine(self):
        uc = unicorn.Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
        # The CPU model whose CPUID says exactly what Unicorn executes: Sandy Bridge
        # offers no RDRAND/RDSEED (they raise #UD, deterministically), no AVX, no BMI.
        # The default (Haswell) offers RDRAND, which returns unlogged host randomness.
        uc.ctl_set_cpu_model(X86.UC_CPU_X86_SANDYBRIDGE)
        self._map_memory(uc)
        self._hooks = []
        # Hooks go in before the first emu_start (see NOTES: hooks added after code was
        # translated may not fire on it).
        user = ctypes.c_void_p(int(ffi.cast("uintptr_t", self.cpu)))
        if counter.mode() == "inline":
            # The translated code counts into self.cpu (a fresh engine after migrate
            # gets the same struct, so the count carries over).
            status = lib.ftvm_counter_install(ffi.cast("void *", uc._uch.value), self.cpu)
            if status != UC.UC_ERR_OK:
                raise unicorn.UcError(status)
            # RDTSC/RDTSCP: the same build calls ftvm's C code straight from the
            # translated code (the instruction hooks cost a CPU state sync each).
            status = lib.ftvm_tsc_install(ffi.cast("void *", uc._uch.value), self.cpu)
            if status != UC.UC_ERR_OK:
                raise unicorn.UcError(status)
        else:
            self._add_c_hook(uc, UC.UC_HOOK_BLOCK, "ftvm_block_hook", user)
            self._add_c_hook(uc, UC.UC_HOOK_INSN, "ftvm_rdtsc_hook", user, X86.UC_X86_INS_RDTSC)
            self._add_c_hook(uc, UC.UC_HOOK_INSN, "ftvm_rdtscp_hook", user, X86.UC_X86_INS_RDTSCP)
        uc.hook_add(UC.UC_HOOK_INSN, self._on_in, None, 1, 0, X86.UC_X86_INS_IN)
        uc.hook_add(UC.UC_HOOK_INSN, self._on_out, None, 1, 0, X86.UC_X86_INS_OUT)
        self._syscall_hook(uc, user)
        # No memory-fault hooks: Unicorn keeps every guest store on its slow path
        # while any memory hook exists (uc_mem_hook_installed in cputlb.c), which made
        # compute.elf record in 1.5 s of CPU instead of 0.4 s. A fault ends emu_start
        # with an error instead, and run() names the address from the faulting
        # instruction's operand.
        uc.hook_add(UC.UC_HOOK_INSN_INVALID, self._on_invalid)
        uc.hook_add(UC.UC_HOOK_INTR, self._on_intr)
        self._uch = ffi.cast("void *", uc._uch.value)
        return uc

    def _map_memory(self, uc):
        for (start, size, flags), ram in zip(self.regions, self.ram):
            uc.mem_map_ptr(start, size, _uc_perms(flags), ctypes.addressof(ctypes.c_char.from_buffer(ram)))

    def _syscall_hook(self, uc, user):
        uc.hook_add(UC.UC_HOOK_INSN, self._on_syscall, None, 1, 0, X86.UC_X86_INS_SYSCALL)

    def _add_c_hook(self, uc, kind, name, user, insn=None):
        handle = ctypes.c_size_t()
        fn = ctypes.c_void_p(int(ffi.cast("uintptr_t", getattr(lib, name))))
        extra = () if insn is None else (ctypes.c_int(insn),)
        status = unicorn.unicorn_py3.unicorn.uclib.uc_hook_add(
            uc._uch, ctypes.byref(handle), kind, fn, user, ctypes.c_uint64(1), ctypes.c_uint64(0), *extra)
        if status != UC.UC_ERR_OK:
            raise unicorn.UcError(status)
        self._hooks.append(handle)

    def migrate(self):
        """Move the whole CPU and memory state into a fresh engine, memory copied into
        fresh host pages (as a state transfer to another process would)."""
        ctx = self.uc.context_save()
        fresh = []
        for ram in self.ram:
            m = mmap.mmap(-1, len(ram))
            m[:] = ram
            fresh.append(m)
        old, self.uc = self.uc, None
        old_ram, self.ram = self.ram, fresh
        self.uc = self._new_engine()
        self.uc.context_restore(ctx)
        _close_engine(old)      # before its memory goes: the engine points into it
        for m in old_ram:
            try:
                m.close()
            except BufferError:     # a ctypes view still exists; the GC will free it
                pass

    # --- running -------------------------------------------------------------------
    def run(self):
        """Run until something stops the engine. Returns the Fault, if the guest faulted.
        Afterwards ``halted`` says whether the guest stopped in HLT."""
        self.fault = None
        stops = self.cpu.hook_stops
        try:
            self.uc.emu_start(self.reg("rip"), _STOP_NEVER)
        except unicorn.UcError as e:
            if self.fault is None:
                pc = self.reg("rip")
                kind = _ERR_FAULTS.get(getattr(e, "errno", None))
                if kind is not None:
                    addr = pc if "fetch" in kind else _operand_address(self, pc)
                    self.fault = Fault(kind, addr, pc, 139)
                else:
                    self.fault = Fault(f"emulation error: {e}", None, pc, abi_status_for(e))
        rip = self.reg("rip")
        self.halted = (self.fault is None and self.cpu.hook_stops == stops and not self.cpu.sync_req
                       and self._byte_before(rip) == _HLT)
        return self.fault

    def _byte_before(self, rip):
        try:
            return self.uc.mem_read(rip - 1, 1)[0]
        except unicorn.UcError:
            return None

    # --- hooks (Python) --------------------------------------------------------------
    def _on_in(self, uc, port, size, user):
        try:
            return self.ports.port_in(port, size) & ((1 << (8 * size)) - 1)
        except BaseException as e:
            # The binding's guard would keep the exception but hand ctypes None for the
            # value read, and ctypes prints "Exception ignored on converting result of
            # ctypes callback" before emu_start re-raises it. Keep it the same way,
            # stop, and give the IN a value.
            if uc._hook_exception is None:
                uc._hook_exception = e
            uc.emu_stop()
            return 0

    def _on_out(self, uc, port, size, value, user):
        self.ports.port_out(port, size, value)

    def _on_syscall(self, uc, user):
        self.fault = Fault("syscall instruction (not part of guest ABI v1)", None, self.reg("rip"), 159)
        uc.emu_stop()

    def _on_invalid(self, uc, user):
        self.fault = Fault("invalid instruction", None, self.reg("rip"), 132)
        return False

    def _on_intr(self, uc, intno, user):
        what, status = _EXCEPTIONS.get(intno, (f"unexpected interrupt {intno} (int {intno:#x})", 132))
        self.fault = Fault(what, None, self.reg("rip"), status)
        uc.emu_stop()

    # --- state ---------------------------------------------------------------------
    def reg(self, name):
        rid = _REGS64.get(name)
        if rid is not None:
            return lib.ftvm_reg_read(self._uch, rid)    # C: ~20x cheaper than the binding
        return self.uc.reg_read(REGS[name])

    def set_reg(self, name, value):
        rid = _REGS64.get(name)
        if rid is not None:
            lib.ftvm_reg_write(self._uch, rid, value & 0xFFFF_FFFF_FFFF_FFFF)
            return
        self.uc.reg_write(REGS[name], value)

    def regs(self, names=None):
        names = names or tuple(REGS)
        return {n: self.uc.reg_read(REGS[n]) for n in names}

    def mem_crcs(self):
        """CRC32 of each mapped region, in address order: [(start, crc)]."""
        return [(start, sparse_ram.crc32(ram)) for (start, _, _), ram in zip(self.regions, self.ram)]

    def read(self, addr, size):
        return bytes(self.uc.mem_read(addr, size))

    def write(self, addr, data):
        self.uc.mem_write(addr, data)

    def context(self):
        return self.uc.context_save()

    def restore_context(self, ctx):
        self.uc.context_restore(ctx)

    @property
    def memory_bytes(self):
        return sum(size for _, size, _ in self.regions)


_ERR_FAULTS = {
    UC.UC_ERR_READ_UNMAPPED: "read of unmapped memory", UC.UC_ERR_WRITE_UNMAPPED: "write to unmapped memory",
    UC.UC_ERR_FETCH_UNMAPPED: "instruction fetch from unmapped memory",
    UC.UC_ERR_WRITE_PROT: "write to read-only memory", UC.UC_ERR_READ_PROT: "read of unreadable memory",
    UC.UC_ERR_FETCH_PROT: "instruction fetch from non-executable memory",
}
_CS = None


# Instructions whose memory access is the stack, not an operand: where they access it.
_STACK_ACCESS = {"push": -8, "call": -8, "pushfq": -8, "pop": 0, "ret": 0, "popfq": 0}


def _operand_address(vcpu, pc):
    """The memory address the instruction at ``pc`` accesses (its memory operand:
    base + index * scale + displacement, from the registers before it ran; for a push,
    call, pop or ret, the stack slot), or None."""
    global _CS
    try:
        import capstone
        from capstone import x86_const as CX
        if _CS is None:
            _CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
            _CS.detail = True
        insn = next(_CS.disasm(vcpu.read(pc, 16), pc), None)
        if insn is None:
            return None
        for op in insn.operands:
            if op.type != CX.X86_OP_MEM:
                continue
            m = op.mem

            def reg(r):
                if r == 0:
                    return 0
                if r == CX.X86_REG_RIP:
                    return pc + insn.size
                name = insn.reg_name(r)
                return vcpu.reg(name) if name in REGS else 0
            addr = reg(m.base) + reg(m.index) * (m.scale or 1) + m.disp
            if m.segment == CX.X86_REG_FS:
                addr += vcpu.reg("fs_base")
            elif m.segment == CX.X86_REG_GS:
                addr += vcpu.reg("gs_base")
            return addr & 0xFFFF_FFFF_FFFF_FFFF
        delta = _STACK_ACCESS.get(insn.mnemonic)
        if delta is not None:
            return (vcpu.reg("rsp") + delta) & 0xFFFF_FFFF_FFFF_FFFF
    except Exception:      # the address is a nicety in a message: never fail on it
        return None
    return None


def _close_engine(uc):
    """Free a Unicorn engine now rather than whenever the garbage collector gets to it
    (the binding closes it from a weakref finalizer, which is idempotent)."""
    fin = getattr(uc, "_Uc__finalizer", None)
    if fin is not None:
        fin()


def abi_status_for(err):
    code = getattr(err, "errno", None)
    if code in (UC.UC_ERR_INSN_INVALID,):
        return 132
    if code in (UC.UC_ERR_EXCEPTION,):
        return 132
    return 139
