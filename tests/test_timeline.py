"""Time travel on a replay (hypervisor/debug/timeline.py), without gdb: any point reached
forwards or backwards, from anywhere, is the same state; steps back retrace steps
forwards exactly; breakpoints and watchpoints stop where they should. ftvm-ABI guests
with interrupts (ticker) and input (echo)."""
import random

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
