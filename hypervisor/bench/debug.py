"""`ftvm bench --only debug`: how fast the debugger goes back in a CPU-bound recording.

A C program (compiled here with gcc) touches a 64 MiB buffer and then computes for 10 s of
recording, in rounds of a million multiply-adds (one to a few ms) that each also store into
the buffer and read the clock (the loop's only system call, so its only logged event). It
writes one watched variable once, at the first round that ends 5 s or more into the
computation. The clock calls are logged, so the program's own output says how much
recording lies between that write and the end (the issue's "5 s back"), on any machine and
however fast the engine gets. Measured on its replay: reverse-stepi at random points
(target 1 s at most), reverse-continue from the end to that write (target 10 s), and the
memory the snapshots take.
"""
from __future__ import annotations

import os
import random
import re
import subprocess
import time

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
volatile unsigned long marker;
unsigned long acc;
static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
int main(int argc, char **argv)
{
    double total_s = atof(argv[1]), back_s = atof(argv[2]);
    size_t size = (size_t)atol(argv[3]) << 20;
    unsigned char *buf = malloc(size);
    for (size_t i = 0; i < size; i += 4096)
        buf[i] = (unsigned char)i;
    double t0 = now(), t = t0, written = -1;
    long r;
    for (r = 0; t - t0 < total_s; r++) {
        for (long i = 0; i < 1000000; i++)
            acc = acc * 6364136223846793005ul + (unsigned long)i;
        buf[((size_t)r * 4096) % size] ^= (unsigned char)acc;
        t = now();
        if (written < 0 && t - t0 >= total_s - back_s) {
            marker = acc;
            written = t;
        }
    }
    printf("rounds=%ld acc=%lu marker=%lu compute_s=%.3f write_to_end_s=%.3f\n",
           r, acc, marker, t - t0, now() - written);
    return 0;
}
"""


def run_debug_bench(tmp, say, mem_mib=64, snapshot_mem=1 << 30, interval_s=0.25, record_s=10.0, back_s=5.0):
    from ..debug.timeline import Point, Timeline
    src = os.path.join(tmp, "spin.c")
    exe = os.path.join(tmp, "spin")
    with open(src, "w") as f:
        f.write(PROGRAM)
    subprocess.run(["gcc", "-O1", "-g", "-static", src, "-o", exe], check=True)
    log = os.path.join(tmp, "spin.ftlog")
    ftvm = os.path.join(os.path.dirname(os.sys.executable), "ftvm")
    say(f"recording a CPU-bound program with a {mem_mib} MiB buffer for {record_s:g} s, "
        f"its watched write {back_s:g} s before the end")
    t0 = time.perf_counter()
    out = subprocess.run([ftvm, "record", "-q", "-o", log, "--", exe, str(record_s), str(back_s), str(mem_mib)],
                         check=True, stdout=subprocess.PIPE).stdout.decode()
    record_wall_s = time.perf_counter() - t0
    got = re.search(r"rounds=(\d+) .*compute_s=([\d.]+) write_to_end_s=([\d.]+)", out)
    if got is None:
        raise RuntimeError(f"the benchmark's program printed {out!r}")
    say("replaying it under the debugger")
    tl = Timeline(log, interval_s=interval_s, mem_max_bytes=snapshot_mem)
    t0 = time.perf_counter()
    tl.forward()
    forward_s = time.perf_counter() - t0
    end = tl.pos()
    rng = random.Random(15)
    worst = 0.0
    for _ in range(8):
        tl.goto(Point(rng.randrange(1, end.blocks), 0))
        tl.step()
        t0 = time.perf_counter()
        tl.reverse_step()
        worst = max(worst, time.perf_counter() - t0)
    tl.goto(end)
    syms = subprocess.check_output(["nm", exe]).decode()
    addr = next(int(line.split()[0], 16) for line in syms.splitlines() if line.endswith(" marker"))
    tl.add_watchpoint("watch", addr, 8)
    t0 = time.perf_counter()
    stop = tl.reverse_continue()
    rc_s = time.perf_counter() - t0
    return {"record_s": record_wall_s, "rounds": int(got.group(1)), "compute_s": float(got.group(2)),
            "debug_forward_s": forward_s, "blocks": end.blocks,
            "reverse_stepi_worst_s": worst, "reverse_continue_s": rc_s, "reverse_continue_stop": stop.reason,
            "reverse_continue_back_s": float(got.group(3)),
            "reverse_continue_back_blocks": end.blocks - tl.pos().blocks,
            "checkpoints": len(tl.checkpoints), "snapshot_mib": tl.snapshot_bytes / 2**20,
            "snapshot_bound_mib": snapshot_mem / 2**20, "guest_mib": mem_mib}


def debug_rows(r):
    return [
        ("recording (CPU-bound, 64 MiB buffer)", "", f"{r['record_s']:.1f} s",
         f"{r['blocks']:,} blocks, {r['rounds']:,} rounds", "", None),
        ("replay under the debugger, to the end", f"{r['record_s']:.1f} s", f"{r['debug_forward_s']:.1f} s",
         f"{r['debug_forward_s'] / r['record_s']:.2f}x", "", None),
        ("reverse-stepi, worst of 8 random points", "", f"{r['reverse_stepi_worst_s']:.2f} s", "", "<= 1 s",
         r["reverse_stepi_worst_s"] <= 1.0),
        (f"reverse-continue to a watchpoint written {r['reverse_continue_back_s']:.1f} s of recording back", "",
         f"{r['reverse_continue_s']:.1f} s",
         # How much of the run's work lies back there: about half, less when the
         # recording's second half ran slower (a busier machine).
         f"{r['reverse_continue_stop']}, {r['reverse_continue_back_blocks'] / max(1, r['blocks']):.0%} of the blocks",
         "<= 10 s", r["reverse_continue_s"] <= 10.0),
        (f"snapshot memory ({r['guest_mib']} MiB guest)", f"bound {r['snapshot_bound_mib']:.0f} MiB",
         f"{r['snapshot_mib']:.0f} MiB", f"{r['checkpoints']} snapshots", "printed; bounded by --snapshot-mem",
         r["snapshot_mib"] <= r["snapshot_bound_mib"]),
    ]
