"""Linux programs under `ftvm run`: the primary is killed at seeded points, timed from
the output the observer has printed (an observed event, not a clock). Every output line
reaches the observer exactly once and in order, the data directory ends exactly as in a
run without a kill, and the whole-run log replays to the same output."""
import hashlib
import os
import random
import subprocess
import sys
import threading

import pytest

from conftest import FTVM, ROOT, run_ftvm
from test_ft import status, wait_for

DATA = ROOT / "tests" / "linux_data"
PY = "/usr/bin/python3"
BUSYBOX = "/bin/busybox"


def expected_workload(n):
    h = hashlib.sha256()
    lines = []
    for i in range(n):
        line = f"line {i} {h.hexdigest()[:12]}\n"
        h.update(line.encode())
        lines.append(line)
    return "".join(lines), f"done {h.hexdigest()}\n", (n - 1) // 10 * 10


def redundant(run_dir):
    """The primary is protected by the backup its view names, and that backup says it is
    up to date in the same view (one look at every status file: a backup's "ready" alone
    can be left from an earlier view while the next transfer is under way)."""
    st = {n: status(run_dir, n) for n in "ABCD"}
    for s in st.values():
        if s.get("role") == "primary" and s.get("protected"):
            b = (s.get("vs_view") or [None, None, None])[2]
            sb = st.get(b) or {}
            if sb.get("role") == "backup" and sb.get("ready") and sb.get("view") == s.get("view"):
                return True
    return False


def run_with_kills(tmp_path, program, kill_at_lines, nodes=2, timeout=240, stdin_after_kills=None):
    """`ftvm run` PROGRAM; kill the primary once the observer has printed each count
    of lines in ``kill_at_lines``. With ``stdin_after_kills`` (bytes) the guest's stdin
    is a pipe that gets those bytes and its end after the last kill: a guest that reads
    stdin after printing that many lines is still running when the kill lands (a quick
    one could otherwise end before it, its output released in one batch).
    Returns (stdout bytes, stderr, returncode, log)."""
    run_dir, log = tmp_path / "run", tmp_path / "whole.ftlog"
    # A generous failure timeout: these tests are about the Linux personality's output and
    # data across a failover, not about failure detection on a loaded machine.
    args = [str(FTVM), "run", "--run-dir", str(run_dir), "--log", str(log), "--nodes", str(nodes),
            "--fail-timeout-ms", "1000",
            "--data", f"{tmp_path / 'data'}:/data", "--cwd", str(ROOT), "--", *program]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL if stdin_after_kills is None else subprocess.PIPE)
    out = bytearray()
    kills = sorted(kill_at_lines)
    # A run that stops making progress must fail the test, not hang it.
    watchdog = threading.Timer(timeout, p.kill)
    watchdog.start()
    try:
        for line in iter(p.stdout.readline, b""):
            out += line
            if kills and out.count(b"\n") >= kills[0]:
                kills.pop(0)
                if nodes > 2:
                    # Redundancy first (a state transfer), or the kill ends the run.
                    assert wait_for(lambda: redundant(run_dir), timeout=60), "redundancy restored"
                k = run_ftvm("kill", "primary", "--run-dir", run_dir)
                assert k.returncode == 0, k.stderr
                if not kills and stdin_after_kills is not None:
                    p.stdin.write(stdin_after_kills)
                    p.stdin.close()
        err = p.stderr.read().decode()
        p.wait(timeout=timeout)
    finally:
        watchdog.cancel()
        if p.poll() is None:
            p.kill()
    return bytes(out), err, p.returncode, log


def check_replay(log, out):
    rep = run_ftvm("replay", "-q", log)
    assert rep.returncode == 0, rep.stderr
    assert rep.stdout == out, "the whole-run log replays to exactly the observer's output"


@pytest.mark.parametrize("seed", [1, 2])
def test_python_workload_survives_a_primary_kill(tmp_path, seed):
    n = 300
    kill_at = random.Random(seed).randrange(20, n - 40)
    out, err, rc, log = run_with_kills(tmp_path, [PY, "tests/linux_data/ft_workload.py", "/data", str(n), "10"],
                                       [kill_at])
    assert rc == 0, err
    want_lines, done, counter = expected_workload(n)
    assert out.decode() == want_lines + done, f"seed {seed}: kill after {kill_at} lines\n{err}"
    assert "failover" in err, err
    assert (tmp_path / "data" / "lines.txt").read_text() == want_lines
    assert (tmp_path / "data" / "counter").read_text() == f"{counter}\n"
    assert not (tmp_path / "data" / "counter.tmp").exists()
    check_replay(log, out)


def test_python_data_script_three_nodes_two_kills(tmp_path):
    n = 400
    out, err, rc, log = run_with_kills(tmp_path, [PY, "tests/linux_data/ft_workload.py", "/data", str(n), "10"],
                                       [60, 220], nodes=3)
    assert rc == 0, err
    want_lines, done, counter = expected_workload(n)
    assert out.decode() == want_lines + done, err
    assert err.count("failover") >= 2, err
    assert (tmp_path / "data" / "lines.txt").read_text() == want_lines
    check_replay(log, out)


def test_busybox_md5sum_survives_a_primary_kill(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    names = []
    for i in range(400):
        (data / f"f{i:03d}").write_bytes(hashlib.sha256(str(i).encode()).digest() * (i % 7 + 1))
        names.append(f"/data/f{i:03d}")
    kill_at = random.Random(7).randrange(50, 300)
    # md5sum reads stdin ("-") after the last file and the test ends stdin only after the
    # kill: so the guest is still running when the kill lands, whatever the load. (Its
    # stdout is a pipe, fully buffered: lines come out in 4 KiB batches, the last one at
    # exit, so a kill timed by lines alone could come after the end.) The batches before
    # the stdin read hold more than kill_at lines.
    names.append("-")
    native = subprocess.run([BUSYBOX, "md5sum", *[n if n == "-" else str(data / n[6:]) for n in names]],
                            input=b"stdin\n", capture_output=True, check=True).stdout.replace(str(data).encode(), b"/data")
    out, err, rc, log = run_with_kills(tmp_path, [BUSYBOX, "md5sum", *names], [kill_at], stdin_after_kills=b"stdin\n")
    assert rc == 0, err
    assert out == native, f"kill after {kill_at} lines\n{err}"
    check_replay(log, out)


def test_busybox_cp_into_the_data_directory_survives_a_primary_kill(tmp_path):
    data = tmp_path / "data"
    src = data / "src"
    src.mkdir(parents=True)
    for i in range(150):
        (src / f"f{i:03d}").write_bytes(os.urandom(1000 + i))
    # -v prints a line per file: the kill is timed from those lines.
    out, err, rc, log = run_with_kills(tmp_path, [BUSYBOX, "cp", "-rv", "/data/src", "/data/dst"], [40])
    assert rc == 0, err
    for i in range(150):
        assert (data / "dst" / f"f{i:03d}").read_bytes() == (src / f"f{i:03d}").read_bytes()
    lines = out.decode().splitlines()
    assert len(lines) == len(set(lines)) and len(lines) >= 150, out[-500:]
    check_replay(log, out)


_ = sys
