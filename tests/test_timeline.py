"""Time travel on a replay (hypervisor/debug/timeline.py), without gdb: any point reached
forwards or backwards, from anywhere, is the same state; steps back retrace steps
forwards exactly; breakpoints and watchpoints stop where they should. ftvm-ABI guests
with interrupts (ticker) and input (echo)."""
import random
import re
import shutil
import subprocess

import pytest

from conftest import run_ftvm


@pytest.fixture(scope="module")
def logs(guests, tmp_path_factory):
    d = tmp_path_factory.mktemp("timeline")
    out = {}
    for g in ("ticker", "echo"):
        log = d / f"{g}.ftlog"
        rec = run_ftvm("record", "-q", "-o", log, guests / f"{g}.elf", input=b"a\nbb\n")
        assert rec.returncode == 0, rec.stderr
        out[g] = log
    return out


@pytest.mark.parametrize("guest", ["ticker", "echo"])
def test_points_are_the_same_state_from_anywhere(logs, guest):
    from hypervisor.debug.timeline import Point, Timeline
    tl = Timeline(logs[guest], interval_s=0.02)
    assert tl.forward().reason == "exit"
    end = tl.pos()
    rng = random.Random(15)
    points = [Point(rng.randrange(0, end.blocks), rng.randrange(0, 4)) for _ in range(10)]
    seen = {}
    for _ in range(2):
        rng.shuffle(points)
        for p in points:
            tl.goto(p)
            state = (tl.pos(), tl.pc(), tl.m.digest())
            assert seen.setdefault(p, state) == state, p
    assert tl.restores > 0
    tl.goto(Point(end.blocks // 2, 0))
    forwards = []
    for _ in range(25):
        forwards.append((tl.pos(), tl.pc(), tl.m.digest()))
        tl.step()
    for want in reversed(forwards):
        assert tl.reverse_step().reason == "step"
        assert (tl.pos(), tl.pc(), tl.m.digest()) == want
    tl.goto(Point(0, 0))
    assert tl.reverse_step().reason == "begin"


def test_breakpoint_and_reverse_continue(logs):
    from hypervisor.debug.timeline import Point, Timeline
    tl = Timeline(logs["ticker"], interval_s=0.02)
    tl.forward(Point(2000, 0), mode=None)
    tl.step()
    tl.step()
    pc = tl.pc()
    here = tl.pos()
    tl.add_breakpoint(pc)
    stop = tl.forward()
    assert stop.reason == "break" and tl.pc() == pc and tl.pos() > here
    later = tl.pos()
    assert tl.reverse_continue().reason == "break" and tl.pos() == here and tl.pc() == pc
    assert tl.forward().reason == "break" and tl.pos() == later
    tl.remove_breakpoint(pc)
    assert tl.forward().reason == "exit"


WRITES = r"""
#include <stdio.h>
#include <stdlib.h>
volatile long w;                 /* the watched variable */
unsigned long sink;

__attribute__((noinline)) static void set(long v)
{
    w = v;
    printf("set %ld\n", v);
}

__attribute__((noinline)) static void quiet(long n)   /* the test takes a checkpoint here */
{
    unsigned long acc = sink;
    for (long i = 0; i < n; i++)
        acc = acc * 6364136223846793005ul + (unsigned long)i;
    sink = acc;
}

int main(int argc, char **argv)
{
    long n = atol(argv[1]);
    set(1); quiet(n);
    set(2); set(3); quiet(n);    /* changed twice between two checkpoints */
    set(3); quiet(n);            /* the same value written again */
    set(7); set(3); quiet(n);    /* changed and changed back between two checkpoints */
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_reverse_continue_finds_every_write(tmp_path):
    """reverse-continue to a write watchpoint from the end stops in front of every write
    of the variable, the latest first, including a write of the value it already had
    and a change undone between two checkpoints (which comparing checkpoints alone
    would miss): before each stop's write the variable holds the value the program
    printed before it. Checkpoints are taken where the program rests between writes."""
    from hypervisor.debug.timeline import Timeline
    src, exe, log = tmp_path / "writes.c", tmp_path / "writes", tmp_path / "writes.ftlog"
    src.write_text(WRITES)
    subprocess.run(["gcc", "-O1", "-static", str(src), "-o", str(exe)], check=True)
    rec = run_ftvm("record", "-q", "-o", log, "--", exe, 1000)
    assert rec.returncode == 0, rec.stderr
    written = [int(v) for v in re.findall(rb"set (-?\d+)", rec.stdout)]
    assert written == [1, 2, 3, 3, 7, 3]
    syms = {line.split()[2]: int(line.split()[0], 16)
            for line in subprocess.check_output(["nm", str(exe)]).decode().splitlines() if len(line.split()) == 3}
    addr = syms["w"]
    tl = Timeline(log)
    tl.add_breakpoint(syms["quiet"])
    for _ in range(4):
        assert tl.forward().reason == "break"
        tl._checkpoint()
    tl.remove_breakpoint(syms["quiet"])
    assert tl.forward().reason == "exit"
    held = [int.from_bytes(cp.read(addr, 8), "little") for cp in tl.checkpoints]
    assert held[-4:] == [1, 3, 3, 3], held
    tl.add_watchpoint("watch", addr, 8)
    seen = []
    for _ in written:
        assert tl.reverse_continue().reason == "watch"
        seen.append(int.from_bytes(tl.m.vcpu.read(addr, 8), "little"))
    assert seen == [0, *written[:-1]][::-1]
    assert tl.reverse_continue().reason == "begin"
