"""Three and four nodes under the view service: repeated failover, redundancy restored
by state transfer to an idle node, a killed backup replaced."""
import subprocess
import time

import pytest

from conftest import FTVM, GUESTS, run_ftvm, stop_processes
from test_ft import check_replay, status, wait_for


def check_n_lines(out, n):
    nums = [int(line.split()[1]) for line in out.decode().splitlines()]
    assert nums == list(range(1, n + 1)), f"{len(nums)} lines"


def managed_run(tmp_path, nodes, kills=(), guest="lines_long.elf", timeout=120):
    run_dir = tmp_path / "run"
    log = tmp_path / "whole.ftlog"
    args = [str(FTVM), "run", str(GUESTS / guest), "--nodes", str(nodes), "--run-dir", str(run_dir), "--log", str(log)]
    for k in kills:
        args += ["--kill-primary-after", str(k)]
    p = subprocess.run(args, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    p.stderr = p.stderr.decode()
    return p, run_dir, log


def test_three_nodes_survive_two_kills(guests, tmp_path):
    p, run_dir, log = managed_run(tmp_path, 3, kills=[0.8, 1.8])
    assert p.returncode == 0, p.stderr
    check_n_lines(p.stdout, 6000)
    assert p.stderr.count("failover: node") == 2, p.stderr
    check_replay(log, p.stdout)
    shows = run_ftvm("log", "show", log, "--kind", "golive")
    assert shows.stdout.count(b"golive") == 2


def test_four_nodes_survive_three_kills(guests, tmp_path):
    p, run_dir, log = managed_run(tmp_path, 4, kills=[0.6, 1.4, 2.2])
    assert p.returncode == 0, p.stderr
    check_n_lines(p.stdout, 6000)
    assert p.stderr.count("failover: node") == 3, p.stderr
    check_replay(log, p.stdout)


def start_managed(tmp_path, guest, nodes=3):
    """`ftvm run --nodes N` in the background, for tests that act on it while it runs."""
    run_dir = tmp_path / "run"
    log = tmp_path / "whole.ftlog"
    proc = subprocess.Popen([str(FTVM), "run", str(GUESTS / guest), "--nodes", str(nodes), "--run-dir",
                             str(run_dir), "--log", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    return proc, run_dir, log


def test_killed_backup_is_replaced_by_an_idle_node(guests, tmp_path):
    proc, run_dir, log = start_managed(tmp_path, "lines_long.elf")

    def backup_ready():
        return [n for n in "ABC" if status(run_dir, n).get("role") == "backup" and status(run_dir, n).get("ready")]
    assert wait_for(lambda: backup_ready(), timeout=20)
    first = backup_ready()[0]
    assert run_ftvm("kill", "backup", "--run-dir", run_dir).returncode == 0
    assert wait_for(lambda: [n for n in backup_ready() if n != first], timeout=20), "an idle node became backup"
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    check_n_lines(out, 6000)
    check_replay(log, out)


def test_backup_killed_mid_transfer_leaves_the_view_safe(guests, tmp_path):
    proc, run_dir, log = start_managed(tmp_path, "bigmem256.elf")
    # The backup of view 1 follows the log from the start; its replacement needs the
    # primary's 256 MiB state.
    assert wait_for(lambda: [n for n in "ABC" if status(run_dir, n).get("role") == "backup"], timeout=30)
    assert run_ftvm("kill", "backup", "--run-dir", run_dir).returncode == 0
    victims = []

    def waiting_backup():
        """The new backup while it waits for its state (one look at all status files:
        two looks could straddle the end of the transfer)."""
        st = {n: status(run_dir, n) for n in "ABC"}
        if any(s.get("transferring") for s in st.values()):
            victims[:] = [n for n, s in st.items() if s.get("role") == "backup" and not s.get("ready")]
        return victims
    assert wait_for(waiting_backup, timeout=30), "a backup waiting for its state"
    import os
    import signal
    os.kill(status(run_dir, victims[0])["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    nums = [int(line.split()[1]) for line in out.decode().splitlines()]
    assert nums == list(range(1, 3000 + 256 * 20 + 1))
    check_replay(log, out)


def test_three_nodes_survive_a_primary_killed_at_once(guests, tmp_path):
    """The primary dies as soon as it runs the guest, before any state transfer could
    have happened: the backup of view 1, which follows the log from its first record,
    takes over (or starts the guest afresh if no log came), as in a pair."""
    import json
    import os
    import signal
    proc, run_dir, log = start_managed(tmp_path, "lines_long.elf")

    def primary():
        for n in "ABC":
            st = status(run_dir, n)
            if st.get("role") == "primary" and st.get("pid"):
                return st["pid"]
    assert wait_for(primary, timeout=30)
    os.kill(primary(), signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 0, err
    check_n_lines(out, 6000)
    check_replay(log, out)
    views = json.loads((run_dir / "viewservice.json").read_text())["history"]
    assert views[0]["backup"] is not None, views      # view 1 was made with its backup
    assert any(v["why"].startswith("primary") for v in views), views


def _campaign(tmp_path, count, seed):
    import random
    rnd = random.Random(seed)
    for i in range(count):
        nodes = rnd.choice([3, 4])
        kills, t = [], 0.3
        for _ in range(rnd.randint(1, nodes - 1)):
            t += rnd.uniform(1.4, 2.2)          # after redundancy is back
            kills.append(round(t, 2))
        kills = [k for k in kills if k < 5.5]
        d = tmp_path / f"c{i}"
        d.mkdir()
        repro = (f"reproduce: FTVM_TEST_SEED={seed} run #{i}: ftvm run {GUESTS / 'lines_long.elf'} --nodes {nodes} "
                 + " ".join(f"--kill-primary-after {k}" for k in kills) + " --log x.ftlog")
        p, run_dir, log = managed_run(d, nodes, kills=kills)
        assert p.returncode == 0, f"{repro}\n{p.stderr}"
        try:
            check_n_lines(p.stdout, 6000)
            check_replay(log, p.stdout)
        except AssertionError as e:
            raise AssertionError(f"{repro}\n{e}") from None


def test_random_kill_sequences_short(guests, tmp_path):
    import os
    _campaign(tmp_path, 2, int(os.environ.get("FTVM_TEST_SEED", "4")))


@pytest.mark.slow
def test_random_kill_sequences_campaign(guests, tmp_path):
    """>= 30 seeded random kill sequences with 3 or 4 nodes (run with --run-slow)."""
    import os
    _campaign(tmp_path, 30, int(os.environ.get("FTVM_TEST_SEED", "30")))


def test_backup_by_state_transfer_from_the_first_primary_sends_what_the_observer_lacks(guests, tmp_path):
    """The first primary of a run transfers its state to a backup that joins late, while
    the observer has confirmed none of its output (it is not there yet); then it dies.
    The new primary must send the observer everything from the first line. (The first
    primary once kept no unconfirmed output: its backup went live with its kept output
    labelled from the observer's offset, and the observer printed lines out of place or
    waited forever for a line nobody had.)"""
    import json
    import os
    import signal
    from hypervisor.ft.transport import free_tcp_port
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    port = {n: free_tcp_port() for n in ("vs", "obs", "A", "B")}
    vs, obs = f"tcp://127.0.0.1:{port['vs']}", f"tcp://127.0.0.1:{port['obs']}"
    addr = {n: f"tcp://127.0.0.1:{port[n]}" for n in "AB"}
    procs = [subprocess.Popen([str(FTVM), "viewservice", "--listen", vs], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=open(run_dir / "vs.stderr", "wb"))]

    def node(name):
        procs.append(subprocess.Popen(
            [str(FTVM), "node", "--name", name, "--viewservice", vs, "--listen", addr[name], "--observer", obs,
             "--shared-dir", str(tmp_path / "shared"), "--run-dir", str(run_dir),
             "--log", str(run_dir / f"{name}.ftlog"), "--guest", str(GUESTS / "lines_long.elf")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(run_dir / f"{name}.stderr", "wb")))
    observer = None
    try:
        node("A")
        assert wait_for(lambda: status(run_dir, "A").get("role") == "primary", timeout=30), "A primary"
        # Output while A is alone: the guest runs, its output waits for an observer.
        assert wait_for(lambda: status(run_dir, "A").get("released_bytes", 0) > 2000, timeout=30)
        node("B")
        assert wait_for(lambda: status(run_dir, "B").get("role") == "backup" and status(run_dir, "B").get("ready"),
                        timeout=30), "B backup by state transfer"
        os.kill(status(run_dir, "A")["pid"], signal.SIGKILL)
        assert wait_for(lambda: status(run_dir, "B").get("role") == "primary", timeout=30), "B primary"
        observer = subprocess.Popen([str(FTVM), "observe", "--listen", obs, *[f"--node={n}={a}" for n, a in addr.items()],
                                     "--run-dir", str(run_dir)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = observer.communicate(timeout=120)
    finally:
        if observer is not None and observer.poll() is None:
            observer.kill()
        stop_processes(procs)
    assert observer.returncode == 0, err.decode()
    check_n_lines(out, 6000)
    assert json.loads((run_dir / "observer.json").read_text())["conflicts"] == 0
    b_err = (run_dir / "B.stderr").read_text()
    assert "going live: " in b_err and "no longer kept" not in b_err, b_err
    for name in "AB":
        assert "kept output runs" not in (run_dir / f"{name}.stderr").read_text()
