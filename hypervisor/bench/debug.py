"""`ftvm bench --only debug`: how fast the debugger goes back in a CPU-bound recording.

A C program (compiled here with gcc) touches a 64 MiB buffer and then computes for about
10 s of recording, writing one watched variable half-way. Measured on its replay:
reverse-stepi at random points (target 1 s at most), reverse-continue from the end to
that write, about 5 s back (target 10 s), and the memory the snapshots take.
"""
from __future__ import annotations

import os
import random
import subprocess
import time

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
volatile unsigned long marker;
unsigned long acc;
int main(int argc, char **argv)
{
    long rounds = atol(argv[1]);
    size_t size = (size_t)atol(argv[2]) << 20;
    unsigned char *buf = malloc(size);
    for (size_t i = 0; i < size; i += 4096)
        buf[i] = (unsigned char)i;
    for (long r = 0; r < rounds; r++) {
        for (long i = 0; i < 1000000; i++)
            acc = acc * 6364136223846793005ul + (unsigned long)i;
        buf[((size_t)r * 4096) % size] ^= (unsigned char)acc;
        if (r == rounds / 2)
            marker = acc;
    }
    printf("acc=%lu marker=%lu\n", acc, marker);
    return 0;
}
"""


def run_debug_bench(tmp, say, rounds=None, mem_mib=64, snapshot_mem=1 << 30, interval_s=0.25, record_target_s=10.0):
    """``rounds`` None: as many as make a recording of about ``record_target_s`` on this
    machine (measured on a short recording first), so the figures keep the issue's
    meaning however fast the engine gets."""
    from ..debug.timeline import Point, Timeline
    src = os.path.join(tmp, "spin.c")
    exe = os.path.join(tmp, "spin")
    with open(src, "w") as f:
        f.write(PROGRAM)
    subprocess.run(["gcc", "-O1", "-g", "-static", src, "-o", exe], check=True)
    log = os.path.join(tmp, "spin.ftlog")
    ftvm = os.path.join(os.path.dirname(os.sys.executable), "ftvm")

    def record(n):
        t0 = time.perf_counter()
        subprocess.run([ftvm, "record", "-q", "-o", log, "--", exe, str(n), str(mem_mib)], check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0
    if rounds is None:
        say("timing two short recordings (300 and 600 rounds) to size the real one")
        t1, t2 = record(300), record(600)
        per_round = max(1e-5, (t2 - t1) / 300)           # without the start-up both include
        rounds = max(600, int((record_target_s - max(0.0, t1 - 300 * per_round)) / per_round))
    say(f"recording a CPU-bound program with a {mem_mib} MiB buffer ({rounds} rounds)")
    record_s = record(rounds)
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
    out = subprocess.check_output(["nm", exe]).decode()
    addr = next(int(line.split()[0], 16) for line in out.splitlines() if line.endswith(" marker"))
    tl.add_watchpoint("watch", addr, 8)
    t0 = time.perf_counter()
    stop = tl.reverse_continue()
    rc_s = time.perf_counter() - t0
    back_blocks = end.blocks - tl.pos().blocks
    return {"record_s": record_s, "debug_forward_s": forward_s, "blocks": end.blocks,
            "reverse_stepi_worst_s": worst, "reverse_continue_s": rc_s, "reverse_continue_stop": stop.reason,
            "reverse_continue_back_s": record_s * back_blocks / max(1, end.blocks),
            "checkpoints": len(tl.checkpoints), "snapshot_mib": tl.snapshot_bytes / 2**20,
            "snapshot_bound_mib": snapshot_mem / 2**20, "guest_mib": mem_mib}


def debug_rows(r):
    return [
        ("recording (CPU-bound, 64 MiB buffer)", "", f"{r['record_s']:.1f} s", f"{r['blocks']:,} blocks", "", None),
        ("replay under the debugger, to the end", f"{r['record_s']:.1f} s", f"{r['debug_forward_s']:.1f} s",
         f"{r['debug_forward_s'] / r['record_s']:.2f}x", "", None),
        ("reverse-stepi, worst of 8 random points", "", f"{r['reverse_stepi_worst_s']:.2f} s", "", "<= 1 s",
         r["reverse_stepi_worst_s"] <= 1.0),
        (f"reverse-continue to a watchpoint {r['reverse_continue_back_s']:.1f} s back", "",
         f"{r['reverse_continue_s']:.1f} s", r["reverse_continue_stop"], "<= 10 s", r["reverse_continue_s"] <= 10.0),
        (f"snapshot memory ({r['guest_mib']} MiB guest)", f"bound {r['snapshot_bound_mib']:.0f} MiB",
         f"{r['snapshot_mib']:.0f} MiB", f"{r['checkpoints']} snapshots", "printed; bounded by --snapshot-mem",
         r["snapshot_mib"] <= r["snapshot_bound_mib"]),
    ]
