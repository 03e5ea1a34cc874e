"""Network partitions with etcd as coordinator: three nodes, each in a network namespace
of its own (tests/netns.py), the observer and a three-member etcd cluster in the root
namespace on two addresses of the bridge (etcd on one, the observer on the other), so
that a node can be cut off from etcd, from its peer, or both, while it still reaches
the observer: whatever it sends there gets out. Every run is checked for every line
exactly once, and for releases by a node that was not primary of the view current
in etcd at the time (there must be none). Cuts and pauses are timed from what the
run shows (status files, keys in etcd), never from a fixed sleep."""
import json
import os
import shutil
import signal
import subprocess

import pytest

import netns
from conftest import FTVM, GUESTS
from test_ft import status, wait_for
from test_views import check_n_lines

from hypervisor.ft import etcd as E
from hypervisor.ft.etcd_local import LocalCluster

REASON = netns.available()
if REASON is None and not shutil.which("etcd") and not os.path.exists("/usr/bin/etcd"):
    REASON = "etcd-server is not installed (make setup installs it)"
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"{REASON}")

NAMES = {"A": "a", "B": "b", "C": "c"}


class World:
    def __init__(self, tmp_path):
        self.net = netns.Net(list(NAMES.values()))
        self.cluster = None
        self.procs = {}
        self.observer = None
        try:
            self.etcd_ip = self.net.add_root_ip(253)
            self.cluster = LocalCluster(tmp_path / "etcd", host=self.etcd_ip)
            self.cluster.start()
        except BaseException:
            self.close()
            raise
        self.url = self.cluster.url + f"/ftvm/t-part-{os.getpid()}"
        self.run_dir = tmp_path / "run"
        self.run_dir.mkdir()
        self.tmp = tmp_path

    def start(self, guest="lines_long.elf"):
        obs = f"tcp://{self.net.observer_ip}:7301"
        self.addr = {n: f"tcp://{self.net.addr(h)}:{7310 + i}" for i, (n, h) in enumerate(NAMES.items())}
        for name, host in NAMES.items():
            cmd = [*self.net.exec_prefix(host), str(FTVM), "node", "--name", name, "--coordinator", self.url,
                   "--first-backup-wait-ms", "5000", "--listen", self.addr[name], "--observer", obs,
                   "--shared-dir", str(self.tmp / "shared"), "--run-dir", str(self.run_dir),
                   "--log", str(self.run_dir / f"{name}.ftlog"), "--guest", str(GUESTS / guest)]
            self.procs[name] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                stderr=open(self.run_dir / f"{name}.stderr", "wb"))
        self.observer = subprocess.Popen(
            [str(FTVM), "observe", "--listen", obs, *[f"--node={n}={a}" for n, a in self.addr.items()],
             "--run-dir", str(self.run_dir)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def view(self):
        try:
            return E.describe(self.url)
        except Exception:           # etcd answering slowly under load: ask again
            return {}

    def ready_pair(self):
        """(primary, backup) once the backup is up to date and the observer hears the primary."""
        for n in NAMES:
            st = status(self.run_dir, n)
            if st.get("role") == "backup" and st.get("ready"):
                p = st.get("vs_view", [0, None])[1]
                if p and status(self.run_dir, p).get("released_bytes", 0) > 3000:
                    return p, n
        return None

    def finish(self, timeout=150):
        out, err = self.observer.communicate(timeout=timeout)
        return out, err.decode()

    def node_err(self):
        return "".join(f"--- {n}\n" + (self.run_dir / f"{n}.stderr").read_text(errors="replace") for n in NAMES)

    def close(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        if self.observer is not None and self.observer.poll() is None:
            self.observer.kill()
        for p in [*self.procs.values(), *([self.observer] if self.observer else [])]:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.cluster is not None:
            self.cluster.stop()
        self.net.close()


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


def releases_by_non_primaries(run_dir, history):
    """Runs of fresh output the observer let out from a node that was not primary of
    the view current in etcd when it arrived (the latest committed before it)."""
    views = sorted((h["unix"], h["num"], h["primary"]) for h in history)
    rel = json.loads((run_dir / "observer.json").read_text())["releases"]
    bad = []
    for node, view, t0, t1, n in rel:
        for t in (t0, t1):
            current = [v for v in views if v[0] <= t]
            if not current or current[-1][2] != node:
                bad.append((node, view, t, n, current[-1] if current else None))
    return bad, rel


def check_run(w, out, err):
    assert w.observer.returncode == 0, err + w.node_err()
    check_n_lines(out, 6000)
    summary = json.loads((w.run_dir / "observer.json").read_text())
    assert summary["conflicts"] == 0
    history = w.view()["history"]
    bad, rel = releases_by_non_primaries(w.run_dir, history)
    assert bad == [], (bad, rel, history)
    return history


def test_primary_cut_off_from_its_backup_and_from_etcd(world, guests):
    """The primary still reaches the observer: anything it released after the new view
    would get out. The backup takes over through etcd; the old primary learns it is
    stale once the cut heals."""
    w = world
    w.start()
    assert wait_for(w.ready_pair, timeout=60), w.node_err()
    p, b = w.ready_pair()
    before = w.view()["view"]
    ph = NAMES[p]
    for ip in (w.net.addr(NAMES[b]), w.etcd_ip):
        w.net.block(ph, ip)
    w.net.block(NAMES[b], w.net.addr(ph))
    assert wait_for(lambda: (w.view().get("view") or before)[1] not in (p, None), timeout=30), w.node_err()
    # The new primary goes live and releases while the old one is still cut off.
    assert wait_for(lambda: status(w.run_dir, b).get("role") == "primary"
                    and status(w.run_dir, b).get("released_bytes", 0) > 0, timeout=30), w.node_err()
    for ip in (w.net.addr(NAMES[b]), w.etcd_ip):
        w.net.unblock(ph, ip)
    w.net.unblock(NAMES[b], w.net.addr(ph))
    out, err = w.finish()
    history = check_run(w, out, err)
    assert any(h["primary"] == b and h["num"] > before[0] for h in history), history
    assert "failover: node" in err, err


def test_backup_cut_off_from_etcd_only(world, guests):
    """The backup cannot reach etcd; primary and backup still hear each other. No
    failover can happen (the backup cannot get a view); its lease runs out and the
    primary replaces it with the idle node. Output goes on, exact."""
    w = world
    w.start()
    assert wait_for(w.ready_pair, timeout=60), w.node_err()
    p, b = w.ready_pair()
    w.net.block(NAMES[b], w.etcd_ip)
    assert wait_for(lambda: (w.view().get("view") or [0, p, b])[2] != b, timeout=30), w.node_err()
    w.net.unblock(NAMES[b], w.etcd_ip)
    out, err = w.finish()
    history = check_run(w, out, err)
    assert all(h["primary"] == p for h in history), history
    assert "failover: node" not in err, err


def test_primary_paused_past_its_lease_then_resumed(world, guests):
    """SIGSTOP the primary until its member key has gone with its lease (and a view
    without it exists), then SIGCONT: whatever it had ready to release is of an old
    view, and nothing of it may get out."""
    w = world
    w.start()
    assert wait_for(w.ready_pair, timeout=60), w.node_err()
    p, b = w.ready_pair()
    pid = status(w.run_dir, p)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        def gone():
            d = w.view()
            return d.get("view") and d["view"][1] != p and p not in d.get("nodes", {p: 0})
        assert wait_for(gone, timeout=60), w.node_err()
    finally:
        os.kill(pid, signal.SIGCONT)
    out, err = w.finish()
    history = check_run(w, out, err)
    assert any(h["primary"] == b for h in history), history
