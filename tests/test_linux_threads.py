"""Threads of Linux programs on the one emulated CPU: the deterministic scheduler's
switches (SCHED records) and waits (WAIT records) make replay reproduce the
interleaving exactly; a spinning thread is preempted and cannot hang the guest."""
import pytest

from conftest import GUESTS, ROOT, run_ftvm

PROGS = GUESTS / "linux"


def _record(tmp_path, name, expected):
    """`ftvm record` of a built test program (skipped if not built): it exits 0 and
    prints ``expected``. Returns (log path, the finished process)."""
    prog = PROGS / name
    if not prog.exists():
        pytest.skip(f"{prog.name} not built")
    log = tmp_path / f"{name}.ftlog"
    rec = run_ftvm("record", "-q", "-o", log, "--", prog, timeout=120)
    assert rec.returncode == 0, rec.stderr
    assert rec.stdout == expected
    return log, rec


@pytest.mark.parametrize("variant", ["static", "dyn", "spie", "musl"])
def test_pthreads_record_and_replay(tmp_path, variant):
    log, rec = _record(tmp_path, f"threads.{variant}", b"counter=80000 sum=60 spin done\n")
    rep = run_ftvm("replay", "-q", log, timeout=120)
    assert rep.returncode == 0, rep.stderr
    assert rep.stdout == rec.stdout
    show = run_ftvm("log", "show", log, "--kind", "sched", "--kind", "wait")
    assert b"thread 100 -> 101" in show.stdout and b"waits (futex)" in show.stdout


def test_python_threads_record_and_replay(tmp_path):
    log = tmp_path / "p.ftlog"
    rec = run_ftvm("record", "-q", "-o", log, "--", "/usr/bin/python3", ROOT / "tests/linux_data/threads.py",
                   timeout=180)
    assert rec.returncode == 0, rec.stderr
    assert rec.stdout == b"True [(0, 0), (1, 199990000), (2, 399980000), (3, 599970000)]\n"
    rep = run_ftvm("replay", "-q", log, timeout=180)
    assert rep.returncode == 0, rep.stderr
    assert rep.stdout == rec.stdout


@pytest.mark.parametrize("variant", ["static", "musl"])
def test_timed_futex_waits_that_time_out_replay_guest_time(tmp_path, variant):
    """Two threads whose timed waits (pthread_cond_timedwait: FUTEX_WAIT_BITSET with an
    absolute deadline; a raw FUTEX_WAIT with a relative one) all time out. The clock
    reads those waits make must move the replayed guest clock as the recording's
    moved: the END record's digest compares guest time (a backup of CPython's GIL
    diverged with 'state digest differs: guest time' when they did not)."""
    log, rec = _record(tmp_path, f"timedwait.{variant}", b"cond timeouts=5 futex timeouts=5\n")
    show = run_ftvm("log", "show", log, "--kind", "syscall")
    # The five relative FUTEX_WAITs always reach the kernel and time out there; a
    # pthread_cond_timedwait whose deadline has passed by the time it is called
    # returns ETIMEDOUT without a system call (9 of 10 under load once).
    assert 5 <= show.stdout.count(b"ETIMEDOUT") <= 10, show.stdout[-3000:]
    rep = run_ftvm("replay", "-q", log, timeout=120)
    assert rep.returncode == 0, rep.stderr
    assert rep.stdout == rec.stdout
