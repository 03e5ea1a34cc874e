"""`ftvm log show` and `ftvm log stats`: reading a log for people (and for jq)."""
from __future__ import annotations

import json
import sys

from logging_channel import records as R
from logging_channel.logfile import LogReader

from . import abi, elf_loader


class Symbols:
    """PC -> 'function+offset' and the instruction there, from the embedded ELF."""

    def __init__(self, header: R.Header):
        import io

        import capstone
        from elftools.elf.elffile import ELFFile

        self.image = elf_loader.parse(header.elf, header.elf_name,
                                      mem_limit=1 << 62, stack_size=header.config.get("stack_size", abi.STACK_SIZE_DEFAULT))
        self.md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self.funcs = []
        try:
            elf = ELFFile(io.BytesIO(header.elf))
            symtab = elf.get_section_by_name(".symtab")
            if symtab is not None:
                for sym in symtab.iter_symbols():
                    if sym["st_info"]["type"] in ("STT_FUNC", "STT_NOTYPE") and sym["st_value"] and sym.name:
                        self.funcs.append((sym["st_value"], sym["st_size"], sym.name))
        except Exception:   # symbols are a nicety; a stripped or odd ELF just has none
            self.funcs = []
        self.funcs.sort()

    def symbol(self, pc):
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
        for seg in self.image.segments:
            if seg.vaddr <= pc < seg.vaddr + len(seg.data):
                code = seg.data[pc - seg.vaddr: pc - seg.vaddr + 16]
                for i in self.md.disasm(code, pc):
                    return f"{i.mnemonic} {i.op_str}".strip()
                return "(bad instruction)"
        return ""


def _record_dict(index, offset, rec):
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
    elif rec.kind == R.END:
        d.update(blocks=rec.blocks, pc=rec.pc, reason=rec.reason, status=rec.status, detail=rec.detail,
                 wall_ns=rec.wall_ns, vtime_ns=rec.digest.vtime, out_bytes=rec.digest.out_bytes)
    return d


def _text(d, syms):
    k = d["kind"]
    head = f"{d['index']:>7} @{d['offset']:<10} {k:<6}"
    if k == "header":
        return f"{head} guest {d['elf_name']} sha256 {d['elf_sha256'][:16]}… abi {d['abi']} ftvm {d['ftvm_version']}"
    if k == "tsc":
        return (f"{head} block {d['blocks']:>12}  {d['count']} RDTSC results up to block {d['last_blocks']}, "
                f"time {d['first_tsc']}..{d['last_tsc']} ns")
    if k == "rng":
        return f"{head} block {d['blocks']:>12}  value {d['value']:#010x}"
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
    with LogReader(path) as reader:
        for index, offset, rec in reader:
            if rec.kind == R.HEADER:
                syms = Symbols(rec)
            rows = []
            if rec.kind == R.TSC and expand_tsc:
                for b, pc, v in zip(rec.blocks, rec.pcs, rec.values):
                    rows.append({"index": index, "offset": offset, "kind": "tsc", "blocks": b, "pc": pc, "value": v})
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


def gather_stats(path):
    per_kind = {}
    items = {}
    end = None
    header = None
    total = 0
    with LogReader(path) as reader:
        for index, offset, rec in reader:
            name = R.KIND_NAMES[rec.kind]
            size = len(R.encode(rec)) if rec.kind != R.HEADER else None
            per_kind.setdefault(name, [0, 0])
            per_kind[name][0] += 1
            if rec.kind == R.HEADER:
                header = rec
            if rec.kind == R.END:
                end = rec
            items[name] = items.get(name, 0) + (rec.count if rec.kind == R.TSC else 1)
        total = reader.bytes_read
        complete = reader.complete
    # Sizes: re-walk offsets cheaply by re-reading frame headers.
    sizes = _frame_sizes(path)
    for name, size in sizes.items():
        per_kind[name][1] = size
    return header, per_kind, items, end, total, complete


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
    header, per_kind, items, end, total, complete = gather_stats(path)
    events = sum(items.get(k, 0) for k in ("input", "irq", "rng", "net", "disk")) + items.get("tsc", 0)
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
        "wall_s": round(wall_s, 3) if wall_s else None,
        "events_per_s": round(events / wall_s, 1) if wall_s else None,
        "blocks_per_s": round(end.blocks / wall_s) if wall_s else None,
        "end": {"reason": end.reason, "status": end.status, "detail": end.detail} if end else None,
    }
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
    con = RichConsole(file=out)
    con.print(t)
    lines = [f"events (input, irq, rng, rdtsc, net, disk): {events}",
             f"bytes per event: {result['bytes_per_event']}"]
    if end:
        lines += [f"guest blocks: {end.blocks}", f"guest time: {end.digest.vtime / 1e6:.3f} ms",
                  f"wall time: {wall_s:.3f} s", f"events per second: {result['events_per_s']}",
                  f"guest blocks per second: {result['blocks_per_s']}",
                  f"end: {end.reason}, status {end.status} ({end.detail})"]
    for line in lines:
        con.print(line)
    return result
