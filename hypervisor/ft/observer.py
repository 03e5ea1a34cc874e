"""The observer: the front process of `ftvm run`. It starts the nodes, prints the
guest's console exactly once (outputs carry their byte offset; duplicates and stale
views are dropped), forwards stdin to whoever is primary, kills the primary on
schedule, and ends with the guest's exit status.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from logging_channel import messages as M

from ..console import fd_sink
from ..errors import FtvmError
from . import protocol as P
from .node import FtOptions, node_id
from .transport import Endpoint, free_tcp_port

EXIT_NO_NODE = 8
# Network output is confirmed on the 50 ms tick, or once this much is delivered
# unconfirmed: a confirmation per reply batch would be two more messages per batch.
# (Until confirmed the nodes keep the bytes, and a new primary re-sends them; the
# front end takes each byte once, by offset.)
NET_CONFIRM_BYTES = 256 << 10
VS_PING_INTERVAL_MS = 50   # nodes ping the run's view service this often (ManagedNode's default)
VS_DEAD_PINGS_MIN = 6      # missed pings before the view service declares a node dead, at least
NO_PRIMARY_S = 15          # a dead primary with no successor this long: the run cannot go on


def redundant(statuses) -> bool:
    """From one look at every node's status: the primary is protected by the backup its
    view names, and that backup says it is up to date in the same view. (Any backup's
    "ready" alone is not enough: a status left from an earlier view says ready while the
    next state transfer is under way, and a kill then ends the run.)"""
    by_name = {st.get("name"): st for st in statuses}
    for st in statuses:
        if st.get("role") == "primary" and st.get("protected"):
            backup = by_name.get((st.get("vs_view") or [None, None, None])[2]) or {}
            if backup.get("role") == "backup" and backup.get("ready") and backup.get("view") == st.get("view"):
                return True
    return False


class AllNodesDead(FtvmError):
    """Every node died before the guest ended. The logs stay in the run directory."""
    exit_status = EXIT_NO_NODE


class Observer:
    def __init__(self, listen, nodes, run_dir, procs=None, kill_after=(), progress=False, log_path=None,
                 stdin_fd=0, say=None, out_fd=1, listen_net=None):
        self.nodes = dict(nodes)                  # name -> address
        self.ids = {node_id(n): n for n in nodes}
        self.run_dir = run_dir
        self.procs = procs or {}                  # name -> Popen (local runs)
        self.kill_after = sorted(kill_after)
        self.progress = progress
        self.log_path = log_path
        self.say = say or (lambda m: print(f"ftvm: {m}", file=sys.stderr, flush=True))
        self.write = fd_sink(out_fd)
        self.lock = threading.Condition()
        # Every decision is the core's (protocol.ObserverCore): exactly-once delivery by
        # offset, the fence by view, confirmations, input and network events re-sent.
        self.core = P.ObserverCore(self.nodes, front=bool(listen_net))
        self.failovers = []
        self.t0 = time.monotonic()
        self.last_output_t = None
        self.first_output_t = None                # --kill-primary-after counts from here
        self.first_hello_t = None
        self.hellos = []                          # (t, node, role, view, sender) of each new kind of HELLO
        self.exit_t = None
        self.kills = []                           # [{"t": s, "node": name, "next_output_s": s or None}]
        # Who released what: [node, view, unix of the first and last fresh bytes, bytes],
        # one entry per run of fresh console output from the same node and view.
        self.releases = []
        self.front = None
        if listen_net:
            from ..frontend import FrontEnd
            if isinstance(listen_net, FrontEnd):
                self.front = listen_net
                self.front.on_events = self._on_net_events
            else:
                self.front = FrontEnd(listen_net, self._on_net_events, say=self.say)
        self.ep = Endpoint(listen, self._on_message, self._on_tick, tick_s=0.05, name="observer")
        for name, addr in self.nodes.items():
            self.ep.connect(name, addr)
        if stdin_fd is not None:
            threading.Thread(target=self._read_stdin, args=(stdin_fd,), name="ftvm-obs-stdin", daemon=True).start()

    # core state, read-only here
    view = property(lambda self: self.core.view)
    primary = property(lambda self: self.core.primary)
    delivered = property(lambda self: self.core.delivered)
    exit = property(lambda self: self.core.exit)
    stale = property(lambda self: self.core.stale)
    duplicates = property(lambda self: self.core.duplicates)
    conflicts = property(lambda self: self.core.conflicts)
    net_delivered = property(lambda self: self.core.netout.received)

    # --- I/O thread ---------------------------------------------------------------------
    def _on_message(self, msg):
        name = self.ids.get(msg.sender)
        with self.lock:
            if name is None:
                self.core.stale += 1
                return
            if msg.type == M.HELLO:
                node, role = msg.payload[:2]
                if len(self.hellos) < 200 and (node, role, msg.view) not in {(h[1], h[2], h[3]) for h in self.hellos}:
                    self.hellos.append((round(time.monotonic() - self.t0, 3), node, role, msg.view, name))
                if self.first_hello_t is None and role == "primary":
                    self.first_hello_t = time.monotonic()
            effects = self.core.step(P.Recv(msg.type, name, msg.view, msg.seq, msg.payload), time.monotonic_ns())
            fresh = sum(len(e.data) for e in effects if isinstance(e, P.Write))
            if fresh:
                self._note_release(name, msg.view, fresh)
            self._perform(effects)

    def _note_release(self, node, view, n):
        t = round(time.time(), 3)
        last = self.releases[-1] if self.releases else None
        if last is not None and last[0] == node and last[1] == view:
            last[3], last[4] = t, last[4] + n
        elif len(self.releases) < 10_000:
            self.releases.append([node, view, t, t, n])

    def _perform(self, effects, direct=False):
        for e in effects:
            if isinstance(e, P.Send):
                data = M.encode(e.type, "", e.view, e.seq, e.payload)
                (self.ep.send_direct if direct else self.ep.send)(e.to, data)
            elif isinstance(e, P.Write):
                self.write(e.data)
                self._output_arrived()
            elif isinstance(e, P.NetWrite):
                if self.front is not None:
                    self.front.deliver(e.offset, e.data)
                    self._output_arrived()
            elif isinstance(e, P.Ended):
                if self.exit_t is None:
                    self.exit_t = time.monotonic()
                self.lock.notify_all()   # the main thread waits for the exit and the output before it
            elif isinstance(e, P.Announced):
                outage = ""
                if e.new_primary and self.last_output_t is not None:
                    outage = f", {int((time.monotonic() - self.last_output_t) * 1000)} ms since the last output"
                if not e.new_primary:
                    if "unprotected" in e.detail:
                        self.say(f"node {e.node} carries on as primary of view {e.view} ({e.detail})")
                else:
                    self.say(f"failover: node {e.node} is primary of view {e.view} ({e.detail}{outage})")
                    self.failovers.append((time.monotonic() - self.t0, e.node, e.view, e.detail))
                self.lock.notify_all()
            elif isinstance(e, P.Say):
                self.say(e.text)
            else:
                raise AssertionError(f"effect {e!r} not performed")

    def _output_arrived(self):
        self.last_output_t = time.monotonic()
        if self.first_output_t is None:
            self.first_output_t = self.last_output_t
            self.lock.notify_all()
        for k in self.kills:
            if k["next_output_s"] is None and self.core.view > k["view"]:
                k["next_output_s"] = self.last_output_t - self.t0

    def _on_net_events(self, events):
        """From the front end's thread: new connections, bytes, closes, resets."""
        with self.lock:
            # Straight from this thread's own socket: no hop through the I/O thread.
            self._perform(self.core.step(P.NetEvents(events), 0), direct=True)

    def _on_tick(self):
        with self.lock:
            self._perform(self.core.step(P.Tick(), time.monotonic_ns()))

    def _read_stdin(self, fd):
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            with self.lock:
                self._perform(self.core.step(P.StdinData(data), 0))
            if not data:
                return

    # --- main thread -----------------------------------------------------------------
    def primary_pid(self):
        with self.lock:
            name = self.primary
        p = self.procs.get(name)
        return name, (p.pid if p is not None else None)

    def run(self):
        if threading.current_thread() is threading.main_thread():
            # SIGTERM ends a run as Ctrl-C does: the nodes are told to stop and the
            # primary closes its log with an "interrupted" record.
            def on_term(signum, frame):
                raise KeyboardInterrupt
            signal.signal(signal.SIGTERM, on_term)
        self.ep.start()
        if self.front is not None:
            self.front.start()
            self.say(f"listening on {self.front.address}: clients reach the guest through the primary")
        progress = Progress(self) if self.progress else None
        try:
            try:
                return self._loop()
            except KeyboardInterrupt:
                # The first Ctrl-C (or SIGTERM) stops the guest, not the run: the primary
                # delivers SIGTERM to it (a Linux program's handler runs; redis-server
                # writes its files and exits), its output and data-directory changes go
                # on under the Output Rule with the backup still in place, and ftvm exits
                # with its status. A guest without a handler ends "interrupted" (130).
                # A second Ctrl-C, or GRACE_S without an end, stops everything at once.
                with self.lock:
                    primary = self.primary
                if primary is None:
                    raise
                self.say("stopping: the guest gets SIGTERM (Ctrl-C again to stop at once)")
                self.ep.send(primary, M.encode(M.STOP, "", self.view, 0, None))
                return self._loop(deadline=time.monotonic() + GRACE_S)
        finally:
            if progress:
                progress.stop()
            self._shutdown()

    def _loop(self, deadline=None):
        kills = list(self.kill_after) if deadline is None else []
        stop_sent = time.monotonic()
        while True:
            if deadline is not None and time.monotonic() > deadline:
                self.say(f"the guest did not end within {GRACE_S} s of SIGTERM")
                raise KeyboardInterrupt
            if deadline is not None and time.monotonic() - stop_sent > STOP_RESEND_S:
                # Stopping: say it again, to whoever is primary now. A STOP sent while the
                # channel to the primary was down is dropped, not queued, and a primary
                # that took over after a failover never got the first one.
                stop_sent = time.monotonic()
                with self.lock:
                    primary = self.primary
                if primary is not None:
                    self.ep.send(primary, M.encode(M.STOP, "", self.view, 0, None))
            with self.lock:
                if self.exit is not None and self.delivered >= self.exit[1]:
                    status, total, detail, node = self.exit
                    break
                self.lock.wait(0.02)
            t_kill = self._kill_clock()
            now = None if t_kill is None else time.monotonic() - t_kill
            while kills and now is not None and now >= kills[0]:
                if not self._backup_ready():
                    if not getattr(self, "_said_waiting", False):
                        self._said_waiting = True
                        self.say("--kill-primary-after: waiting until the primary has an up-to-date backup")
                    break
                self._said_waiting = False
                kills.pop(0)
                name, pid = self.primary_pid()
                if pid is None:
                    self.say(f"--kill-primary-after: no primary known at {now:.2f} s")
                    continue
                self.say(f"killing primary {name} (pid {pid}) at {now:.2f} s after the guest started")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                with self.lock:
                    self.kills.append({"t": time.monotonic() - self.t0, "unix": time.time(), "node": name,
                                       "view": self.view, "next_output_s": None})
            if self._primary_missing_since():
                logs = ", ".join(f"{n}: {os.path.join(self.run_dir, n + '.ftlog')}" for n in self.procs)
                raise AllNodesDead(f"no primary for {NO_PRIMARY_S} s: the primary died and no up-to-date backup "
                                   f"could take over (was redundancy restored before the kill?); logs kept ({logs})")
            if self.procs and all(p.poll() is not None for p in self.procs.values()):
                time.sleep(0.2)   # the last messages may still be on their way
                with self.lock:
                    if self.exit is not None and self.delivered >= self.exit[1]:
                        continue
                logs = ", ".join(f"{n}: {os.path.join(self.run_dir, n + '.ftlog')}" for n in self.procs)
                raise AllNodesDead(f"every node is dead and the guest had not ended; logs kept ({logs})")
        self.final_node = node
        self.say(f"guest ended on node {node} (view {self.view}): {detail}")
        return status

    def _backup_ready(self):
        """With the view service (local runs): a scheduled kill waits until some node
        reports itself an up-to-date backup, or it would end the run in the view
        service's stuck case instead of testing a failover. A pair needs no wait."""
        if len(self.nodes) <= 2 or not self.procs:
            return True
        return redundant(read_status(self.run_dir))

    def _kill_clock(self):
        """When --kill-primary-after starts counting: when the first primary announced
        that it started the guest (not when this process started: a loaded machine may
        take a second to start the nodes, and a kill must not land before the primary
        has done anything)."""
        with self.lock:
            return self.first_hello_t

    def summary(self):
        rel = lambda t: None if t is None else t - self.t0   # noqa: E731
        return {"first_hello_s": rel(self.first_hello_t), "exit_s": rel(self.exit_t), "kills": self.kills,
                "failovers": [{"t": t, "node": n, "view": v, "detail": d} for t, n, v, d in self.failovers],
                "delivered_bytes": self.delivered, "stale_dropped": self.stale, "duplicates_dropped": self.duplicates,
                "conflicts": self.conflicts, "hellos": self.hellos, "releases": self.releases,
                "view": self.view, "primary": self.primary, "console_gaps": self.core.console.gaps,
                "console_early": sorted(self.core.console.early)[:8],
                "first_output_s": rel(self.first_output_t),
                "net": None if self.front is None else dict(self.front.stats,
                                                            events=self.core.net_base + len(self.core.net_in),
                                                            events_retained=len(self.core.net_in),
                                                            delivered_bytes=self.net_delivered)}

    def _primary_missing_since(self):
        """True once the primary's process has been dead for NO_PRIMARY_S with no new
        primary announced (local runs only: remote processes cannot be watched)."""
        with self.lock:
            name = self.primary
        p = self.procs.get(name)
        if p is None or p.poll() is None:
            self._dead_primary_at = None
            return False
        if getattr(self, "_dead_primary_at", None) is None:
            self._dead_primary_at = time.monotonic()
        return time.monotonic() - self._dead_primary_at > NO_PRIMARY_S

    def _shutdown(self):
        try:
            with open(os.path.join(self.run_dir, "observer.json"), "w") as f:
                json.dump(self.summary(), f)
        except OSError:
            pass
        if self.front is not None:
            self.front.close()
        stop = M.encode(M.STOP, "", self.view, 0, None)
        for n in self.nodes:
            self.ep.send(n, stop)
        deadline = time.monotonic() + 5
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.terminate()
                try:
                    p.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.ep.close(0.05)
        if getattr(self, "final_node", None) is None and self.log_path and self.primary:
            self.final_node = self.primary       # stopped (Ctrl-C): the primary's log, ended "interrupted"
        if self.log_path and getattr(self, "final_node", None):
            src = os.path.join(self.run_dir, f"{self.final_node}.ftlog")
            if os.path.exists(src):
                shutil.copyfile(src, self.log_path)
                with open(self.log_path, "rb+") as f:
                    os.fsync(f.fileno())


GRACE_S = 30        # how long a stopped run waits for the guest to end after its SIGTERM
STOP_RESEND_S = 0.2         # while stopping, the STOP goes to the primary again this often


class Progress:
    """A live status table on stderr, from the nodes' status files."""

    def __init__(self, obs: Observer):
        from rich.console import Console
        from rich.live import Live
        self.obs = obs
        self.live = Live(self._table(), console=Console(stderr=True, width=max(160, shutil.get_terminal_size().columns)),
                         refresh_per_second=4, transient=False)
        self.live.start()
        self._stop = False
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()

    def _table(self):
        from rich.table import Table
        t = Table(title=f"ftvm run: view {self.obs.view}, primary {self.obs.primary}, "
                        f"{self.obs.delivered} bytes out, {len(self.obs.failovers)} failovers")
        for col in ("node", "role", "view", "lag ms", "log records", "log MB", "log kbit/s", "held B",
                    "failovers", "clock offset us", "rtt us", "transfer"):
            t.add_column(col, justify="right")
        for st in read_status(self.obs.run_dir):
            t.add_row(st["name"], st["role"] + ("" if st.get("protected", True) or st["role"] != "primary" else " (alone)"),
                      str(st["view"]), "-" if st["lag_ms"] is None else f"{st['lag_ms']:.1f}",
                      str(st["log_records"]), f"{st['log_bytes'] / 1e6:.2f}",
                      f"{st.get('log_rate_kbps', 0):.0f}", str(st["held_bytes"]),
                      str(st["failovers"]), f"{st['clock_offset_us']:.0f}",
                      "-" if st["rtt_us"] is None else f"{st['rtt_us']:.0f}", transfer_cell(st))
        return t

    def _loop(self):
        while not self._stop:
            self.live.update(self._table())
            time.sleep(0.25)

    def stop(self):
        self._stop = True
        self.live.update(self._table())
        self.live.stop()


def transfer_cell(st):
    """State-transfer progress of a node: chunks received, or 'sending' on a primary."""
    if st.get("transferring"):
        return "sending"
    have, count = st.get("transfer") or [0, 0]
    return f"{100 * have // count}%" if count and have < count else ("done" if count else "")


def read_status(run_dir):
    out = []
    try:
        names = sorted(os.listdir(run_dir))
    except OSError:
        return out
    for n in names:
        if n.endswith(".status.json"):
            try:
                with open(os.path.join(run_dir, n)) as f:
                    st = json.load(f)
            except (OSError, ValueError):
                continue
            try:
                os.kill(st["pid"], 0)
                st["alive"] = True
            except (ProcessLookupError, PermissionError):
                st["alive"] = False
            out.append(st)
    return out


def run_local(guest, log_path=None, kill_after=(), progress=False, run_dir=None, opts: FtOptions | None = None,
              host="127.0.0.1", say=None, stdin_fd=0, out_fd=1, nodes=2, devices=None, coordinator=None):
    """`ftvm run`: observer, primary and backup as three processes on this machine (with
    nodes > 2: the view service and that many nodes)."""
    import tempfile

    from ..guest import open_guest
    open_guest(guest)                  # a bad ELF is refused here, before any process starts
    opts = opts or FtOptions()
    run_dir = run_dir or tempfile.mkdtemp(prefix="ftvm-run-")
    os.makedirs(run_dir, exist_ok=True)
    from .transport import KEY_ENV, ChannelKey
    if not os.environ.get(KEY_ENV):
        # A key per run: the nodes inherit it, and only this run's processes can send
        # on its channel.
        os.environ[KEY_ENV] = ChannelKey.make(os.path.join(run_dir, "channel.key"))
    shared = os.path.join(run_dir, "shared")
    obs_addr = f"tcp://{host}:{free_tcp_port(host)}"
    dev_args, listen_net = [], None
    if devices is not None:
        if devices.listen:
            from ..frontend import FrontEnd
            listen_net = FrontEnd(devices.listen, None, say=say)   # refuse a taken port before any node starts
        if devices.disk:
            dev_args += ["--disk", os.path.abspath(devices.disk), "--disk-reads", devices.disk_reads]
        if devices.listen:
            dev_args += ["--net"]
    if nodes > 2 or coordinator:
        return _run_managed(guest, log_path, kill_after, progress, run_dir, opts, host, say, stdin_fd, out_fd,
                            nodes, shared, obs_addr, dev_args, listen_net, coordinator)
    addrs = {"A": f"tcp://{host}:{free_tcp_port(host)}", "B": f"tcp://{host}:{free_tcp_port(host)}"}
    procs = {}
    for name, role, peer in (("B", "backup", "A"), ("A", "primary", "B")):
        cmd = [sys.executable, "-m", "hypervisor.cli", "node", "--name", name, "--role", role,
               "--listen", addrs[name], "--peer", addrs[peer], "--peer-name", peer, "--observer", obs_addr,
               "--shared-dir", shared, "--run-dir", run_dir, "--log", os.path.join(run_dir, f"{name}.ftlog"),
               *opts.to_args(), *dev_args]
        cmd += ["--guest", os.path.abspath(guest)]   # the backup needs it only if A dies before logging
        with open(os.path.join(run_dir, f"{name}.stderr"), "wb") as err:
            procs[name] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    with open(os.path.join(run_dir, "run.json"), "w") as f:
        json.dump({"observer": obs_addr, "nodes": addrs, "pids": {n: p.pid for n, p in procs.items()},
                   "observer_pid": os.getpid()}, f)
    obs = Observer(obs_addr, addrs, run_dir, procs, kill_after, progress, log_path, stdin_fd, say, out_fd,
                   listen_net=listen_net)
    obs.core.primary = "A"      # until a HELLO says otherwise: the node started as primary
    return obs.run()


def _run_managed(guest, log_path, kill_after, progress, run_dir, opts, host, say, stdin_fd, out_fd, n, shared,
                 obs_addr, dev_args=(), listen_net=None, coordinator=None):
    names = [chr(ord("A") + i) for i in range(n)]
    addrs = {name: f"tcp://{host}:{free_tcp_port(host)}" for name in names}
    procs = {}
    vs = cluster = None
    if coordinator:
        # etcd holds the views: no view service process. A per-run prefix keeps runs
        # that share a cluster apart.
        from .etcd import check_reachable
        if coordinator == "etcd-local":
            from .etcd_local import LocalCluster
            cluster = LocalCluster(os.path.join(run_dir, "etcd"))
            say and say(f"starting a local etcd cluster of 3 members in {cluster.dir}")
            cluster.start()
            coordinator = cluster.url
        if "/" not in coordinator[len("etcd://"):]:
            coordinator += f"/ftvm/run-{os.path.basename(os.path.abspath(run_dir))}-{os.getpid()}"
        try:
            check_reachable(coordinator)
        except BaseException:
            if cluster is not None:
                cluster.stop()
            raise
        vs_addr = coordinator
    else:
        vs_addr = f"tcp://{host}:{free_tcp_port(host)}"
        # A node is dead after VS_DEAD_PINGS_MIN missed pings, or after --fail-timeout-ms
        # if that is longer (a run asked to tolerate slow peers is judged the same way by
        # the view service as by the nodes).
        dead_pings = max(VS_DEAD_PINGS_MIN, -(-opts.fail_timeout_ms // VS_PING_INTERVAL_MS))
        with open(os.path.join(run_dir, "viewservice.stderr"), "wb") as err:
            vs = subprocess.Popen([sys.executable, "-m", "hypervisor.cli", "viewservice", "--listen", vs_addr,
                                   "--ping-interval-ms", str(VS_PING_INTERVAL_MS), "--dead-pings", str(dead_pings),
                                   "--first-backup-wait-ms", "5000",
                                   "--state-file", os.path.join(run_dir, "viewservice.json")],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        for i, name in enumerate(names):
            cmd = [sys.executable, "-m", "hypervisor.cli", "node", "--name", name,
                   "--viewservice" if vs is not None else "--coordinator", vs_addr,
                   "--listen", addrs[name], "--observer", obs_addr, "--shared-dir", shared, "--run-dir", run_dir,
                   "--log", os.path.join(run_dir, f"{name}.ftlog"), "--guest", os.path.abspath(guest),
                   *(["--first-backup-wait-ms", "5000"] if vs is None else []), *opts.to_args(), *dev_args]
            with open(os.path.join(run_dir, f"{name}.stderr"), "wb") as err:
                procs[name] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            if i == 0:
                time.sleep(0.3)     # let the first node become primary of view 1
        with open(os.path.join(run_dir, "run.json"), "w") as f:
            json.dump({"observer": obs_addr, "viewservice" if vs else "coordinator": vs_addr, "nodes": addrs,
                       "pids": {k: p.pid for k, p in procs.items()}, "observer_pid": os.getpid()}, f)
        obs = Observer(obs_addr, addrs, run_dir, procs, kill_after, progress, log_path, stdin_fd, say, out_fd,
                       listen_net=listen_net)
        return obs.run()
    finally:
        if vs is not None:
            vs.terminate()
            try:
                vs.wait(timeout=5)
            except subprocess.TimeoutExpired:
                vs.kill()
        if cluster is not None:
            cluster.stop()
