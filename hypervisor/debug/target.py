"""What gdb sees of the x86-64 CPU: a target description (so that gdb 13 shows the
segment bases fs_base/gs_base next to the general, x87 and SSE registers) and the
register file in that order, read from the VCPU."""
from __future__ import annotations

from ..uc import X86

_GPR = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"] + [f"r{i}" for i in range(8, 16)]
_SEG = ["cs", "ss", "ds", "es", "fs", "gs"]
_X87 = ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"]

# (name, bits, how to read it): a Unicorn register id, or a callable(vcpu).
REGISTERS = (
    [(n, 64, getattr(X86, f"UC_X86_REG_{n.upper()}")) for n in _GPR]
    + [("rip", 64, X86.UC_X86_REG_RIP), ("eflags", 32, X86.UC_X86_REG_EFLAGS)]
    + [(n, 32, getattr(X86, f"UC_X86_REG_{n.upper()}")) for n in _SEG]
    + [(f"st{i}", 80, getattr(X86, f"UC_X86_REG_FP{i}")) for i in range(8)]
    + [("fctrl", 32, X86.UC_X86_REG_FPCW), ("fstat", 32, X86.UC_X86_REG_FPSW), ("ftag", 32, X86.UC_X86_REG_FPTAG)]
    + [(n, 32, None) for n in _X87[3:]]
    + [(f"xmm{i}", 128, X86.UC_X86_REG_XMM0 + i) for i in range(16)]
    + [("mxcsr", 32, X86.UC_X86_REG_MXCSR), ("orig_rax", 64, "orig_rax"),
       ("fs_base", 64, X86.UC_X86_REG_FS_BASE), ("gs_base", 64, X86.UC_X86_REG_GS_BASE)]
)
NAMES = [r[0] for r in REGISTERS]


def _reg_xml(num, name, bits):
    if name in _GPR:
        t = "data_ptr" if name in ("rbp", "rsp") else "int64"
        return f'<reg name="{name}" bitsize="64" type="{t}" regnum="{num}"/>'
    t = {"rip": "code_ptr", "eflags": "i386_eflags"}.get(name)
    if t is None:
        if name.startswith("st"):
            t = "i387_ext"
        elif name.startswith("xmm"):
            t = "vec128"
        elif name in ("fs_base", "gs_base", "orig_rax"):
            t = "int"
        else:
            t = "int32" if name in _SEG else "int"
    group = ' group="float"' if name in _X87 else (' group="vector"' if name == "mxcsr" else "")
    return f'<reg name="{name}" bitsize="{bits}" type="{t}" regnum="{num}"{group}/>'


def target_xml() -> str:
    regs = {name: (i, bits) for i, (name, bits, _) in enumerate(REGISTERS)}

    def block(names):
        return "\n    ".join(_reg_xml(regs[n][0], n, regs[n][1]) for n in names)
    core = _GPR + ["rip", "eflags"] + _SEG + [f"st{i}" for i in range(8)] + _X87
    flags = "".join(f'<field name="{n}" start="{b}" end="{b}"/>' for n, b in
                    (("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9),
                     ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18), ("VIF", 19),
                     ("VIP", 20), ("ID", 21)))
    vec = ('<vector id="v4f" type="ieee_single" count="4"/><vector id="v2d" type="ieee_double" count="2"/>'
           '<vector id="v16i8" type="int8" count="16"/><vector id="v8i16" type="int16" count="8"/>'
           '<vector id="v4i32" type="int32" count="4"/><vector id="v2i64" type="int64" count="2"/>'
           '<union id="vec128"><field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>'
           '<field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>'
           '<field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>'
           '<field name="uint128" type="uint128"/></union>')
    return f"""<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
  <architecture>i386:x86-64</architecture>
  <feature name="org.gnu.gdb.i386.core">
    <flags id="i386_eflags" size="4">{flags}</flags>
    {block(core)}
  </feature>
  <feature name="org.gnu.gdb.i386.sse">
    {vec}
    {block([f"xmm{i}" for i in range(16)] + ["mxcsr"])}
  </feature>
  <feature name="org.gnu.gdb.i386.linux">
    {block(["orig_rax"])}
  </feature>
  <feature name="org.gnu.gdb.i386.segments">
    {block(["fs_base", "gs_base"])}
  </feature>
</target>
"""


def read_register(regs, index, orig_rax=-1) -> bytes:
    """Register ``index`` from ``regs`` (the engine, or a thread's saved context: both
    have reg_read), in target byte order."""
    name, bits, how = REGISTERS[index]
    if how is None:
        value = 0
    elif how == "orig_rax":
        value = orig_rax & (2**64 - 1)
    else:
        value = regs.reg_read(how)
        if isinstance(value, tuple):             # x87: (mantissa, exponent)
            value = value[0] | (value[1] << 64)
    return int(value).to_bytes(bits // 8, "little")


def read_all(regs, orig_rax=-1) -> bytes:
    return b"".join(read_register(regs, i, orig_rax) for i in range(len(REGISTERS)))
