"""Fault tolerance with real processes: primary and backup nodes joined by ZeroMQ over
loopback TCP, the observer in front, real SIGKILLs.

Every check is the same: the observer printed every line of the output-heavy guest
exactly once and in order, ended with the guest's status, and the whole-run log
replays to exactly what the observer printed."""
import json
import os
import random
import signal
import socket
import subprocess
import time

import pytest

from conftest import FTVM, GUESTS, run_ftvm

LINES = 2000
# Tests that act at fixed times use the longer guest: with the inline block counter,
# lines.elf's guest part is over within about a second of the start.
LONG, LONG_LINES = "lines_long.elf", 6000


def check_lines(out: bytes, n=LINES):
    lines = out.decode().splitlines()
    nums = [int(line.split()[1]) for line in lines]
    assert nums == list(range(1, n + 1)), f"{len(nums)} lines; first bad at " + str(
        next((i for i, n in enumerate(nums) if n != i + 1), None))


def ft_run(tmp_path, guest="lines.elf", kills=(), input=b"", env=None, extra=(), timeout=120):
    run_dir = tmp_path / "run"
    log = tmp_path / "whole.ftlog"
    args = [str(FTVM), "run", str(GUESTS / guest), "--run-dir", str(run_dir), "--log", str(log), *extra]
    for k in kills:
        args += ["--kill-primary-after", f"{k:.3f}"]
    p = subprocess.run(args, input=input, capture_output=True, timeout=timeout,
                       env=dict(os.environ, **(env or {})))
    p.stderr = p.stderr.decode()
    return p, run_dir, log


def check_replay(log, out):
    rep = run_ftvm("replay", "-q", log)
    assert rep.returncode == 0, rep.stderr
    assert rep.stdout == out, "the whole-run log replays to exactly the observer's output"


@pytest.mark.parametrize("guest,stdin,expect", [
    ("hello.elf", b"", b"Hello from an ftvm guest!\n"),
    ("echo.elf", b"ab\ncd\n", b"echo[2]: CD\necho: 2 lines, 6 bytes\n"),
    ("ticker.elf", b"", b"ticker: ticks=5"),
    ("clock.elf", b"", b"monotonic=yes"),
    ("mixed.elf", b"xyz\n", b"mixed: bytes=4"),
])
def test_ft_run_without_failures(guests, tmp_path, guest, stdin, expect):
    p, run_dir, log = ft_run(tmp_path, guest, input=stdin)
    assert p.returncode == 0, p.stderr
    assert expect in p.stdout
    assert "Traceback" not in p.stderr
    check_replay(log, p.stdout)


def _seeded_kills(tmp_path, count, need):
    """SIGKILL the primary at ``count`` seeded points spread over the run, counted from
    when the primary started the guest (so load that slows the start shifts nothing)."""
    seed = int(os.environ.get("FTVM_TEST_SEED", "20261122"))
    rnd = random.Random(seed)
    points = sorted(rnd.uniform(0.05, 1.0) for _ in range(count))
    failovers = 0
    for i, t in enumerate(points):
        d = tmp_path / f"k{i}"
        d.mkdir()
        repro = (f"reproduce: FTVM_TEST_SEED={seed} (kill point #{i} = {t:.3f} s): "
                 f"ftvm run {GUESTS / LONG} --kill-primary-after {t:.3f} --log x.ftlog")
        p, run_dir, log = ft_run(d, LONG, kills=[t])
        assert p.returncode == 0, f"{repro}\n{p.stderr}"
        try:
            check_lines(p.stdout, LONG_LINES)
            check_replay(log, p.stdout)
        except AssertionError as e:
            raise AssertionError(f"{repro}\n{e}\n{p.stderr}") from None
        failovers += "failover: node B" in p.stderr
    assert failovers >= need, f"only {failovers} of {count} kills landed while the guest ran"


def test_seeded_random_primary_kills(guests, tmp_path):
    """A handful of kills in the default run; the 50-kill campaign is below (--run-slow)."""
    _seeded_kills(tmp_path, 3, need=2)


@pytest.mark.slow
def test_seeded_random_primary_kills_campaign(guests, tmp_path):
    _seeded_kills(tmp_path, 50, need=40)


def test_kill_the_backup(guests, tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "whole.ftlog"
    proc = subprocess.Popen([str(FTVM), "run", str(GUESTS / LONG), "--run-dir", str(run_dir),
                             "--log", str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    # Event-driven: kill once the primary is releasing output (not after a fixed sleep).
    assert wait_for(lambda: status(run_dir, "A").get("released_bytes", 0) > 1000, timeout=30)
    k = run_ftvm("kill", "backup", "--run-dir", run_dir)
    assert k.returncode == 0, k.stderr
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    check_lines(out, 6000)
    assert b"UNPROTECTED" in (run_dir / "A.stderr").read_bytes()
    assert "carries on as primary of view 2" in err.decode()
    check_replay(log, out)


def test_kill_both_is_a_clear_error_with_logs_intact(guests, tmp_path):
    p, run_dir, log = ft_run(tmp_path, LONG, kills=[0.3, 1.8])
    assert p.returncode == 8, p.stderr
    assert "every node is dead" in p.stderr and "Traceback" not in p.stderr
    for name in ("A", "B"):
        show = run_ftvm("log", "show", run_dir / f"{name}.ftlog", "-k", "header")
        assert show.returncode == 0
    # B's log holds the whole run up to its death: it replays as far as it goes.
    rep = run_ftvm("replay", "-q", run_dir / "B.ftlog")
    assert rep.returncode == 4, rep.stderr
    assert p.stdout.startswith(rep.stdout[: len(p.stdout)]) or rep.stdout.startswith(p.stdout)


def _claim_race(args):
    directory, view, name = args
    from hypervisor.ft.arbiter import Arbiter
    return Arbiter(directory).claim(view, name)


def test_go_live_race_has_exactly_one_winner(tmp_path):
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(8) as pool:
        for view in range(1, 41):
            wins = pool.map(_claim_race, [(str(tmp_path), view, f"n{i}") for i in range(8)])
            assert sum(wins) == 1, wins
    from hypervisor.ft.arbiter import Arbiter
    assert Arbiter(tmp_path).highest()[0] == 40


def wait_for(pred, timeout=10):
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if pred():
            return True
        time.sleep(0.02)
    return False


def status(run_dir, name):
    try:
        return json.loads((run_dir / f"{name}.status.json").read_text())
    except (OSError, ValueError):
        return {}


def test_frozen_primary_never_releases_after_resume(guests, tmp_path):
    # lines_long: the run goes on after the old primary resumes, so it must learn it is stale.
    run_dir = tmp_path / "run"
    log = tmp_path / "whole.ftlog"
    proc = subprocess.Popen([str(FTVM), "run", str(GUESTS / "lines_long.elf"), "--run-dir", str(run_dir), "--log", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert wait_for(lambda: status(run_dir, "A").get("released_bytes", 0) > 1000)
    pid_a = status(run_dir, "A")["pid"]
    os.kill(pid_a, signal.SIGSTOP)
    frozen_at = time.time()
    assert wait_for(lambda: status(run_dir, "B").get("role") == "primary"), "the backup went live"
    time.sleep(0.3)
    resumed_at = time.time()
    os.kill(pid_a, signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    check_lines(out, 6000)
    a_err = (run_dir / "A.stderr").read_text()
    assert "halting" in a_err and "stale" in a_err, a_err
    st = status(run_dir, "A")
    # When A last decided to release: a decision made just before the freeze may still
    # be sent just after it, but none may be made after it.
    assert st["last_release_unix"] is None or st["last_release_unix"] < resumed_at, \
        f"old primary released output {st['last_release_unix'] - frozen_at:.3f} s after it was frozen"
    check_replay(log, out)


def test_channel_faults_break_nothing(guests, tmp_path):
    faults = "drop=0.05,dup=0.05,reorder=0.05,delay_ms=3,seed=11"
    p, run_dir, log = ft_run(tmp_path, env={"FTVM_CHANNEL_FAULTS": faults})
    assert p.returncode == 0, p.stderr
    check_lines(p.stdout)
    check_replay(log, p.stdout)


def test_channel_faults_with_a_failover(guests, tmp_path):
    faults = "drop=0.05,dup=0.05,reorder=0.05,delay_ms=3,seed=12"
    p, run_dir, log = ft_run(tmp_path, LONG, kills=[1.0], env={"FTVM_CHANNEL_FAULTS": faults})
    assert p.returncode == 0, p.stderr
    check_lines(p.stdout, LONG_LINES)
    check_replay(log, p.stdout)


def test_garbage_sent_to_the_channel_port(guests, tmp_path):
    import zmq
    run_dir = tmp_path / "run"
    log = tmp_path / "whole.ftlog"
    proc = subprocess.Popen([str(FTVM), "run", str(GUESTS / "lines.elf"), "--run-dir", str(run_dir), "--log", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert wait_for(lambda: (run_dir / "run.json").exists())
    # Readiness, not a sleep: a node writes its status once its inbox is bound and its
    # timer runs.
    assert wait_for(lambda: (run_dir / "A.status.json").exists() and (run_dir / "B.status.json").exists())
    nodes = json.loads((run_dir / "run.json").read_text())["nodes"]
    ctx = zmq.Context()
    for name, addr in nodes.items():
        host, port = addr.removeprefix("tcp://").rsplit(":", 1)
        with socket.create_connection((host, int(port))) as s:      # not even ZMTP
            s.sendall(os.urandom(4096))
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.connect(addr)
        for i in range(50):                                          # ZMTP, but junk inside
            push.send(os.urandom(100 + i))
        push.close()
    ctx.term()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    check_lines(out)
    assert status(run_dir, "A")["garbage"] + status(run_dir, "B")["garbage"] >= 50
    check_replay(log, out)


@pytest.mark.parametrize("skew_s", [3, -3])
def test_guest_time_never_runs_backwards_across_a_failover(guests, tmp_path, skew_s):
    """The backup's host clock is off by several seconds: the offset is estimated from
    heartbeats and guest time neither jumps by it nor runs backwards."""
    skew = skew_s * 1_000_000_000
    # The long variant runs for seconds: the kill at 0.3 s lands while it runs.
    p, run_dir, log = ft_run(tmp_path, "tsc_heavy_long.elf", kills=[0.3],
                             env={"FTVM_TEST_CLOCK_SKEW_NS_B": str(skew)})
    assert p.returncode == 0, p.stderr
    assert "failover: node B" in p.stderr
    out = p.stdout.decode()
    assert "monotonic=yes" in out
    elapsed_s = int(out.split("elapsed_ns=")[1].split()[0]) / 1e9
    summary = json.loads((run_dir / "observer.json").read_text())
    run_s = summary["exit_s"] - summary["first_hello_s"]
    # Guest time follows the run's host time: a jump by the skew would show.
    assert 0.2 < elapsed_s < run_s + 1.0, f"guest time advanced {elapsed_s:.3f} s over a {run_s:.2f} s run"
    estimate_s = status(run_dir, "B")["clock_offset_us"] / 1e6
    assert abs(estimate_s + skew_s) < 0.01, estimate_s       # B sees A's clock -skew away
    check_replay(log, p.stdout)


def test_progress_display(guests, tmp_path):
    p, run_dir, log = ft_run(tmp_path, extra=["--progress"])
    assert p.returncode == 0, p.stderr
    check_lines(p.stdout)
    assert "lag ms" in p.stderr and "clock offset" in p.stderr


def test_interactive_input_survives_a_failover(guests, tmp_path):
    """Lines typed while the primary dies: each is echoed exactly once, in order."""
    run_dir = tmp_path / "run"
    log = tmp_path / "whole.ftlog"
    proc = subprocess.Popen([str(FTVM), "run", str(GUESTS / "echo.elf"), "--run-dir", str(run_dir), "--log", str(log)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: status(run_dir, "A").get("role") == "primary", timeout=30)   # readiness, for the kill
    n = 60
    for i in range(n):
        proc.stdin.write(f"line {i} of the input\n".encode())
        proc.stdin.flush()
        time.sleep(0.02)
        if i == n // 2:
            assert run_ftvm("kill", "primary", "--run-dir", run_dir).returncode == 0
    out, err = proc.communicate(timeout=60)      # closes stdin: end of input
    err = err.decode()
    assert proc.returncode == 0, err
    want = b"echo: ready\n" + b"".join(f"echo[{i + 1}]: LINE {i} OF THE INPUT\n".encode() for i in range(n))
    assert out == want + f"echo: {n} lines, {sum(len(f'line {i} of the input') + 1 for i in range(n))} bytes\n".encode()
    assert "failover: node B" in err
    check_replay(log, out)


def test_ctrl_c_stops_the_whole_run(guests, tmp_path):
    run_dir = tmp_path / "run"
    # a guest that computes for several seconds (about 6 s alone; compute.elf and
    # tsc_heavy_long.elf, about 1 s, could end first under load)
    proc = subprocess.Popen([str(FTVM), "run", str(GUESTS / "lines_long.elf"), "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert wait_for(lambda: status(run_dir, "A").get("blocks", 0) > 0 and status(run_dir, "B").get("pid"))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err.decode()
    pids = [status(run_dir, n)["pid"] for n in ("A", "B")]
    assert wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), timeout=10), "nodes stopped"


def test_ctrl_c_stops_a_run_started_with_it_ignored_and_blocked(guests, tmp_path):
    """A script's background job starts with SIGINT ignored, and a thread's blocked
    signals are inherited: `ftvm run` takes SIGINT and SIGTERM back, so it still stops
    cleanly (a clean-clone test run once lost four Ctrl-C tests that way)."""
    run_dir = tmp_path / "run"

    def ignore_and_block():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    proc = subprocess.Popen([str(FTVM), "run", str(GUESTS / "lines_long.elf"), "--run-dir", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            preexec_fn=ignore_and_block)
    assert wait_for(lambda: status(run_dir, "A").get("blocks", 0) > 0 and status(run_dir, "B").get("pid"))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err


def test_nodes_stop_when_the_observer_dies(guests, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([str(FTVM), "run", str(GUESTS / "echo.elf"), "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE)
    assert wait_for(lambda: status(run_dir, "A").get("observer_seen_s_ago") is not None
                    and status(run_dir, "B").get("observer_seen_s_ago") is not None)
    proc.kill()                                  # the observer dies; echo waits for input forever
    proc.wait()
    pids = [status(run_dir, n)["pid"] for n in ("A", "B")]
    assert wait_for(lambda: not any(os.path.exists(f"/proc/{p}") and
                                    open(f"/proc/{p}/stat").read().split()[2] != "Z" for p in pids), timeout=20)


def _nice(pid):
    """The nice value of a process's main thread (the one that records or replays)."""
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(os.geteuid() != 0, reason="replay priorities are set only as root")
def test_backup_replays_at_normal_priority_and_after_going_live(guests, tmp_path):
    """The backup's replaying thread runs at BACKUP_NICE (the normal priority: at a lower
    one, preempted while holding the interpreter lock, it delayed the acknowledging I/O
    thread; see Node.replay_priority), and at nice 0 once it is primary."""
    from hypervisor.ft.node import BACKUP_NICE
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([str(FTVM), "run", str(GUESTS / "echo.elf"), "--run-dir", str(run_dir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: status(run_dir, "B").get("blocks", 0) > 0 and "pid" in status(run_dir, "A"),
                        timeout=20), "the backup replays"
        a, b = status(run_dir, "A")["pid"], status(run_dir, "B")["pid"]
        assert (_nice(a), _nice(b)) == (0, BACKUP_NICE)
        assert run_ftvm("kill", "primary", "--run-dir", run_dir).returncode == 0
        assert wait_for(lambda: status(run_dir, "B").get("role") == "primary", timeout=20)
        assert _nice(b) == 0
        proc.stdin.write(b"after\n")
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert b"echo[1]: AFTER\n" in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_forged_messages_are_refused(guests, tmp_path):
    """Someone on the network, without the run's key, forges a HELLO ("node B is primary
    of view 3") to the observer and an ACK with a huge sequence number to the primary,
    under B's sender id: both are refused (no tag), the output is intact and the run
    is neither stalled nor redirected."""
    import zmq

    from hypervisor.ft.node import node_id
    from logging_channel import messages as M
    run_dir = tmp_path / "run"
    log = tmp_path / "whole.ftlog"
    proc = subprocess.Popen([str(FTVM), "run", str(GUESTS / "lines_long.elf"), "--run-dir", str(run_dir),
                             "--log", str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert wait_for(lambda: (run_dir / "A.status.json").exists() and (run_dir / "B.status.json").exists())
    run = json.loads((run_dir / "run.json").read_text())
    assert (run_dir / "channel.key").stat().st_mode & 0o077 == 0, "the key is readable by its owner only"
    ctx = zmq.Context()
    forged = [(run["observer"], M.encode(M.HELLO, node_id("B"), 3, 0, ["B", "primary", 1, "forged"])),
              (run["nodes"]["A"], M.encode(M.ACK, node_id("B"), 1, 1 << 40, [1 << 40, 1 << 40]))]
    for addr, data in forged:
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.connect(addr)
        for _ in range(20):
            push.send(data)
        push.close()
    ctx.term()
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    check_lines(out, 6000)
    assert "failover" not in err.decode(), err
    assert status(run_dir, "A")["garbage"] >= 20
    check_replay(log, out)
