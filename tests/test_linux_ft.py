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


def run_with_kills(tmp_path, program, kill_at_lines, nodes=2, timeout=240):
    """`ftvm run` PROGRAM; kill the primary once the observer has printed each count
    of lines in ``kill_at_lines`` (for a guest that runs long enough for that: see
    run_killed_while_waiting otherwise). Returns (stdout bytes, stderr, returncode, log)."""
    run_dir, log = tmp_path / "run", tmp_path / "whole.ftlog"
    p = subprocess.Popen(_run_args(tmp_path, run_dir, log, nodes, program), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
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
        err = p.stderr.read().decode()
        p.wait(timeout=timeout)
    finally:
        watchdog.cancel()
        if p.poll() is None:
            p.kill()
    return bytes(out), err, p.returncode, log


def _run_args(tmp_path, run_dir, log, nodes, program):
    # A generous failure timeout: these tests are about the Linux personality's output and
    # data across a failover, not about failure detection on a loaded machine.
    return [str(FTVM), "run", "--run-dir", str(run_dir), "--log", str(log), "--nodes", str(nodes),
            "--fail-timeout-ms", "1000", "--data", f"{tmp_path / 'data'}:/data", "--cwd", str(ROOT), "--", *program]


def run_killed_while_waiting(tmp_path, program, first, rest, ready=lambda: True, timeout=240):
    """`ftvm run` PROGRAM with ``first`` as its input; once the primary reports that
    the guest waits (for more input) and ``ready()`` holds, kill the primary, then give
    ``rest`` and end the input. A program that waits is certainly still running when it
    is killed; one that reads data-directory files in C inside the system-call hook is
    done within milliseconds, before the observer could print a line a kill was timed
    from (and a pipe's output is buffered until the end anyway)."""
    run_dir, log = tmp_path / "run", tmp_path / "whole.ftlog"
    p = subprocess.Popen(_run_args(tmp_path, run_dir, log, 2, program), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.PIPE)
    watchdog = threading.Timer(timeout, p.kill)
    watchdog.start()
    got = {}
    reader = threading.Thread(target=lambda: got.update(out=p.stdout.read(), err=p.stderr.read()), daemon=True)
    reader.start()
    try:
        p.stdin.write(first)
        p.stdin.flush()

        def waiting():
            return any(st.get("role") == "primary" and st.get("guest_waits") and st.get("protected")
                       for st in (status(run_dir, n) for n in "AB")) and ready()
        assert wait_for(waiting, timeout=120), "the guest never waited for input"
        k = run_ftvm("kill", "primary", "--run-dir", run_dir)
        assert k.returncode == 0, k.stderr
        p.stdin.write(rest)
        p.stdin.close()
        p.wait(timeout=timeout)
        reader.join(timeout=30)
    finally:
        watchdog.cancel()
        if p.poll() is None:
            p.kill()
    return got.get("out", b""), got.get("err", b"").decode(), p.returncode, log


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
    """md5sum of 400 data-directory files with its standard input ("-") among them: the
    primary is killed while md5sum waits there, after the 200 files before it."""
    data = tmp_path / "data"
    data.mkdir()
    names = []
    for i in range(400):
        (data / f"f{i:03d}").write_bytes(hashlib.sha256(str(i).encode()).digest() * (i % 7 + 1))
        names.append(f"/data/f{i:03d}")
    args = [*names[:200], "-", *names[200:]]
    given = b"input typed after the failover\n"
    native = subprocess.run([BUSYBOX, "md5sum", *[a if a == "-" else str(data / a[6:]) for a in args]],
                            input=given, capture_output=True, check=True).stdout.replace(str(data).encode(), b"/data")
    out, err, rc, log = run_killed_while_waiting(tmp_path, [BUSYBOX, "md5sum", *args], b"", given)
    assert rc == 0, err
    assert out == native, err
    assert "failover" in err, err
    check_replay(log, out)


def test_busybox_tar_into_the_data_directory_survives_a_primary_kill(tmp_path):
    """tar -x reading its archive from standard input writes 150 files into the data
    directory; the primary is killed while tar waits for the second half of the
    archive, once the first half's 75 files are on disk."""
    import io
    import tarfile
    data = tmp_path / "data"
    (data / "dst").mkdir(parents=True)
    files = {f"src/f{i:03d}": os.urandom(1000 + i) for i in range(150)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (name, body) in enumerate(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(body), 1700000000, 0o644
            tar.addfile(info, io.BytesIO(body))
            if i == 74:
                half = buf.tell()
    archive = buf.getvalue()
    out, err, rc, log = run_killed_while_waiting(tmp_path, [BUSYBOX, "tar", "-xvf", "-", "-C", "/data/dst"],
                                                 archive[:half], archive[half:],
                                                 ready=lambda: (data / "dst" / "src" / "f074").exists())
    assert rc == 0, err
    for name, body in files.items():
        assert (data / "dst" / name).read_bytes() == body, name
    lines = out.decode().splitlines()
    assert lines == list(files), out[-500:]
    assert "failover" in err, err
    check_replay(log, out)


_ = sys
