"""`ftvm log show` and `ftvm log stats`: reading a log for people (and for jq)."""
from __future__ import annotations

import json
import sys

from logging_channel import records as R
from logging_channel.logfile import LogReader

from . import abi, elf_loader
from .errors import EXIT_USAGE, FtvmError


class Symbols:
    """PC -> 'function+offset' and the instruction there: from the embedded ELF (ftvm-ABI
    guests), or for a Linux program from the files of its root on this host, when they are
    here and the same as in the recording: the program, its interpreter, and the libraries
    the log shows it mapping (``observe``). Symbols are a nicety: nothing here fails."""

    def __init__(self, header: R.Header):
        import capstone
        self.md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self.modules = []          # sorted [(lo, hi, _Module)]
        self.linux = header.config.get("personality") == "linux"
        self.image = None
        self.funcs = []
        if self.linux:
            self._fds = {}
            try:
                self._linux_start(header.config.get("linux") or {})
            except Exception:
                pass
            return
        self.image = elf_loader.parse(header.elf, header.elf_name,
                                      mem_limit=1 << 62, stack_size=header.config.get("stack_size", abi.STACK_SIZE_DEFAULT))
        self.funcs = _elf_symbols(header.elf)

    # --- Linux programs ------------------------------------------------------------------
    def _linux_start(self, spec):
        from .linux import loader
        from .linux.memory import MMAP_TOP, page_down, page_up
        self.root = spec.get("root") or "/"
        self.cwd = spec.get("cwd") or "/"
        program = spec.get("program")
        if not program:
            return
        data = self._root_file(program, spec.get("program_sha256"))
        if data is None:
            return
        prog = loader.parse(data, program)
        lo = page_down(min(v for v, *_ in prog.loads))
        bias = loader.PIE_BASE - lo if prog.type == loader.ET_DYN else 0
        self._add(program, data, bias)
        if prog.interp:
            idata = self._root_file(prog.interp, (spec.get("files") or {}).get(prog.interp))
            if idata is not None:
                interp = loader.parse(idata, prog.interp)
                ilo = page_down(min(v for v, *_ in interp.loads))
                ihi = page_up(max(v + m for v, m, *_ in interp.loads))
                self._add(prog.interp, idata, MMAP_TOP - (ihi - ilo) - ilo)

    def _host_path(self, gpath):
        import posixpath
        gpath = posixpath.normpath(posixpath.join(self.cwd, gpath))
        if self.root == "/":
            return gpath
        from .linux.calls_files import _in_root
        return _in_root(self.root, gpath)

    def _root_file(self, gpath, sha256=None):
        """The bytes of a root file on this host, if it is there (and is the one the
        recording used, when its SHA-256 is known)."""
        import hashlib
        try:
            with open(self._host_path(gpath), "rb") as f:
                data = f.read()
        except OSError:
            return None
        if data[:4] != b"\x7fELF":
            return None
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            return None
        return data

    def _add(self, name, data, bias):
        import bisect
        m = _Module(name, data, bias)
        if m.hi > m.lo:
            bisect.insort(self.modules, (m.lo, m.hi, id(m), m))

    def observe(self, rec):
        """Follow a Linux program's openat and mmap calls in the log, to place the
        libraries it maps (an ELF mapped from offset 0 starts a module)."""
        if not self.linux or rec.kind != R.SYSCALL:
            return
        try:
            from .linux.sysnames import NAMES
            name = NAMES.get(rec.nr)
            ret = rec.ret
            ok = ret < 2**63         # succeeded (and not an address above the user half)
            if name in ("openat", "open") and ok:
                path = dict(rec.strings).get(1 if name == "openat" else 0)
                ident = next((v for v in rec.values if isinstance(v, list) and len(v) == 3), None)
                if path is not None:
                    self._fds[ret] = (path, ident[2] if ident else None)
            elif name == "close":
                self._fds.pop(rec.args[0] & 0xFFFFFFFF, None)
            elif name == "mmap" and ok and len(rec.args) == 6 and rec.args[5] == 0:
                fd = rec.args[4] & 0xFFFFFFFF
                if fd in self._fds and not any(lo <= ret < hi for lo, hi, _i, _m in self.modules):
                    path, sha = self._fds[fd]
                    data = self._root_file(path, sha)
                    if data is not None:
                        from .linux import loader
                        from .linux.memory import page_down
                        lib = loader.parse(data, path)
                        self._add(path, data, ret - page_down(min(v for v, *_ in lib.loads)))
        except Exception:
            pass

    def _module(self, pc):
        import bisect
        i = bisect.bisect_right(self.modules, (pc, float("inf"))) - 1
        if i >= 0 and self.modules[i][0] <= pc < self.modules[i][1]:
            return self.modules[i][3]
        return None

    # --- lookups ---------------------------------------------------------------------------
    def symbol(self, pc):
        if self.linux:
            m = self._module(pc)
            if m is None:
                return ""
            s = _lookup(m.funcs, pc - m.bias)
            base = m.name.rsplit("/", 1)[-1]
            return f"<{base}!{s[1]}+{pc - m.bias - s[0]:#x}>" if s else f"<{base}+{pc - m.lo:#x}>"
        best = None
        for start, size, name in self.funcs:
            if start > pc:
                break
            if pc < start + max(size, 1) or size == 0:
                best = (start, name)
        if best is None:
            return ""
        return f"<{best[1]}+{pc - best[0]:#x}>"

    def insn(self, pc):
        if self.linux:
            m = self._module(pc)
            code = m.code(pc) if m is not None else None
            if not code:
                return ""
        else:
            code = None
            for seg in self.image.segments:
                if seg.vaddr <= pc < seg.vaddr + len(seg.data):
                    code = seg.data[pc - seg.vaddr: pc - seg.vaddr + 16]
                    break
            if code is None:
                return ""
        for i in self.md.disasm(code, pc):
            return f"{i.mnemonic} {i.op_str}".strip()
        return "(bad instruction)"


class _Module:
    """A Linux ELF file mapped at ``bias``: its symbols and the bytes of its segments."""

    def __init__(self, name, data, bias):
        from .linux import loader
        from .linux.memory import page_down, page_up
        self.name, self.data, self.bias = name, data, bias
        elf = loader.parse(data, name)
        self.loads = elf.loads
        self.lo = page_down(min(v for v, *_ in elf.loads)) + bias
        self.hi = page_up(max(v + m for v, m, *_ in elf.loads)) + bias
        self.funcs = _elf_symbols(data)

    def code(self, pc):
        a = pc - self.bias
        for vaddr, memsz, off, filesz, flags in self.loads:
            if vaddr <= a < vaddr + filesz:
                return self.data[off + a - vaddr: off + a - vaddr + 16]
        return None


def _elf_symbols(data):
    """Sorted [(start, size, name)] of the functions in .symtab (or .dynsym)."""
    import io

    from elftools.elf.elffile import ELFFile
    funcs = []
    try:
        elf = ELFFile(io.BytesIO(data))
        for section in (".symtab", ".dynsym"):
            symtab = elf.get_section_by_name(section)
            if symtab is None:
                continue
            for sym in symtab.iter_symbols():
                if sym["st_info"]["type"] in ("STT_FUNC", "STT_NOTYPE") and sym["st_value"] and sym.name:
                    funcs.append((sym["st_value"], sym["st_size"], sym.name))
            if funcs:
                break
    except Exception:   # symbols are a nicety; a stripped or odd ELF just has none
        funcs = []
    funcs.sort()
    return funcs


def _lookup(funcs, addr):
    """(start, name) of the function holding ``addr`` (a sizeless label before it will do)."""
    import bisect
    i = bisect.bisect_right(funcs, (addr, float("inf"), "")) - 1
    for j in range(i, max(i - 8, -1), -1):
        start, size, name = funcs[j]
        if addr < start + size:
            return start, name
    if i >= 0 and funcs[i][1] == 0:
        return funcs[i][0], funcs[i][2]
    return None


def _record_dict(index, offset, rec, call_index=None):
    d = {"index": index, "offset": offset, "kind": R.KIND_NAMES[rec.kind]}
    if rec.kind == R.HEADER:
        d.update(elf_name=rec.elf_name, elf_sha256=rec.elf_sha256, elf_bytes=len(rec.elf), abi=rec.abi,
                 config=rec.config, created_unix=rec.created_unix, ftvm_version=rec.ftvm_version)
    elif rec.kind == R.INPUT:
        d.update(blocks=rec.blocks, pc=rec.pc, eof=rec.data is None,
                 data=None if rec.data is None else rec.data.decode("latin-1"))
    elif rec.kind == R.IRQ:
        d.update(blocks=rec.blocks, pc=rec.pc, vector=rec.vector, name=abi.IRQ_NAMES.get(rec.vector, "?"))
    elif rec.kind == R.TSC:
        e = rec.entries
        d.update(count=rec.count, blocks=e[0], last_blocks=e[-3], first_tsc=e[2], last_tsc=e[-1])
    elif rec.kind == R.RNG:
        d.update(blocks=rec.blocks, value=rec.value)
    elif rec.kind == R.NET:
        d.update(blocks=rec.blocks, pc=rec.pc, conn=rec.conn, type=abi.NET_TYPE_NAMES.get(rec.type, "?"),
                 bytes=len(rec.data), data=rec.data[:256].decode("latin-1"))
    elif rec.kind == R.DISK:
        d.update(blocks=rec.blocks, pc=rec.pc, request=rec.req,
                 status=abi.DISK_STATUS_NAMES.get(rec.status, str(rec.status)),
                 data_bytes=None if rec.data is None else len(rec.data), crc32=rec.crc)
    elif rec.kind == R.DIGEST:
        d.update(blocks=rec.blocks, pc=rec.pc, vtime_ns=rec.vtime, out_bytes=rec.out_bytes,
                 regs=dict(zip(R.DIGEST_REGS, rec.regs)), mem_crc32={hex(a): c for a, c in rec.mem})
    elif rec.kind == R.PROGRESS:
        d.update(blocks=rec.blocks, pc=rec.pc)
    elif rec.kind == R.GOLIVE:
        d.update(blocks=rec.blocks, pc=rec.pc, view=rec.view, node=rec.node, outage_ms=rec.outage_ms)
    elif rec.kind == R.VIEW:
        d.update(blocks=rec.blocks, pc=rec.pc, view=rec.view, primary=rec.primary, backup=rec.backup)
    elif rec.kind == R.TRANSFER:
        d.update(blocks=rec.blocks, pc=rec.pc, view=rec.view, to=rec.to, size=rec.size)
    elif rec.kind == R.SYSCALL:
        from .linux import decode
        d.update(decode.call_dict(rec, call_index))
    elif rec.kind in (R.WAIT, R.INTENT):
        from .linux.table import describe_call
        d.update(blocks=rec.blocks, pc=rec.pc, nr=rec.nr, values=len(rec.values))
        if rec.kind == R.WAIT:
            d.update(what=rec.what, text=describe_call(rec.nr, rec.args, None))
    elif rec.kind == R.SCHED:
        d.update(blocks=rec.blocks, pc=rec.pc, prev=rec.prev, next=rec.next)
    elif rec.kind == R.SIGNAL:
        d.update(blocks=rec.blocks, pc=rec.pc, tid=rec.tid, signo=rec.signo)
    elif rec.kind == R.END:
        d.update(blocks=rec.blocks, pc=rec.pc, reason=rec.reason, status=rec.status, detail=rec.detail,
                 wall_ns=rec.wall_ns, vtime_ns=rec.digest.vtime, out_bytes=rec.digest.out_bytes)
    return d


def _text(d, syms):
    k = d["kind"]
    head = f"{d['index']:>7} @{d['offset']:<10} {k:<6}"
    if k == "header" and d["config"].get("personality") == "linux":
        spec = d["config"].get("linux") or {}
        argv = " ".join(spec.get("argv") or [d["elf_name"]])
        return (f"{head} Linux program {d['elf_name']} sha256 {d['elf_sha256'][:16]}… root {spec.get('root', '/')} "
                f"cwd {spec.get('cwd', '/')} ftvm {d['ftvm_version']}: {argv}")
    if k == "header":
        return f"{head} guest {d['elf_name']} sha256 {d['elf_sha256'][:16]}… abi {d['abi']} ftvm {d['ftvm_version']}"
    if k == "tsc":
        return (f"{head} block {d['blocks']:>12}  {d['count']} RDTSC results up to block {d['last_blocks']}, "
                f"time {d['first_tsc']}..{d['last_tsc']} ns")
    if k == "rng":
        return f"{head} block {d['blocks']:>12}  value {d['value']:#010x}"
    if k == "wait":
        return f"{head} block {d['blocks']:>12} pc {d['pc']:#x} {syms.symbol(d['pc'])}  {d['text']} waits ({d['what']})"
    if k == "intent":
        return f"{head} block {d['blocks']:>12} pc {d['pc']:#x}  data-directory change of the pending call (nr {d['nr']})"
    if k == "sched":
        return f"{head} block {d['blocks']:>12} pc {d['pc']:#x} {syms.symbol(d['pc'])}  thread {d['prev']} -> {d['next']}"
    if k == "signal":
        return f"{head} block {d['blocks']:>12} pc {d['pc']:#x} {syms.symbol(d['pc'])}  signal {d['signo']} to thread {d['tid']}"
    if k == "syscall":      # the instruction is always `syscall`: the call instead, as strace shows it
        return (f"{head} block {d['blocks']:>12} pc {d['pc']:#x} {syms.symbol(d['pc'])}  "
                f"#{d['syscall_index']} {d['text']}")
    where = f"block {d['blocks']:>12} pc {d['pc']:#x} {syms.symbol(d['pc'])} [{syms.insn(d['pc'])}]"
    if k == "input":
        what = "end of input" if d["eof"] else f"{len(d['data'])} bytes {d['data'][:40]!r}"
        return f"{head} {where}  {what}"
    if k == "irq":
        return f"{head} {where}  vector {d['vector']} ({d['name']})"
    if k == "net":
        what = f" {d['bytes']} bytes {d['data'][:40]!r}" if d["type"] == "data" else ""
        return f"{head} {where}  connection {d['conn']} {d['type']}{what}"
    if k == "disk":
        data = ("" if d["data_bytes"] is None else f", {d['data_bytes']} bytes read") if d["status"] == "ok" else ""
        shared = " (data on the shared disk)" if d["data_bytes"] is None and d["crc32"] else ""
        return f"{head} {where}  request {d['request']} done: {d['status']}{data}{shared}"
    if k == "digest":
        return f"{head} {where}  time {d['vtime_ns']} ns, console {d['out_bytes']} bytes"
    if k == "end":
        return f"{head} {where}  {d['reason']} status {d['status']}: {d['detail']}"
    if k == "progress":
        return f"{head} {where}"
    if k == "view":
        return f"{head} {where}  view {d['view']}: primary {d['primary']}, backup {d['backup'] or '-'}"
    if k == "transfer":
        return f"{head} {where}  state transfer to {d['to']} in view {d['view']}: {d['size']} bytes"
    if k == "golive":
        return f"{head} {where}  node {d['node']} went live as primary of view {d['view']} after {d['outage_ms']} ms"
    return head


def show(path, kinds, from_block, to_block, limit, expand_tsc, as_json, out=sys.stdout):
    shown = 0
    syms = None
    calls = 0              # system calls so far: a SYSCALL record's index in the run (#N)
    with LogReader(path) as reader:
        for index, offset, rec in reader:
            if rec.kind == R.HEADER:
                syms = Symbols(rec)
            rows = []
            if rec.kind == R.TSC and expand_tsc:
                for b, pc, v in zip(rec.blocks, rec.pcs, rec.values):
                    rows.append({"index": index, "offset": offset, "kind": "tsc", "blocks": b, "pc": pc, "value": v})
            elif rec.kind == R.SYSCALL:
                syms.observe(rec)
                calls += 1
                if kinds and "syscall" not in kinds:
                    continue       # decoding costs; skip it when not shown
                rows.append(_record_dict(index, offset, rec, calls - 1))
            else:
                rows.append(_record_dict(index, offset, rec))
            for d in rows:
                if kinds and d["kind"] not in kinds:
                    continue
                b = d.get("blocks")
                if b is not None and ((from_block is not None and b < from_block)
                                      or (to_block is not None and b > to_block)):
                    continue
                if b is None and (from_block is not None or to_block is not None) and d["kind"] != "header":
                    continue
                if as_json:
                    if "pc" in d:
                        d["symbol"], d["insn"] = syms.symbol(d["pc"]), syms.insn(d["pc"])
                    out.write(json.dumps(d) + "\n")
                elif "value" in d and d["kind"] == "tsc":
                    out.write(f"{index:>7} @{offset:<10} tsc    block {d['blocks']:>12} pc {d['pc']:#x} "
                              f"{syms.symbol(d['pc'])} [{syms.insn(d['pc'])}]  value {d['value']}\n")
                else:
                    out.write(_text(d, syms) + "\n")
                shown += 1
                if limit and shown >= limit:
                    return


class NotLinux(FtvmError):
    exit_status = EXIT_USAGE


def pending_call_lines(rp, log_path):
    """For `ftvm replay --to sys:N`: the call pending where the replayer stopped, decoded
    (paths read from guest memory), and what the recording says it returned."""
    from .linux import decode, table
    k = rp.kernel
    nr, args, pc = k.pending
    args = tuple(args[:table.NARGS.get(nr, 6)])

    def read_str(addr):
        saved, k.call_strings = k.call_strings, None
        try:
            return k.read_str(addr)
        finally:
            k.call_strings = saved
    n = k.calls
    lines = [f"pending: system call #{n} at block {rp.m.blocks} pc {pc:#x}: "
             f"{decode.describe(nr, args, None, read_str=read_str)}"]
    seen = 0
    with LogReader(log_path) as reader:
        for _i, _o, rec in reader:
            if rec.kind == R.SYSCALL:
                if seen == n:
                    lines.append(f"the recording: {decode.describe(rec.nr, rec.args, rec.ret, rec.strings, rec.values)}"
                                 f" (block {rec.blocks} pc {rec.pc:#x})")
                    break
                seen += 1
            elif rec.kind == R.END and seen == n:
                lines.append(f"the recording: the program ended here ({rec.detail}); exit calls have no SYSCALL record")
    return lines


def gather_stats(path):
    per_kind = {}
    items = {}
    calls = {}           # system call name -> [calls, errors, bytes in, bytes out, log bytes]
    end = None
    header = None
    total = 0
    with LogReader(path) as reader:
        prev = None          # (offset, name) of the previous SYSCALL record, sized when the next starts
        for index, offset, rec in reader:
            if prev is not None:
                calls[prev[1]][4] += offset - prev[0]
                prev = None
            name = R.KIND_NAMES[rec.kind]
            per_kind.setdefault(name, [0, 0])
            per_kind[name][0] += 1
            if rec.kind == R.HEADER:
                header = rec
            if rec.kind == R.END:
                end = rec
            if rec.kind == R.SYSCALL:
                from .linux import decode
                c = calls.setdefault(decode.call_name(rec.nr), [0, 0, 0, 0, 0])
                c[0] += 1
                c[1] += decode.failed(rec.ret)
                b_in, b_out = decode.bytes_moved(rec.nr, rec.ret)
                c[2] += b_in
                c[3] += b_out
                prev = (offset, decode.call_name(rec.nr))
            items[name] = items.get(name, 0) + (rec.count if rec.kind == R.TSC else 1)
        total = reader.bytes_read
        complete = reader.complete
        if prev is not None:
            calls[prev[1]][4] += total - prev[0]
    # Sizes: re-walk offsets cheaply by re-reading frame headers.
    sizes = _frame_sizes(path)
    for name, size in sizes.items():
        if name in per_kind:
            per_kind[name][1] = size
    return header, per_kind, items, end, total, complete, calls


def _frame_sizes(path):
    sizes = {}
    with open(path, "rb") as f:
        data = f.read()
    off = len(R.FILE_MAGIC)
    while off + R.FRAME.size <= len(data):
        _, kind, length, _ = R.FRAME.unpack_from(data, off)
        name = R.KIND_NAMES.get(kind, "?")
        sizes[name] = sizes.get(name, 0) + R.FRAME.size + length
        off += R.FRAME.size + length
    return sizes


def stats(path, as_json, out=sys.stdout):
    header, per_kind, items, end, total, complete, calls = gather_stats(path)
    events = (sum(items.get(k, 0) for k in ("input", "irq", "rng", "net", "disk", "syscall"))
              + items.get("tsc", 0))
    linux = header is not None and header.config.get("personality") == "linux"
    wall_s = end.wall_ns / 1e9 if end else None
    result = {
        "log": str(path), "guest": header.elf_name if header else None, "bytes": total, "complete": complete,
        "kinds": {k: {"records": v[0], "bytes": v[1], "items": items.get(k, 0),
                      "bytes_per_item": round(v[1] / items[k], 2) if items.get(k) else None}
                  for k, v in per_kind.items()},
        "events": events,
        "bytes_per_event": round((total - per_kind.get("header", [0, 0])[1]) / events, 2) if events else None,
        "blocks": end.blocks if end else None,
        "guest_time_ns": end.digest.vtime if end else None,
        "guest_read_time": bool(end.digest.vtime or items.get("tsc")) if end else None,
        "wall_s": round(wall_s, 3) if wall_s else None,
        "events_per_s": round(events / wall_s, 1) if wall_s else None,
        "blocks_per_s": round(end.blocks / wall_s) if wall_s else None,
        "end": {"reason": end.reason, "status": end.status, "detail": end.detail} if end else None,
        "syscalls": {n: {"calls": c[0], "errors": c[1], "bytes_in": c[2], "bytes_out": c[3], "log_bytes": c[4]}
                     for n, c in sorted(calls.items(), key=lambda kv: (-kv[1][0], kv[0]))},
    }
    if linux:
        result["syscall_totals"] = {k: sum(c[i] for c in calls.values())
                                    for i, k in enumerate(("calls", "errors", "bytes_in", "bytes_out", "log_bytes"))}
    if as_json:
        out.write(json.dumps(result, indent=2) + "\n")
        return result
    from rich.console import Console as RichConsole
    from rich.table import Table
    t = Table(title=f"{path}: {result['guest']}, {total} bytes{'' if complete else ' (no end record)'}")
    for col in ("kind", "records", "bytes", "items", "bytes/item"):
        t.add_column(col, justify="left" if col == "kind" else "right")
    for k, v in result["kinds"].items():
        t.add_row(k, str(v["records"]), str(v["bytes"]), str(v["items"]),
                  "" if v["bytes_per_item"] is None else f"{v['bytes_per_item']:.2f}")
    con = RichConsole(file=out, width=max(100, getattr(out, "columns", 0) or 0))
    con.print(t)
    if result["syscalls"]:
        sc = Table(title="system calls")
        for col in ("system call", "calls", "errors", "bytes in", "bytes out", "log bytes"):
            sc.add_column(col, justify="left" if col == "system call" else "right")
        for n, c in result["syscalls"].items():
            sc.add_row(n, str(c["calls"]), str(c["errors"]), str(c["bytes_in"]), str(c["bytes_out"]),
                       str(c["log_bytes"]))
        tot = result["syscall_totals"]
        sc.add_section()
        sc.add_row("total", str(tot["calls"]), str(tot["errors"]), str(tot["bytes_in"]), str(tot["bytes_out"]),
                   str(tot["log_bytes"]))
        con.print(sc)
    what = "input, irq, rng, rdtsc, net, disk, syscall" if linux else "input, irq, rng, rdtsc, net, disk"
    lines = [f"events ({what}): {events}",
             f"bytes per event: {result['bytes_per_event']}"]
    if end:
        lines += [f"guest blocks: {end.blocks}", _guest_time(end, items),
                  f"wall time: {wall_s:.3f} s", f"events per second: {result['events_per_s']}",
                  f"guest blocks per second: {result['blocks_per_s']}",
                  f"end: {end.reason}, status {end.status} ({end.detail})"]
    for line in lines:
        con.print(line)
    return result


def _guest_time(end, items):
    if end.digest.vtime == 0 and not items.get("tsc"):
        return "guest time: not read (the guest never asked for the time)"
    return f"guest time: {end.digest.vtime / 1e6:.3f} ms"
