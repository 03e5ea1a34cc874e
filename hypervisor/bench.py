"""`ftvm bench`: recording and replay measured against plain Unicorn, in one run.

Each figure is the best of ``runs`` runs. Plain means the same guest on the same
Unicorn with no block counting, no RDTSC hook and no log: only the console and exit
ports are hooked, because the guest cannot run without them.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from logging_channel import records as R
from logging_channel.logfile import LogReader, LogWriter

from . import abi, elf_loader
from .console import Console
from .errors import FtvmError
from .machine import Config
from .record import Recorder
from .replay import Replayer
from .uc import UC, X86, unicorn
from .vcpu import _uc_perms

ROOT = pathlib.Path(__file__).resolve().parents[1]


def plain_run(image, stack_size=abi.STACK_SIZE_DEFAULT):
    """Run the guest on bare Unicorn. Returns (seconds, console bytes, exit status)."""
    uc = unicorn.Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
    for start, size, flags in image.pages():
        uc.mem_map(start, size, _uc_perms(flags))
    uc.mem_map(abi.STACK_TOP - stack_size, stack_size, UC.UC_PROT_READ | UC.UC_PROT_WRITE)
    for seg in image.segments:
        uc.mem_write(seg.vaddr, seg.data)
    uc.reg_write(X86.UC_X86_REG_RSP, abi.STACK_TOP - 8)
    out = bytearray()
    status = []

    def on_out(uc, port, size, value, user):
        if port == abi.PORT_CONSOLE:
            out.append(value & 0xFF)
        elif port == abi.PORT_EXIT:
            status.append(value & 0xFF)
            uc.emu_stop()

    uc.hook_add(UC.UC_HOOK_INSN, on_out, None, 1, 0, X86.UC_X86_INS_OUT)
    t = time.perf_counter()
    uc.emu_start(image.entry, (1 << 64) - 1)
    return time.perf_counter() - t, bytes(out), status[0] if status else None


def record_run(data, image, name, log_path):
    out = bytearray()
    writer = LogWriter(log_path)
    rec = Recorder.new(data, image, name, writer, Config(), Console(out.extend))
    t = time.perf_counter()
    end = rec.run()
    elapsed = time.perf_counter() - t
    writer.close()
    return elapsed, bytes(out), end


def replay_run(log_path):
    out = bytearray()
    rp = Replayer(log_path, Console(out.extend))
    t = time.perf_counter()
    res = rp.run()
    return time.perf_counter() - t, bytes(out), res


def peak_rss_of_record(guest, log_path):
    """Peak RSS (bytes) of a real `ftvm record` process, read from its VmHWM while it
    runs (getrusage would count the pages it shared with this process before exec)."""
    ftvm = pathlib.Path(sys.executable).parent / "ftvm"
    cmd = [str(ftvm)] if ftvm.exists() else [sys.executable, "-m", "hypervisor.cli"]
    p = subprocess.Popen(cmd + ["record", "-q", str(guest), "-o", str(log_path)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(0.01)
    if p.returncode != 0:
        raise FtvmError(f"bench: ftvm record failed: {p.stderr.read().decode().strip()}")
    return peak


def tsc_count(log_path):
    n = size = 0
    with LogReader(log_path) as r:
        for _, _, rec in r:
            if rec.kind == R.TSC:
                n += rec.count
                size += len(R.encode(rec))
    return n, size


def run_bench(runs, guest_dir, as_json, say):
    gdir = pathlib.Path(guest_dir) if guest_dir else ROOT / "guest_programs" / "build"
    rows = []
    results = {}
    with tempfile.TemporaryDirectory(prefix="ftvm-bench-") as tmp:
        for guest in ("compute", "tsc_heavy"):
            path = gdir / f"{guest}.elf"
            data, image = elf_loader.load_file(path)
            log = pathlib.Path(tmp) / f"{guest}.ftlog"
            plain, rec, rep = [], [], []
            for i in range(runs):
                say(f"bench: {guest} run {i + 1}/{runs}: plain, record, replay")
                t, out_p, st_p = plain_run(image)
                plain.append(t)
                t, out_r, end = record_run(data, image, path.name, log)
                rec.append(t)
                t, out_rp, res = replay_run(log)
                rep.append(t)
                # tsc-heavy prints elapsed guest time, which differs from run to run.
                same_out = out_r == out_rp and (guest == "tsc_heavy" or out_p == out_r)
                if not (same_out and st_p == end.status == res.status):
                    raise FtvmError(f"bench: {guest}: plain, record and replay disagree "
                                    f"(exit {st_p}/{end.status}/{res.status})")
            n_tsc, tsc_bytes = tsc_count(log)
            results[guest] = {"plain_s": min(plain), "record_s": min(rec), "replay_s": min(rep),
                              "plain_over_record": min(plain) / min(rec),
                              "record_over_replay": min(rec) / min(rep),
                              "rdtsc": n_tsc, "rdtsc_bytes": tsc_bytes,
                              "bytes_per_rdtsc": tsc_bytes / n_tsc if n_tsc else None,
                              "guest_memory_bytes": image.mapped_bytes() + abi.STACK_SIZE_DEFAULT}
        say("bench: peak memory of `ftvm record compute.elf`")
        rss = peak_rss_of_record(gdir / "compute.elf", pathlib.Path(tmp) / "rss.ftlog")
        results["compute"]["record_peak_rss_bytes"] = rss
    c, t = results["compute"], results["tsc_heavy"]
    mem_budget = c["guest_memory_bytes"] + (100 << 20)
    rows = [
        ("compute: plain / record", f"{c['plain_s']:.3f} s", f"{c['record_s']:.3f} s",
         f"{c['plain_over_record']:.3f}", "≥ 0.90", c["plain_over_record"] >= 0.90),
        ("compute: replay vs record", f"{c['record_s']:.3f} s", f"{c['replay_s']:.3f} s",
         f"{c['record_over_replay']:.3f}", "≥ 1.00 (replay no slower)", c["record_over_replay"] >= 1.0),
        ("tsc-heavy: plain / record", f"{t['plain_s']:.3f} s", f"{t['record_s']:.3f} s",
         f"{t['plain_over_record']:.3f}", "≥ 0.50", t["plain_over_record"] >= 0.5),
        ("tsc-heavy: replay vs record", f"{t['record_s']:.3f} s", f"{t['replay_s']:.3f} s",
         f"{t['record_over_replay']:.3f}", "≥ 1.00 (replay no slower)", t["record_over_replay"] >= 1.0),
        ("bytes per RDTSC record", "", f"{t['bytes_per_rdtsc']:.2f} B", f"{t['rdtsc']} RDTSCs",
         "≤ 16", t["bytes_per_rdtsc"] <= 16),
        ("ftvm record peak memory (compute)", f"guest {c['guest_memory_bytes'] >> 20} MiB",
         f"{rss / 2**20:.1f} MiB", f"budget {mem_budget / 2**20:.1f} MiB", "≤ guest + 100 MiB", rss <= mem_budget),
    ]
    if as_json:
        print(json.dumps(results, indent=2))
        return results
    from rich.console import Console as RichConsole
    from rich.table import Table
    table = Table(title=f"ftvm bench (best of {runs}; {os.cpu_count()} cores)")
    for col in ("measure", "baseline", "ftvm", "ratio / figure", "target", "met"):
        table.add_column(col, justify="left" if col in ("measure", "target") else "right")
    for name, base, ours, ratio, target, ok in rows:
        table.add_row(name, base, ours, ratio, target, "[green]yes[/]" if ok else "[red]no[/]")
    RichConsole().print(table)
    return results
