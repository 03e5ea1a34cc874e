"""A local etcd cluster of three members on loopback ports, for one machine and tests.

``ftvm run --coordinator etcd-local`` starts one in ``RUN_DIR/etcd/`` (a data directory
and a stderr file per member) and stops it with the run; the tests start their own.
It runs Debian's etcd-server (``/usr/bin/etcd``, installed by ``make setup``).

Readiness is observed, not slept for: ``start`` polls every member's client API
(``/health``) until all answer healthy, and fails with one clear line if a member
exits or the cluster is not healthy within ``timeout_s``.

The members use a shorter heartbeat (50 ms) and election timeout (500 ms) than etcd's
defaults (100 ms, 1 s): on loopback a round trip is well under a millisecond, and a
new leader after a member dies is then elected within about a second.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

from ..errors import EXIT_COORDINATOR, FtvmError
from .transport import free_tcp_port

ETCD = "etcd"
HEARTBEAT_MS = 50
ELECTION_MS = 500


class ClusterFailed(FtvmError):
    """The local etcd cluster could not be started (etcd missing, a member exited, or
    it was not healthy in time)."""
    exit_status = EXIT_COORDINATOR


class Member:
    def __init__(self, name, host, client_port, peer_port, data_dir, log_path):
        self.name = name
        self.host = host
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc = None

    client_url = property(lambda self: f"http://{self.host}:{self.client_port}")
    peer_url = property(lambda self: f"http://{self.host}:{self.peer_port}")
    endpoint = property(lambda self: f"{self.host}:{self.client_port}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class LocalCluster:
    """Three (or ``size``) etcd members in ``directory``. ``start()``, ``stop()``,
    ``stop_member(i)``/``start_member(i)`` (a member keeps its data and ports),
    ``url`` (the ``etcd://`` address for --coordinator), ``leader()``."""

    def __init__(self, directory, size=3, host="127.0.0.1", etcd=None):
        self.dir = os.path.abspath(directory)
        self.host = host
        self.etcd = etcd or shutil.which(ETCD) or "/usr/bin/etcd"
        self.token = f"ftvm-{os.getpid()}-{time.monotonic_ns()}"
        self.members = []
        for i in range(size):
            d = os.path.join(self.dir, f"m{i}")
            self.members.append(Member(f"m{i}", host, free_tcp_port(host), free_tcp_port(host),
                                       d + ".data", d + ".stderr"))

    @property
    def endpoints(self):
        return [m.endpoint for m in self.members]

    @property
    def url(self):
        return "etcd://" + ",".join(self.endpoints)

    # --- lifecycle --------------------------------------------------------------------------
    def start(self, timeout_s=30.0):
        if not os.path.exists(self.etcd):
            raise ClusterFailed(f"{self.etcd}: not found (install Debian's etcd-server: make setup)")
        os.makedirs(self.dir, exist_ok=True)
        for i in range(len(self.members)):
            self._spawn(i, new=True)
        self.wait_healthy(timeout_s)
        with open(os.path.join(self.dir, "cluster.json"), "w") as f:
            json.dump({"endpoints": self.endpoints, "pids": [m.proc.pid for m in self.members]}, f)
        return self

    def _spawn(self, i, new):
        m = self.members[i]
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        cmd = [self.etcd, "--name", m.name, "--data-dir", m.data_dir,
               "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
               "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
               "--initial-cluster", initial, "--initial-cluster-token", self.token,
               "--initial-cluster-state", "new" if new else "existing",
               "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS),
               "--log-level", "warn", "--logger", "zap"]
        with open(m.log_path, "ab") as err:
            m.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                      start_new_session=True)

    def wait_healthy(self, timeout_s=30.0, members=None):
        """Poll /health of the given members (default: all) until every one says healthy."""
        idx = range(len(self.members)) if members is None else members
        deadline = time.monotonic() + timeout_s
        pending = set(idx)
        while pending:
            for i in sorted(pending):
                m = self.members[i]
                if m.proc is not None and m.proc.poll() is not None:
                    tail = _tail(m.log_path)
                    raise ClusterFailed(f"etcd member {m.name} exited with status {m.proc.returncode}"
                                        + (f": {tail}" if tail else ""))
                if health(m.client_url):
                    pending.discard(i)
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(self.members[i].name for i in sorted(pending))
                raise ClusterFailed(f"etcd members {names} not healthy after {timeout_s:.0f} s "
                                    f"(their stderr is in {self.dir})")
            time.sleep(0.05)            # polling interval of the health check, not a wait for readiness

    def stop_member(self, i, sig=signal.SIGKILL):
        m = self.members[i]
        if m.alive():
            m.proc.send_signal(sig)
            m.proc.wait(timeout=10)

    def start_member(self, i):
        """Start a stopped member again with its data (it rejoins the cluster)."""
        if not self.members[i].alive():
            self._spawn(i, new=False)

    def stop(self, grace_s: float = 1.0):
        """Stop every member: SIGTERM, then SIGKILL for whoever is still there after
        ``grace_s``. A member terminated after its peers waits about 5 s trying to hand
        its leadership to somebody; the data is this run's alone, and etcd's write-ahead
        log survives a kill, so that wait buys nothing."""
        for m in self.members:
            if m.alive():
                m.proc.terminate()
        deadline = time.monotonic() + grace_s
        for m in self.members:
            if m.proc is not None:
                try:
                    m.proc.wait(timeout=max(0.01, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- queries ------------------------------------------------------------------------------
    def client_requests(self):
        """Client requests received by all live members so far (see client_requests)."""
        return sum(client_requests(m.client_url) or 0 for m in self.members if m.alive())

    def leader(self):
        """Index of the member that is leader now (asked of the live members), or None."""
        for i, m in enumerate(self.members):
            if not m.alive():
                continue
            st = _post(m.client_url + "/v3/maintenance/status", {})
            if st and "leader" in st and "header" in st:
                if st["leader"] == st["header"].get("member_id"):
                    return i
                for j, x in enumerate(self.members):
                    if x.alive() and j != i:
                        st2 = _post(x.client_url + "/v3/maintenance/status", {})
                        if st2 and st2.get("header", {}).get("member_id") == st["leader"]:
                            return j
        return None


def client_requests(client_url, timeout_s=2.0):
    """Client requests this member has received so far, from its Prometheus counters:
    ``grpc_server_started_total`` of the KV, Lease and Watch services (the JSON gateway's
    range/txn/put/lease calls reach the server as gRPC calls and are counted there;
    /health and /metrics are not). None if the member did not answer."""
    try:
        with urllib.request.urlopen(client_url + "/metrics", timeout=timeout_s) as r:
            text = r.read().decode()
    except (OSError, ValueError, urllib.error.URLError):
        return None
    n = 0
    for line in text.splitlines():
        if line.startswith("grpc_server_started_total{") and any(
                f'grpc_service="etcdserverpb.{svc}"' in line for svc in ("KV", "Lease", "Watch")):
            n += int(float(line.rsplit(" ", 1)[1]))
    return n


def health(client_url, timeout_s=0.5):
    try:
        with urllib.request.urlopen(client_url + "/health", timeout=timeout_s) as r:
            return json.loads(r.read()).get("health") == "true"
    except (OSError, ValueError, urllib.error.URLError):
        return False


def _post(url, body, timeout_s=0.5):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return json.loads(r.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _tail(path, n=300):
    try:
        with open(path, "rb") as f:
            data = f.read()[-n:]
    except OSError:
        return ""
    lines = data.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""
