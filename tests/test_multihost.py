"""Nodes on two "machines": separate network namespaces with their own addresses,
joined by a bridge, the observer attached from the root namespace, the shared
directory on a filesystem all of them see. A failover crosses the namespaces."""
import subprocess
import time

import pytest

import netns
from conftest import FTVM, GUESTS, run_ftvm
from test_ft import check_lines, status, wait_for

REASON = netns.available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"network namespaces unavailable: {REASON}")


@pytest.fixture
def net():
    n = netns.Net(["a", "b"])
    yield n
    n.close()


def start_nodes(net, tmp_path, guest="lines.elf"):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shared = tmp_path / "shared"
    obs = f"tcp://{net.observer_ip}:7100"
    addr = {"A": f"tcp://{net.addr('a')}:7101", "B": f"tcp://{net.addr('b')}:7102"}
    procs = {}
    for name, host, role, peer in (("B", "b", "backup", "A"), ("A", "a", "primary", "B")):
        cmd = [*net.exec_prefix(host), str(FTVM), "node", "--name", name, "--role", role,
               "--listen", addr[name], "--peer", addr[peer], "--observer", obs, "--shared-dir", str(shared),
               "--run-dir", str(run_dir), "--log", str(run_dir / f"{name}.ftlog"), "--guest", str(GUESTS / guest)]
        procs[name] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=open(run_dir / f"{name}.stderr", "wb"))
    observer = subprocess.Popen([str(FTVM), "observe", "--listen", obs, "--node", f"A={addr['A']}",
                                 "--node", f"B={addr['B']}", "--run-dir", str(run_dir)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return run_dir, observer, procs


def finish(observer, procs):
    try:
        out, err = observer.communicate(timeout=90)
    finally:
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    return out, err.decode()


def test_two_hosts(net, guests, tmp_path):
    run_dir, observer, procs = start_nodes(net, tmp_path)
    out, err = finish(observer, procs)
    assert observer.returncode == 0, err
    check_lines(out)
    assert status(run_dir, "A")["rtt_us"] is not None        # heartbeats crossed the bridge


def test_failover_across_hosts(net, guests, tmp_path):
    run_dir, observer, procs = start_nodes(net, tmp_path)
    assert wait_for(lambda: status(run_dir, "A").get("released_bytes", 0) > 2000, timeout=30)
    k = run_ftvm("kill", "primary", "--run-dir", run_dir)
    assert k.returncode == 0, k.stderr
    out, err = finish(observer, procs)
    assert observer.returncode == 0, err
    check_lines(out)
    assert "failover: node B is primary of view 2" in err
    rep = run_ftvm("replay", "-q", run_dir / "B.ftlog")
    assert rep.returncode == 0 and rep.stdout == out
