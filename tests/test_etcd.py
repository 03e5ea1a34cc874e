"""Views and go-live on a real three-member etcd cluster started by the tests
(hypervisor/ft/etcd_local.py; Debian's etcd-server). Kills are timed from what the
run reports (its stderr, status files, the keys in etcd), never from a fixed sleep."""
import json
import os
import shutil
import signal
import subprocess
import threading

import pytest

from conftest import FTVM, GUESTS, run_ftvm
from test_ft import check_replay, status, wait_for
from test_views import check_n_lines

from hypervisor.ft import etcd as E
from hypervisor.ft.etcd_local import LocalCluster
from hypervisor.ft.transport import free_tcp_port

pytestmark = pytest.mark.skipif(not shutil.which("etcd") and not os.path.exists("/usr/bin/etcd"),
                                reason="etcd-server is not installed (make setup installs it)")


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(tmp_path / "etcd")
    c.start()
    yield c
    for i, m in enumerate(c.members):
        if m.alive():
            m.proc.send_signal(signal.SIGCONT)
    c.stop()


class Run:
    """`ftvm run --coordinator URL` in the background; its stderr lines collected as
    they come, so that a test can act on one."""

    def __init__(self, tmp_path, url, nodes=3, kills=(), guest="lines_long.elf", extra=()):
        self.run_dir = tmp_path / "run"
        self.log = tmp_path / "whole.ftlog"
        self.url = url
        args = [str(FTVM), "run", str(GUESTS / guest), "--nodes", str(nodes), "--run-dir", str(self.run_dir),
                "--log", str(self.log), "--coordinator", url, *extra]
        for k in kills:
            args += ["--kill-primary-after", str(k)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.lines = []
        self.cond = threading.Condition()
        self.out = b""
        threading.Thread(target=self._read_err, daemon=True).start()
        threading.Thread(target=self._read_out, daemon=True).start()

    def _read_err(self):
        for raw in self.proc.stderr:
            with self.cond:
                self.lines.append(raw.decode(errors="replace"))
                self.cond.notify_all()

    def _read_out(self):
        self.out = self.proc.stdout.read()

    def wait_line(self, text, timeout=60):
        with self.cond:
            return self.cond.wait_for(lambda: any(text in x for x in self.lines), timeout)

    def finish(self, timeout=180):
        self.proc.wait(timeout=timeout)
        wait_for(lambda: self.proc.stdout.closed or self.out, timeout=10)
        return self.proc.returncode, "".join(self.lines)

    def node_err(self):
        return "".join((self.run_dir / f).read_text(errors="replace") for f in sorted(os.listdir(self.run_dir))
                       if f.endswith(".stderr"))

    def ready_backup(self, names="ABCD"):
        """Backups up to date in their view, once a primary shows in the status files too
        (a backup of view 1 is up to date before its primary's status says primary)."""
        sts = {n: status(self.run_dir, n) for n in names}
        if not any(st.get("role") == "primary" for st in sts.values()):
            return []
        return [n for n, st in sts.items() if st.get("role") == "backup" and st.get("ready")]


def history(url):
    return [(e["num"], e["primary"], e["backup"]) for e in E.describe(url)["history"]]


def log_views(log):
    p = run_ftvm("log", "show", log, "--kind", "view", "--json")
    assert p.returncode == 0, p.stderr
    return [(r["view"], r["primary"], r["backup"]) for r in map(json.loads, p.stdout.decode().splitlines())]


def test_two_primary_kills_with_three_nodes_on_etcd(guests, tmp_path, cluster):
    url = cluster.url + "/ftvm/t-two-kills"
    r = Run(tmp_path, url, kills=[0.8, 1.8])
    rc, err = r.finish()
    assert rc == 0, err + r.node_err()
    check_n_lines(r.out, 6000)
    assert err.count("failover: node") == 2, err
    check_replay(r.log, r.out)
    h = history(url)
    whys = [e["why"] for e in E.describe(url)["history"]]
    failovers = [i for i, why in enumerate(whys) if why.startswith("primary")]
    # View 1 was made with its backup; redundancy was restored after the first kill, before
    # the second (the observer kills only a primary with an up-to-date backup): in the
    # failover's own view if C was up by then, else in a later one (under load C's start
    # came after the first kill once: views B/A, A/-, A/C, C/-); etcd's views are the log's.
    assert h[0][2] is not None and len(failovers) == 2 and h[failovers[1] - 1][2] is not None, (h, whys)
    assert h[failovers[1] - 1][1] == h[failovers[0]][1], (h, whys)
    lv = log_views(r.log)
    assert lv == h[:len(lv)] and len(lv) > failovers[1], (lv, h)
    assert "viewservice" not in json.loads((r.run_dir / "run.json").read_text()), "no view service process"
    st = run_ftvm("status", "--run-dir", r.run_dir)
    assert st.returncode == 0 and b"coordinator: etcd" in st.stdout and b"leader" in st.stdout, st.stdout


def test_etcd_leader_killed_during_a_failover(guests, tmp_path, cluster):
    url = cluster.url + "/ftvm/t-leader"
    r = Run(tmp_path, url, kills=[1.0])
    assert r.wait_line("killing primary", timeout=60), "".join(r.lines)
    leader = cluster.leader()
    assert leader is not None
    cluster.stop_member(leader)
    rc, err = r.finish()
    assert rc == 0, err + r.node_err()
    check_n_lines(r.out, 6000)
    # One failover asked for; under load the primary and its new backup may also
    # suspect each other for a moment: whichever wins the next view, the output is exact.
    assert err.count("failover: node") >= 1, err
    check_replay(r.log, r.out)


def test_the_process_that_decided_the_last_view_is_killed(guests, tmp_path, cluster):
    """No decider process: every node proposes views by compare-and-swap. Kill the
    node that made the latest view; the next view is decided by another node."""
    url = cluster.url + "/ftvm/t-decider"
    r = Run(tmp_path, url, nodes=4)

    def settled():
        """The latest view in etcd, once its backup is up to date in it."""
        d = E.describe(url)
        last = d["history"][-1] if d["history"] else None
        b = last and last["backup"] and status(r.run_dir, last["backup"])
        if b and b.get("role") == "backup" and b.get("ready") and b.get("vs_view", [0])[0] == last["num"]:
            return last
    assert wait_for(settled, timeout=60), r.node_err()
    last = settled() or E.describe(url)["history"][-1]
    victim = last["by"]
    os.kill(status(r.run_dir, victim)["pid"], signal.SIGKILL)
    in_role = victim in (last["primary"], last["backup"])
    if in_role:
        assert wait_for(lambda: E.describe(url)["history"][-1]["num"] > last["num"], timeout=30), r.node_err()
        after = E.describe(url)["history"][-1]
        assert after["by"] != victim and victim not in (after["primary"], after["backup"]), after
    rc, err = r.finish()
    assert rc == 0, err + r.node_err()
    check_n_lines(r.out, 6000)
    check_replay(r.log, r.out)


def test_without_quorum_no_failover_and_the_run_resumes_when_it_is_back(guests, tmp_path, cluster):
    url = cluster.url + "/ftvm/t-quorum"
    r = Run(tmp_path, url)
    assert wait_for(lambda: r.ready_backup("ABC"), timeout=60), r.node_err()
    backup = r.ready_backup("ABC")[0]
    view_before = E.describe(url)["view"]
    for i in (0, 1):
        cluster.members[i].proc.send_signal(signal.SIGSTOP)     # two of three members: no quorum
    assert run_ftvm("kill", "primary", "--run-dir", r.run_dir).returncode == 0

    def failed_pings():
        return status(r.run_dir, backup).get("coordinator", {}).get("unavailable", 0)
    assert wait_for(lambda: "is silent on the channel" in (r.run_dir / f"{backup}.stderr").read_text(), timeout=30)
    seen = failed_pings()
    assert wait_for(lambda: failed_pings() >= seen + 3, timeout=30), "the backup kept asking etcd"
    assert status(r.run_dir, backup)["role"] == "backup", "no failover without quorum"
    assert "going live" not in (r.run_dir / f"{backup}.stderr").read_text()
    out_so_far = r.out
    for i in (0, 1):
        cluster.members[i].proc.send_signal(signal.SIGCONT)
    rc, err = r.finish()
    assert rc == 0, err + r.node_err()
    check_n_lines(r.out, 6000)          # every line exactly once: nothing released twice
    assert err.count("failover: node") >= 1, err
    check_replay(r.log, r.out)
    after = E.describe(url)
    assert after["view"][0] > view_before[0] and after["view"][1] == backup, (view_before, after["view"])
    del out_so_far


def test_unreachable_or_wrong_coordinator_one_line_and_a_status(guests, tmp_path):
    port = free_tcp_port()
    for cmd in (["run", GUESTS / "lines.elf", "--coordinator", f"etcd://127.0.0.1:{port}"],
                ["node", "--name", "A", "--coordinator", f"etcd://127.0.0.1:{port}", "--listen", "tcp://127.0.0.1:1",
                 "--observer", "tcp://127.0.0.1:2", "--shared-dir", tmp_path / "s", "--run-dir", tmp_path / "r",
                 "--log", tmp_path / "A.ftlog", "--guest", GUESTS / "lines.elf"]):
        p = run_ftvm(*cmd, timeout=60)
        assert p.returncode == 11, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "unreachable" in lines[0] and "Traceback" not in p.stderr, lines
    p = run_ftvm("run", GUESTS / "lines.elf", "--coordinator", "etcd:/nonsense")
    assert p.returncode == 2 and "etcd://HOST:PORT" in p.stderr and "Traceback" not in p.stderr


def test_three_nodes_survive_a_primary_killed_at_once_on_etcd(guests, tmp_path, cluster):
    """As tests/test_views.py's, with etcd: view 1 is made with its backup (which follows
    the log from the first record), so a primary killed as soon as it runs is replaced."""
    url = cluster.url + "/ftvm/t-early"
    r = Run(tmp_path, url)

    def primary():
        for n in "ABC":
            st = status(r.run_dir, n)
            if st.get("role") == "primary" and st.get("pid"):
                return st["pid"]
    assert wait_for(primary, timeout=30), r.node_err()
    os.kill(primary(), signal.SIGKILL)
    rc, err = r.finish()
    assert rc == 0, err + r.node_err()
    check_n_lines(r.out, 6000)
    check_replay(r.log, r.out)
    h = E.describe(url)["history"]
    assert h[0]["backup"] is not None, h        # view 1 was made with its backup
    assert any(e["why"].startswith("primary") for e in h), h


def test_a_node_restarted_under_its_name_while_named_backup_counts_as_failed(guests, tmp_path, cluster):
    """Rule 5 on etcd: the backup's process is replaced by a new one of the same name
    (a new incarnation), which takes over its member key before the old lease expires.
    The channel's timeout is made long, so only the incarnation can tell: the view
    drops the node at the new process's first ping."""
    url = cluster.url + "/ftvm/t-restart"
    r = Run(tmp_path, url, extra=["--fail-timeout-ms", "60000"])
    assert wait_for(lambda: r.ready_backup("ABC"), timeout=60), r.node_err()
    b = r.ready_backup("ABC")[0]
    before = E.describe(url)
    old = status(r.run_dir, b)
    os.kill(old["pid"], signal.SIGKILL)
    cmd = json.loads((r.run_dir / "run.json").read_text())
    args = [str(FTVM), "node", "--name", b, "--coordinator", cmd["coordinator"], "--listen", cmd["nodes"][b],
            "--observer", cmd["observer"], "--shared-dir", str(r.run_dir / "shared"), "--run-dir", str(r.run_dir),
            "--log", str(tmp_path / f"{b}-again.ftlog"), "--guest", str(GUESTS / "lines_long.elf")]
    with open(tmp_path / f"{b}-again.stderr", "wb") as err:
        again = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        def dropped():
            h = E.describe(url)["history"]
            return [e for e in h if e["num"] > before["view"][0] and e["backup"] != b]
        assert wait_for(dropped, timeout=30), E.describe(url)["history"]
        why = dropped()[0]["why"]
        rc, err = r.finish()
        assert rc == 0, err + r.node_err()
        check_n_lines(r.out, 6000)
        check_replay(r.log, r.out)
    finally:
        again.kill()
        again.wait()
    # Dropped for its restart (its first ping), not after the channel's or the lease's timeout.
    assert why == f"backup {b} restarted", why
