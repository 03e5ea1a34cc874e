"""Ctrl-C (SIGINT) or SIGTERM during recording closes the log properly: it ends with an
end record, replays, and ftvm exits 130 without a traceback."""
import signal
import subprocess

import pytest

from conftest import FTVM, log_records, run_ftvm
from logging_channel import records as R


@pytest.mark.parametrize("guest,sig", [("lines_long.elf", signal.SIGINT), ("echo.elf", signal.SIGINT),
                                       ("lines_long.elf", signal.SIGTERM)])
def test_signal_closes_the_log(guests, tmp_path, guest, sig):
    log = tmp_path / "x.ftlog"
    # lines_long is busy for seconds; echo says it is ready, then waits in HLT for input
    # that never comes (stdin stays open). Either way the signal goes once the guest has
    # printed its first line: ftvm is then running it (a fixed sleep would land after a
    # fast guest's end, or before the start).
    # Unbuffered: readline() must not take bytes that communicate() then never sees.
    p = subprocess.Popen([str(FTVM), "record", guests / guest, "-o", log], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    first = p.stdout.readline()
    assert first, "the guest printed nothing"
    p.send_signal(sig)
    out, err = p.communicate(timeout=30)
    out = first + out
    err = err.decode()
    assert p.returncode == 130, err
    assert "Traceback" not in err
    assert f"stopped by signal {int(sig)}" in err
    recs = log_records(log)
    assert recs[-1].kind == R.END and recs[-1].reason == "interrupted"
    rep = run_ftvm("replay", log)
    assert rep.returncode == 130, rep.stderr
    assert rep.stdout == out
    assert "the recording was interrupted here" in rep.stderr
