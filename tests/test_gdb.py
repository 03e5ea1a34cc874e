"""gdb on a replay (issue 15): a scripted gdb session against a recorded C program with
symbols, checked against the values the program printed; then bad input from clients.

The program is compiled here (gcc -g -O0 -static) so that gdb has its symbols and line
table. gdb runs in batch mode with -ex commands; ftvm runs as `ftvm replay --gdb`.
"""
import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from conftest import FTVM, run_ftvm
from hypervisor.debug import rsp

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None or shutil.which("gcc") is None,
                                reason="needs gdb and gcc")

PROGRAM = r"""
#include <stdio.h>
long total;
long history[64];
int calls;

long mix(long x, int i)
{
    long y = x * 31 + i;
    y ^= (y >> 7);
    return y & 0xffffff;
}

void bump(int i)
{
    total = mix(total, i);
    history[i % 64] = total;
    calls++;
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 40;
    for (int i = 0; i < rounds; i++) {
        bump(i);
        if (argc < 3)
            printf("i=%d total=%ld\n", i, total);
    }
    printf("final total=%ld calls=%d\n", total, calls);
    return 0;
}
"""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    d = tmp_path_factory.mktemp("gdb")
    src = d / "counter.c"
    src.write_text("#include <stdlib.h>\n" + PROGRAM)
    exe = d / "counter"
    subprocess.run(["gcc", "-g", "-O0", "-static", str(src), "-o", str(exe)], check=True)
    log = d / "counter.ftlog"
    rec = run_ftvm("record", "-o", log, "--", exe)
    assert rec.returncode == 0, rec.stderr
    totals = {int(m.group(1)): int(m.group(2)) for m in re.finditer(rb"i=(\d+) total=(\d+)", rec.stdout)}
    assert len(totals) == 40
    return d, exe, log, totals, rec.stdout


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    def __init__(self, log, *extra):
        self.port = free_port()
        self.p = subprocess.Popen([str(FTVM), "replay", str(log), "--gdb", str(self.port), *extra],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        self.err = b""
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("the gdb server did not start")
        # That probe connection counts as a (short) debugger session.
        time.sleep(0.3)

    def stop(self):
        self.p.terminate()
        out, err = self.p.communicate(timeout=30)
        return out, err.decode()


def gdb(exe, port, *cmds, timeout=120):
    args = ["gdb", "-batch", "-nx", str(exe), "-ex", "set confirm off", "-ex", f"target remote :{port}"]
    for c in cmds:
        args += ["-ex", c]
    p = subprocess.run(args, capture_output=True, timeout=timeout, text=True)
    return p.stdout + p.stderr


def values(out, name="\\$\\d+"):
    return [int(v) for v in re.findall(rf"^{name} = (-?\d+)$", out, re.M)]


def test_break_read_watch_reverse(recorded):
    d, exe, log, totals, _ = recorded
    srv = Server(log)
    try:
        out = gdb(exe, srv.port,
                  "break bump", "continue", "continue", "continue",
                  "print i", "print total",                                 # at bump(2): total after bump(1)
                  "info registers rip fs_base gs_base eflags mxcsr",
                  "print $xmm1.uint128",
                  "watch total", "continue",                               # the write in bump(2)
                  "print total",
                  "continue", "continue",                                  # breakpoint bump(3), then its write
                  "print total",
                  "reverse-continue",                                      # in front of bump(3)'s write
                  "print total",
                  "reverse-continue",                                      # back to bump(3)'s entry breakpoint
                  "print i",
                  "reverse-continue",                                      # in front of the write in bump(2)
                  "print total",
                  "reverse-stepi", "print total", "stepi", "stepi", "print total",
                  "monitor when")
    finally:
        _, err = srv.stop()
    assert "Traceback" not in err, err
    assert "Breakpoint 1, bump (i=2)" in out, out
    v = values(out)
    assert v[0] == 2 and v[1] == totals[1], out
    assert re.search(r"fs_base\s+0x[1-9a-f]", out), out
    assert "mxcsr" in out and "eflags" in out
    assert v[3] == totals[2], out                         # after the watched write in bump(2)
    assert "Hardware watchpoint 2: total" in out and f"New value = {totals[2]}" in out, out
    assert v[4] == totals[3], out
    assert v[5] == totals[2], out                         # reverse-continue: in front of the write
    assert v[6] == 3, out                                 # then the breakpoint at bump(3)'s entry
    assert v[7] == totals[1], out                         # then in front of bump(2)'s write
    assert v[8] == totals[1], out                         # one instruction further back
    assert v[9] == totals[2], out                         # two forwards: the write is done again
    assert re.search(r"block \d+ \+\d+ instructions, pc 0x[0-9a-f]+ \(point \d+\+\d+\); \d+ events applied", out), out


def test_monitor_goto_point_from_log_show(recorded):
    d, exe, log, totals, stdout = recorded
    show = run_ftvm("log", "show", log, "--kind", "syscall")
    writes = [l for l in show.stdout.decode().splitlines() if " write(1," in l]
    assert writes, show.stdout
    m = re.search(r"block\s+(\d+) pc (0x[0-9a-f]+)", writes[0])
    blocks, pc = int(m.group(1)), int(m.group(2), 16)
    n_sys = int(re.search(r"#(\d+) write", writes[0]).group(1))
    srv = Server(log)
    try:
        out = gdb(exe, srv.port,
                  f"monitor goto block {blocks} pc {pc:#x}", "maint flush register-cache",
                  "print/x $pc", "print $rax", "print $rdi",
                  f"monitor goto sys:{n_sys}", "maint flush register-cache",
                  "print $orig_rax", "print total", "monitor when",
                  "monitor goto 0", "maint flush register-cache", "print total",
                  "monitor goto nonsense", "print 1234")
    finally:
        _, err = srv.stop()
    assert f"$1 = {pc:#x}" in out, out                      # in front of the syscall instruction
    v = values(out)
    assert v[0] == 1 and v[1] == 1, out                     # write(1, ...): rax = 1 (the call), rdi = 1
    assert v[2] == 1, out                                   # orig_rax: write pending at sys:N
    assert v[3] == totals[39], out                          # stdout is a pipe: one write at the end
    assert f"{n_sys} system calls done; next: syscall at block {blocks}" in out, out
    assert v[4] == 0, out                                   # the start: total not yet written
    assert "is not a point" in out and "$7 = 1234" in out, out
    assert "Traceback" not in err


def test_writes_refused_and_replay_output_once(recorded):
    d, exe, log, totals, stdout = recorded
    srv = Server(log)
    try:
        out = gdb(exe, srv.port, "break bump", "continue", "set var total = 5", "print total",
                  "set $rax = 1", "delete", "continue", "reverse-stepi", "print/x $pc")
    finally:
        sout, err = srv.stop()
    assert "replay would no longer be the recorded run" in err, err
    assert re.search(r"\$1 = 0$", out, re.M), out
    assert "No more reverse-execution history" in out, out   # continue ran to the end of the recording
    assert sout == stdout                                     # the guest's output, once, going back or not


# --- bad input --------------------------------------------------------------------------------------

class Client:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.reader = rsp.PacketReader()
        self.pending = []

    def send_raw(self, data):
        self.s.sendall(data)

    def events(self):
        while not self.pending:
            data = self.s.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.pending += self.reader.feed(data)
        return self.pending.pop(0)

    def ask(self, payload):
        self.send_raw(rsp.frame(payload))
        while True:
            ev = self.events()
            if ev[0] == "packet":
                self.send_raw(b"+")
                return ev[1].decode()

    def monitor(self, text):
        self.send_raw(rsp.frame("qRcmd," + text.encode().hex()))
        out = ""
        while True:
            ev = self.events()
            if ev[0] == "packet":
                self.send_raw(b"+")
                p = ev[1].decode()
                if p.startswith("O") and p != "OK":
                    out += bytes.fromhex(p[1:]).decode()
                else:
                    return out


def test_bad_input_disconnect_second_client(recorded, tmp_path):
    d, exe, _, _, _ = recorded
    # A longer run, so that a continue is still running when the client goes.
    log = tmp_path / "long.ftlog"
    rec = run_ftvm("record", "-o", log, "--", exe, "20000000", "quiet")
    assert rec.returncode == 0, rec.stderr
    srv = Server(log, "--snapshot-interval-ms", "100")
    try:
        a = Client(srv.port)
        assert a.ask("qSupported:swbreak+").startswith("PacketSize")
        # A damaged packet gets "-", and the session goes on.
        a.send_raw(b"$m4a62e0,8#00")
        assert a.events() == ("nack",)
        assert a.ask("?").startswith("T05")
        assert a.ask("mzz,8").startswith("E")
        assert a.ask("Z9,0,0") == ""
        a.send_raw(b"$" + b"x" * 40000 + b"#00")              # too long: dropped with "-"
        assert a.events() == ("nack",)
        assert a.ask("qC") == "QC64"                            # the main thread: tid 100
        # A second client is refused; the first goes on.
        b = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
        got = b""
        while True:
            chunk = b.recv(1000)
            if not chunk:
                break
            got += chunk
        assert b"another debugger" in got
        where = a.monitor("when")
        assert "point 0" in where, where
        # Interrupting a continue with 0x03.
        a.send_raw(rsp.frame("c"))
        time.sleep(0.5)
        a.send_raw(b"\x03")
        reply = a.events()
        while reply[0] != "packet":
            reply = a.events()
        assert reply[1].startswith(b"T02"), reply
        a.send_raw(b"+")
        stopped = a.monitor("when")
        assert "point 0" not in stopped
        # Go away in the middle of a continue.
        a.send_raw(rsp.frame("c"))
        time.sleep(0.3)
        a.s.close()
        time.sleep(1.0)
        c = Client(srv.port)
        assert c.ask("qSupported").startswith("PacketSize")
        later = c.monitor("when")
        assert "block" in later and later != stopped
        # The replay state is intact: run to the end and check the output.
        reply = c.ask("c")
        assert "replaylog:end" in reply, reply
        c.s.close()
    finally:
        sout, err = srv.stop()
    assert "Traceback" not in err, err
    assert "damaged packet" in err and "refused a second debugger" in err
    assert sout == rec.stdout


def test_whole_run_log_across_a_failover(recorded, tmp_path):
    """The whole-run log of `ftvm run` with a primary kill: stop at the go-live point
    and step across it, both ways."""
    d, exe, _, _, _ = recorded
    for attempt in range(2):      # the run itself is not under test: a loaded host may kill too early
        log = tmp_path / f"whole{attempt}.ftlog"
        run = run_ftvm("run", "--kill-primary-after", "1.0", "--fail-timeout-ms", "1000", "--log", log,
                       "--run-dir", tmp_path / f"run{attempt}", "--", exe, "40000000", "quiet", timeout=300)
        show = run_ftvm("log", "show", log, "--kind", "golive").stdout.decode() if log.exists() else ""
        m = re.search(r"golive block\s+(\d+) pc (0x[0-9a-f]+)", show)
        if run.returncode == 0 and m:
            break
    assert run.returncode == 0, run.stderr
    assert m, show
    blocks, pc = int(m.group(1)), int(m.group(2), 16)
    srv = Server(log)
    try:
        out = gdb(exe, srv.port, "monitor goto golive", "maint flush register-cache", "print/x $pc",
                  "monitor when", "stepi", "stepi", "stepi", "print/x $pc",
                  "reverse-stepi", "reverse-stepi", "reverse-stepi", "print/x $pc", "monitor when",
                  "reverse-stepi", "print/x $pc", "break bump", "continue", "print calls", "delete", "continue")
    finally:
        sout, err = srv.stop()
    assert "Traceback" not in err, err
    pcs = [int(v, 16) for v in re.findall(r"^\$\d+ = (0x[0-9a-f]+)$", out, re.M)]
    assert pcs[0] == pc and pcs[2] == pc, out
    assert pcs[1] != pc and pcs[3] != pc, out
    assert out.count(f"block {blocks} pc {pc:#x}") >= 2, out
    assert "Breakpoint 1, bump" in out, out
    assert sout == run.stdout


# --- the picture of a run -----------------------------------------------------------------------------

TICK = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
/* Computes for argv[1] ms of its own (guest) time, however fast the engine runs. */
int main(int argc, char **argv)
{
    long ms = atol(argv[1]);
    unsigned long x = 1;
    struct timespec ts, t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long r = 0;; r++) {
        for (long i = 0; i < 200000; i++)
            x = x * 6364136223846793005ul + (unsigned long)i;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if (r % 20 == 0) {
            printf("round %ld x=%lu\n", r, x % 1000);
            fflush(stdout);
        }
        if ((ts.tv_sec - t0.tv_sec) * 1000 + (ts.tv_nsec - t0.tv_nsec) / 1000000 >= ms)
            break;
    }
    return 0;
}
"""


def test_plot_of_a_run_with_two_failovers(tmp_path):
    pytest.importorskip("matplotlib")
    src = tmp_path / "tick.c"
    src.write_text(TICK)
    exe = tmp_path / "tick"
    subprocess.run(["gcc", "-O1", "-static", str(src), "-o", str(exe)], check=True)
    from hypervisor.errors import FtvmError
    from hypervisor.plot import gather
    for attempt in range(3):      # the run itself is not under test: a loaded host may upset it
        log, run_dir = tmp_path / f"whole{attempt}.ftlog", tmp_path / f"run{attempt}"
        run = run_ftvm("run", "--nodes", "3", "--kill-primary-after", "3", "--kill-primary-after", "7",
                       "--fail-timeout-ms", "1000", "--log", log, "--run-dir", run_dir, "--", exe, "12000",
                       timeout=300)
        try:
            if run.returncode == 0 and len(gather(log).golives) == 2:
                break
        except FtvmError:
            continue
    assert run.returncode == 0, run.stderr
    d = gather(log)
    assert len(d.golives) == 2 and d.timed
    want = [d.t(b) for b, _, _, _ in d.golives]
    for svg, args in ((tmp_path / "run.svg", ("log", "plot", log, "-o", tmp_path / "run.svg")),
                      (tmp_path / "status.svg", ("status", "--run-dir", run_dir, "--plot", tmp_path / "status.svg"))):
        p = run_ftvm(*args)
        assert p.returncode == 0, p.stderr
        text = svg.read_text()
        got = {}
        for i, t in re.findall(r'id="failover-(\d+)-t([0-9.]+)"', text):
            got[int(i)] = float(t)
        assert sorted(got) == [1, 2], text[:300]
        assert [round(got[1], 3), round(got[2], 3)] == [round(w, 3) for w in want]
        assert 0 < got[1] < got[2] < d.t(d.end_blocks)
        # Guest time runs with the host clock: the second kill came 4 s after the first.
        assert 2.5 < got[2] - got[1] < 6.0, (got, run.stderr)
        assert "failover 1: " in text and "failover 2: " in text and "primary " in text
        # View 1 has its backup from the start; the first failover brings a transfer.
        assert len(re.findall(r'id="transfer-\d+-t', text)) >= 1 * 3      # on every panel


def test_threads_are_gdb_threads(tmp_path):
    from conftest import ROOT
    exe = tmp_path / "threads"
    subprocess.run(["gcc", "-g", "-O0", "-static", "-pthread", str(ROOT / "guest_programs" / "linux" / "threads.c"),
                    "-o", str(exe)], check=True)
    log = tmp_path / "threads.ftlog"
    rec = run_ftvm("record", "-o", log, "--", exe)
    assert rec.returncode == 0, rec.stderr
    srv = Server(log)
    try:
        out = gdb(exe, srv.port, "break worker", "continue", "continue", "info threads", "thread 1", "bt",
                  "reverse-continue", "info threads")
    finally:
        _, err = srv.stop()
    assert "Traceback" not in err, err
    assert re.search(r"Thread \d+ hit Breakpoint 1, worker", out), out
    listed = re.findall(r"^\*?\s+\d+\s+Thread (\d+) \((running|runnable|waiting[^)]*\))", out, re.M)
    assert len({tid for tid, _ in listed}) >= 3, out
    assert "in main () at" in out, out                # thread 1's own stack, from its saved registers
