"""Signals of Linux programs: handlers on real signal frames, the alternate stack,
SA_RESETHAND, interval timers in guest time interrupting sleeps, a blocked signal that
waits, and a fault sent to the program's own handler; all replayed exactly."""
import pytest

from conftest import GUESTS, run_ftvm

PROGS = GUESTS / "linux"
SIGNALS_OUT = (b"usr1 handled: 1 on alternate stack: 1\nreset to default: 1\n"
               b"alarms: 3, sleeps interrupted: 1\nblocked signal waited: 1, delivered after unblock: 1\n")


@pytest.mark.parametrize("variant", ["static", "dyn", "spie", "musl"])
def test_signals_record_and_replay(tmp_path, variant):
    prog = PROGS / f"signals.{variant}"
    if not prog.exists():
        pytest.skip(f"{prog.name} not built")
    log = tmp_path / "s.ftlog"
    rec = run_ftvm("record", "-q", "-o", log, "--", prog, timeout=120)
    assert rec.returncode == 0, rec.stderr
    assert rec.stdout == SIGNALS_OUT
    rep = run_ftvm("replay", "-q", log, timeout=120)
    assert rep.returncode == 0, rep.stderr
    assert rep.stdout == rec.stdout
    show = run_ftvm("log", "show", log, "--kind", "signal")
    assert b"signal 14 to thread 100" in show.stdout and b"signal 10 to thread 100" in show.stdout


@pytest.mark.parametrize("variant", ["static", "dyn"])
def test_fault_goes_to_the_programs_handler(tmp_path, variant):
    log = tmp_path / "f.ftlog"
    rec = run_ftvm("record", "-q", "-o", log, "--", PROGS / f"segv.{variant}")
    assert rec.returncode == 42, rec.stderr
    assert rec.stdout == b"about to fault\ncaught signal 11\n"
    rep = run_ftvm("replay", "-q", log)
    assert rep.returncode == 42, rep.stderr
    assert rep.stdout == rec.stdout
