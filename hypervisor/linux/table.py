"""The one table of system calls: each implemented call once, with its argument kinds
(for strace-like display in `ftvm log show` and divergence reports) and its family.
Handlers register here from the family modules (files, memory, time and random,
process); docs/linux.md's status table is printed from this table
(``python -m hypervisor.linux.table``), so the two cannot drift.

Argument kinds: fd, int, hex, path (a guest string), buf (a guest buffer the call
reads), obuf (one it fills), size, flags:NAME (decoded by name), ptr.
"""
from __future__ import annotations

import errno

from .sysnames import NAMES, NUMBERS

HANDLERS = {}      # nr -> handler(kernel, *args) -> int
NARGS = {}         # nr -> how many arguments are logged and shown
SPECS = {}         # nr -> (family, [arg kinds], note)
# Calls answered with an error on purpose, and why (shown once on stderr when used).
REFUSED = {"fork": "one process per run", "vfork": "one process per run", "execve": "one process per run"}


def syscall(name, *kinds, family, note=""):
    def deco(fn):
        nr = NUMBERS[name]
        HANDLERS[nr] = fn
        NARGS[nr] = len(kinds)
        SPECS[nr] = (family, list(kinds), note)
        return fn
    return deco


OPEN_FLAGS = [(0o100, "O_CREAT"), (0o200, "O_EXCL"), (0o400, "O_NOCTTY"), (0o1000, "O_TRUNC"),
              (0o2000, "O_APPEND"), (0o4000, "O_NONBLOCK"), (0o200000, "O_DIRECTORY"),
              (0o400000, "O_NOFOLLOW"), (0o2000000, "O_CLOEXEC"), (0o10000000, "O_PATH")]
MMAP_PROT = [(1, "PROT_READ"), (2, "PROT_WRITE"), (4, "PROT_EXEC")]
MMAP_FLAGS = [(1, "MAP_SHARED"), (2, "MAP_PRIVATE"), (0x10, "MAP_FIXED"), (0x20, "MAP_ANONYMOUS"),
              (0x100, "MAP_GROWSDOWN"), (0x800, "MAP_DENYWRITE"), (0x4000, "MAP_NORESERVE"),
              (0x8000, "MAP_POPULATE"), (0x20000, "MAP_STACK"), (0x100000, "MAP_FIXED_NOREPLACE")]
FLAG_SETS = {"open": OPEN_FLAGS, "prot": MMAP_PROT, "mmap": MMAP_FLAGS}


def _flags(value, table, accmode=False):
    parts = []
    if accmode:
        parts.append(("O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE")[value & 3])
    rest = value & ~3 if accmode else value
    for bit, name in table:
        if rest & bit:
            parts.append(name)
            rest &= ~bit
    if rest:
        parts.append(hex(rest))
    return "|".join(parts) or "0"


def _signed(v):
    return v - 2**64 if v >= 2**63 else v


def describe_arg(kind, v, strings=None, i=0):
    if kind == "fd":
        s = _signed(v) if v >= 2**31 else v
        return "AT_FDCWD" if (s & 0xFFFFFFFF) == 0xFFFFFF9C else str(s)
    if kind in ("int", "size"):
        return str(_signed(v))
    if kind == "path" and strings and i in strings:
        return repr(strings[i])
    if kind.startswith("flags:"):
        which = kind[6:]
        return _flags(v, FLAG_SETS[which], accmode=(which == "open"))
    return hex(v)


def describe_call(nr, args, ret, strings=None):
    """strace-like: name(args) = ret."""
    name = NAMES.get(nr, f"syscall_{nr}")
    spec = SPECS.get(nr)
    kinds = spec[1] if spec else ["hex"] * len(args)
    shown = ", ".join(describe_arg(k, a, strings, i) for i, (k, a) in enumerate(zip(kinds, args)))
    text = f"{name}({shown})"
    if ret is not None:
        text += f" = {describe_ret(ret)}"
    return text


def describe_ret(ret):
    r = _signed(ret)
    if -4096 < r < 0:
        return f"-1 {errno.errorcode.get(-r, str(-r))}"
    if r > 0xFFFF:
        return hex(r)
    return str(r)


def load_families():
    """Import the family modules so their handlers register."""
    from . import calls_files, calls_memory, calls_process, calls_time, net, signals, threads  # noqa: F401


def status_rows():
    """(nr, name, family, status, note) for every Linux call, for docs/linux.md."""
    load_families()
    rows = []
    for nr, name in sorted(NAMES.items()):
        if nr in SPECS:
            fam, _kinds, note = SPECS[nr]
            rows.append((nr, name, fam, "implemented", note))
        elif name in REFUSED:
            rows.append((nr, name, "process", "refused", REFUSED[name]))
    return rows


def status_table():
    """The Markdown table docs/linux.md carries (a test checks they agree)."""
    lines = ["| nr | call | family | status | note |", "|---|---|---|---|---|"]
    for nr, name, fam, status, note in status_rows():
        lines.append(f"| {nr} | {name} | {fam} | {status} | {note} |")
    return "\n".join(lines) + "\n"


def update_doc(path):
    """Put the current status table into docs/linux.md (between its header row and the
    next section)."""
    with open(path) as f:
        text = f.read()
    start = text.index("| nr | call | family | status | note |")
    end = text.index("\n## ", start)
    with open(path, "w") as f:
        f.write(text[:start] + status_table() + text[end:])


if __name__ == "__main__":
    import sys
    from hypervisor.linux import table as _t     # the module the families registered in
    _t.load_families()
    if sys.argv[1:2] == ["--update"]:
        _t.update_doc(sys.argv[2])
    else:
        print(_t.status_table(), end="")
