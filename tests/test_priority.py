"""The logging channel's threads ask the OS to run them as soon as a message arrives
(hypervisor/ft/priority.py): what each mode gets, and that nothing else inherits it."""
import os
import subprocess
import sys
import threading

import pytest

from hypervisor.ft import priority


def _in_thread(fn):
    box = {}

    def run():
        try:
            box["v"] = fn()
        except BaseException as e:      # noqa: BLE001 - reported below
            box["e"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]


def _policy():
    return os.sched_getscheduler(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)


def test_off_changes_nothing():
    def body():
        before = (_policy(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        got = priority.raise_this_thread("off")
        return got, before, (_policy(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    got, before, after = _in_thread(body)
    assert got == "off" and before == after


def test_a_bad_setting_means_the_default():
    os.environ["FTVM_IO_SCHED"] = "turbo"
    try:
        assert priority.wanted() == "fifo"
    finally:
        del os.environ["FTVM_IO_SCHED"]


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root (or an RLIMIT_RTPRIO)")
def test_fifo_for_the_thread_only_and_not_for_what_it_starts():
    def body():
        got = priority.raise_this_thread("fifo")
        mine = _policy()
        child = subprocess.run([sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
                               capture_output=True, text=True, check=True).stdout.strip()
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("p", _policy()))
        t.start()
        t.join()
        return got, mine, int(child), box["p"]
    got, mine, child, thread = _in_thread(body)
    assert got == "fifo" and mine == os.SCHED_FIFO
    assert child == os.SCHED_OTHER and thread == os.SCHED_OTHER, "reset on fork: threads and processes too"
    assert _policy() == os.SCHED_OTHER, "the calling test thread is untouched"


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root (or an RLIMIT_RTPRIO)")
def test_threads_started_inside_inherit_and_the_caller_goes_back():
    def body():
        box = {}
        with priority.threads_started_here_raised():
            t = threading.Thread(target=lambda: box.setdefault("p", _policy()))
            t.start()
            t.join()
        return box["p"], _policy()
    started, after = _in_thread(body)
    assert started == os.SCHED_FIFO and after == os.SCHED_OTHER


def test_slice_or_less_for_anyone():
    """Without root the best is a short EEVDF slice (Linux 6.12+) or nothing."""
    code = ("import threading, os; from hypervisor.ft import priority; "
            "print(priority.raise_this_thread())")
    env = dict(os.environ)
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("slice", "off"), r.stdout


def test_ftvms_own_io_thread_is_not_real_time():
    """It runs Python: real-time, it preempted its own process's emulation thread only
    to wait for the interpreter lock that thread held (the median went up)."""
    def body():
        got = priority.raise_python_thread()
        return got, _policy()
    got, policy = _in_thread(body)
    assert got in ("slice", "nice", "off") and policy == os.SCHED_OTHER
