"""A deterministic simulation of the fault-tolerance protocol (the VOPR / FoundationDB
way): the real protocol cores (protocol.NodeCore, ObserverCore, and the view
service's core) on a fake clock, over a simulated network that drops, duplicates,
delays, reorders and partitions, with process kills, pauses (SIGSTOP) and restarts,
all from one seed.

The guest is a stand-in: the primary logs records; record i carries the guest time at
which it was made, and every few records the guest prints a line "i t\\n" covered by
record i. A backup has the same records, so a node that goes live re-creates exactly
the lines the old primary had, and carries on numbering from its log.

After every step the invariants are checked (``Violation`` names the first broken one):

- the observer's console is the lines 0, 1, 2, ... exactly once and in order, with
  guest time never running backwards;
- nothing is released by a protected primary before its backup had the cover;
- at most one node releases in any view;
- views only grow, at every node and at the observer;
- the primary of view i was primary or backup of view i-1;
- at most one node goes live in any view;
- and at the end, liveness: when the faults stop and a node is alive, the run ends.

Runs of three nodes take their views either from the view service's core or, for
about half the seeds, from etcd (simstore.SimStore: revisions, compare-and-swap,
leases that expire, a lost quorum) through the real etcd shell's logic
(etcd.EtcdViewClient); those seeds add quorum losses to the faults, and kills of
primaries and backups are kills of the nodes that decide views.

    python -m hypervisor.ft.sim --seed 17 --trace       # replay one scenario step by step
    python -m hypervisor.ft.sim --seeds 1000000         # a long campaign
"""
from __future__ import annotations

import argparse
import dataclasses
import heapq
import random
import sys

from logging_channel.messages import ACK, HEARTBEAT, LOG, SNAP, TYPE_NAMES
from .views import ViewService

from . import coordination as CO
from . import core
from . import protocol as P
from .etcd import EtcdViewClient, Unavailable
from .simstore import SimStore

MS = 1_000_000
PING_NS = 50 * MS
SIM_PREFIX = "/sim"
SIM_URL = "etcd://sim:1" + SIM_PREFIX
DEAD_PINGS = 6


class Violation(AssertionError):
    pass


class Scenario:
    """What one seed decides: the run's length, the faults and their times."""

    def __init__(self, seed: int, nodes: int | None = None):
        r = random.Random(seed)
        self.seed = seed
        self.nodes = nodes or r.choice((2, 3))
        self.records = r.randint(20, 60)           # the guest's length, in records
        self.print_every = r.choice((1, 2, 3))
        self.stop_ns = r.choice((200_000, 500_000, 2 * MS, 5 * MS, 10 * MS))   # guest time between stops
        self.max_lag_ns = r.choice((2, 20, 100)) * MS
        self.latency_ns = r.choice((50_000, 300_000, 2 * MS))
        self.drop = r.choice((0, 0, 0.02, 0.1))
        self.dup = r.choice((0, 0, 0.02, 0.1))
        self.jitter_ns = r.choice((0, 0, 1 * MS, 10 * MS))
        self.late = r.choice((0, 0, 0.01, 0.05))      # a message held up 50-500 ms (a stuck connection)
        self.replay_ns = r.choice((0, 200_000, 1 * MS, 5 * MS))   # the backup replays a record this slowly
        self.skew_ns = [r.randint(-5000, 5000) * MS if r.random() < 0.3 else 0 for _ in range(self.nodes)]
        faults = []
        t_end = self.records * self.stop_ns * 2 + 200 * MS
        for _ in range(r.choice((0, 1, 1, 2, 3))):
            kind = r.choice(("kill", "kill", "pause", "partition", "sched", "vs_cut"))
            at = r.randint(0, t_end)
            if kind == "kill":
                faults.append((at, "kill", r.choice(("primary", "backup", "any"))))
            elif kind == "pause":
                faults.append((at, "pause", r.choice(("primary", "backup")), r.choice((30, 100, 200, 600)) * MS))
            elif kind == "partition":
                faults.append((at, "partition", r.randint(0, 1), r.choice((50, 200, 500)) * MS))
            elif kind == "vs_cut":      # cut off from the view service only (an asymmetric partition)
                faults.append((at, "vs_cut", r.choice(("primary", "backup")), r.choice((200, 500, 1000)) * MS))
            else:
                faults.append((at, "sched", r.choice(("primary", "backup")), r.choice((20, 60, 120)) * MS))
        if self.nodes == 2:
            # A pair survives one failure: at most one kill, and no kill after a pause
            # or partition may have already cost the redundancy.
            kills = [f for f in faults if f[1] == "kill"]
            faults = [f for f in faults if f[1] != "kill"] + kills[:1]
        # The coordinator, drawn from a generator of its own so that the scenarios of
        # the view-service seeds stay what they were.
        er = random.Random(seed * 104729 + 3)
        self.coord = er.choice(("vs", "etcd")) if self.nodes > 2 else "vs"
        if self.coord == "etcd":
            for _ in range(er.choice((0, 1, 1, 2))):
                faults.append((er.randint(0, t_end), "quorum", "etcd", er.choice((100, 500, 2000, 5000)) * MS))
        self.faults = sorted(faults)
        self.faults_end = max((f[0] + (f[3] if len(f) > 3 else 0) for f in faults), default=0)
        # Managed runs: the first view waits for a second node, which follows the log
        # from its first record (as `ftvm run --nodes 3` starts), or the first node starts alone.
        self.first_backup_wait_ns = r.choice((0, 1000 * MS))

    def __str__(self):
        return (f"seed {self.seed}: {self.nodes} nodes ({self.coord}), {self.records} records, max_lag "
                f"{self.max_lag_ns // MS} ms, latency {self.latency_ns / MS} ms, drop {self.drop}, dup {self.dup}, "
                f"faults {self.faults}")


class SimNode:
    """One node: the protocol core, a stand-in guest, and the shell's duties (the log,
    the arbiter call, going live), performed on the simulated clock."""

    def __init__(self, sim, name, role, view, peer, managed):
        self.sim = sim
        self.name = name
        self.core = P.NodeCore(name, role, view, peer, sim.timing, now=sim.now, managed=managed)
        self.log = []                   # records: guest time of each
        self.alive = True
        self.paused_until = 0
        self.sched_delay_ns = 0         # a loaded machine: every wake-up comes this much late
        self.recording = False
        self.tsc_offset = 0             # guest time = host clock + this
        self.console_total = 0
        self.ended = False
        self.replayed = 0
        self.snap = None
        self.views_seen = [view]
        self.incarnation = 1             # grows with each restart (0: not reported)
        self.failover_at = None
        self.coord = None
        if managed and sim.store is not None:
            self.core.arbitrated = True
            self.coord = EtcdViewClient(SIM_URL, name, store=sim.store, clock=lambda: sim.now / 1e9,
                                        wall=lambda: sim.now / 1e9, incarnation=self.incarnation,
                                        first_backup_wait_ns=sim.sc.first_backup_wait_ns)

    def clock(self):
        return self.sim.now + self.sim.skew[self.name]

    # --- the shell: perform effects ----------------------------------------------------------
    def step(self, ev):
        if not self.alive:
            return
        effects = self.core.step(ev, self.clock())
        if self.sim.trace:
            self.sim.say(f"{self.name}: {type(ev).__name__} -> " + ", ".join(_short(e) for e in effects))
        for e in effects:
            self.perform(e)
        self.sim.check_node(self)

    def perform(self, e):
        sim, c = self.sim, self.core
        if isinstance(e, P.Send):
            payload = e.payload
            sim.send(self.name, e.to, P.Recv(e.type, self.name, e.view, e.seq, payload))
        elif isinstance(e, P.SendLog):
            frames = self.log[e.first:e.upto]
            if frames:
                sim.send(self.name, e.to, P.Recv(LOG, self.name, e.view, e.first,
                                                 [frames, len(frames), len(self.log), self.tsc_offset, e.at]))
        elif isinstance(e, P.SendAck):
            sim.send(self.name, e.to, P.Recv(ACK, self.name, e.view, e.received, [self.replayed, e.received, 0, e.echo]))
        elif isinstance(e, P.AppendLog):
            assert e.first == len(self.log), (e.first, len(self.log))
            self.log.extend(e.frames)
            if sim.sc.replay_ns:
                sim.later(sim.sc.replay_ns * len(e.frames), self, "replayed", len(self.log))
            else:
                self.replayed = len(self.log)
            sim.received_max[self.name] = max(sim.received_max.get(self.name, 0), len(self.log))
        elif isinstance(e, P.Released):
            sim.on_release(self, e.held)
        elif isinstance(e, P.Claim):
            sim.later(sim.rng.randint(0, 2 * MS), self, "claim", e.view)
        elif isinstance(e, P.Failover):
            # Arbitrated (etcd): the view may have waited for the quorum since the
            # primary was last heard; guest time runs on through all of it.
            self.failover_at = e.since_ns if c.arbitrated else self.clock()
            # Replay what came (instant here), then claim the view.
            sim.later(sim.rng.randint(0, 5 * MS), self, "claim", e.view)
        elif isinstance(e, P.GoLive):
            self.go_live(e)
        elif isinstance(e, P.Halt):
            if sim.trace:
                sim.say(f"{self.name}: halt: {e.why}")
            if e.rejoin:
                sim.later(10 * MS, self, "rejoin", None)
        elif isinstance(e, P.StartTransfer):
            sim.later(sim.rng.randint(0, 3 * MS), self, "snapshot", e.to)
        elif isinstance(e, P.Suspect):
            if sim.store is not None:
                sim.later(0, self, "ping_now", None)     # the shell wakes its coordinator thread
        elif isinstance(e, (P.Trim, P.Wake, P.StopSoon, P.Connect, P.Deliver, P.PushInput, P.PushNet, P.StopRun)):
            pass
        elif isinstance(e, P.Say):
            if sim.trace:
                sim.say(f"{self.name}: {e.text}")
        else:
            raise AssertionError(e)

    # --- the stand-in guest --------------------------------------------------------------------------
    def go_live(self, e):
        c = self.core
        sim = self.sim
        view = e.view
        if c.managed and not self.log:
            # View 1, or the backup of view 1 promoted before any log came (then the
            # old primary released nothing): start the guest afresh.
            self.start_guest("primary" if view == 1 else f"started afresh in view {view}")
            return
        # Guest time carries on from the old primary's offset, never backwards.
        last = self.log[-1] if self.log else 0
        offset, _excess = core.go_live_offset(e.primary_offset_ns, e.skew_ns, self.clock(), last)
        # Guest time runs on through the outage; a go-live that waited for etcd's
        # quorum after the failover began has that much more to show.
        waited = self.clock() - self.failover_at if self.failover_at is not None else 0
        if self.log and \
                self.clock() + offset - last > 2 * sim.timing.fail_timeout_ns * core.FailureDetector.CAP_FACTOR + waited:
            raise Violation(f"{self.name} went live with guest time {(self.clock() + offset - last) / MS:.0f} ms "
                            f"past the last record: the host clock offset was not applied")
        self.tsc_offset = offset
        # The replayed console, and the re-send of what the observer has not confirmed.
        text = sim.console_of(self.log)
        self.console_total = len(text)
        conf = c.console.confirmed
        c.console.reset(conf)
        if conf < len(text):
            self.step(P.Hold("console", conf, text[conf:], 0))
        self.ended = len(self.log) >= sim.sc.records
        if self.ended:
            self.step(P.Hold("exit", len(text), None, 0, status=0, detail="exit"))
        self.recording = True
        self.step(P.Recording(0, 0, f"went live in view {view}"))
        sim.later(sim.sc.stop_ns, self, "guest", None)

    def start_guest(self, detail):
        self.tsc_offset = 0
        self.recording = True
        self.step(P.Recording(0, 0, detail))
        self.sim.later(self.sim.sc.stop_ns, self, "guest", None)

    def guest_step(self):
        """One stop of the guest: log a record or a few, print what they cover."""
        c, sim = self.core, self.sim
        if not self.recording or c.role != P.PRIMARY or c.halted or self.ended:
            return
        if c.must_wait(self.clock()):
            sim.later(1 * MS, self, "guest", None)      # flow control: wait for the backup
            return
        for _ in range(sim.rng.randint(1, 3)):
            t = max(self.clock() + self.tsc_offset, self.log[-1] if self.log else 0)
            self.log.append(t)
            i = len(self.log) - 1
            if i % sim.sc.print_every == 0 or i == sim.sc.records - 1:
                line = sim.line(i, t)
                self.step(P.Hold("console", self.console_total, line, i + 1))
                self.console_total += len(line)
            if len(self.log) >= sim.sc.records:
                self.ended = True
                self.step(P.Hold("exit", self.console_total, None, len(self.log), status=0, detail="exit"))
                break
        self.step(P.AtStop(len(self.log), len(self.log), unsent_bytes=8 * (len(self.log) - c.sent),
                           unacked_bytes=8 * (len(self.log) - c.acked), guest_waits=self.ended))
        if not self.ended:
            sim.later(sim.sc.stop_ns, self, "guest", None)


class Sim:
    def __init__(self, scenario: Scenario, trace=False, broken=None, out=None):
        self.sc = scenario
        self.rng = random.Random(scenario.seed * 7919 + 1)
        self.trace = trace
        self.out = out or sys.stdout
        self.broken = broken
        self.now = 0
        self.q = []
        self.n = 0
        self.timing = P.Timing(max_lag_ns=scenario.max_lag_ns)
        names = "ABCDE"[:scenario.nodes]
        self.skew = dict(zip(names, scenario.skew_ns))
        self.skew[P.OBSERVER] = 0
        self.managed = scenario.nodes > 2
        self.store = SimStore(lambda: self.now) if self.managed and scenario.coord == "etcd" else None
        self._changes_checked = 0
        self.store_views = []
        self.store_view_at = []         # simulated time each view was committed
        self.nodes = {}
        if self.managed:
            for n in names:
                self.nodes[n] = SimNode(self, n, P.IDLE, 0, None, True)
            self.vs = (ViewService(ping_interval_ns=PING_NS, dead_pings=DEAD_PINGS,
                                   first_backup_wait_ns=scenario.first_backup_wait_ns)
                       if self.store is None else None)
        else:
            self.nodes["A"] = SimNode(self, "A", P.PRIMARY, 1, "B", False)
            self.nodes["B"] = SimNode(self, "B", P.BACKUP, 1, "A", False)
            self.vs = None
        self.obs = P.ObserverCore(names)
        self.claims = {}                # view -> winner (the shared-disk test-and-set)
        self.cut = set()                # node names cut off from everyone
        self.vs_cut = set()             # node names cut off from the view service
        self.received_max = {}
        self.releaser = {}              # view -> node that released in it
        self.roles = {}                 # (node, view) -> role it had
        self.console = bytearray()
        self.last_line = -1
        self.last_t = -(1 << 62)
        self.obs_view = 0
        self.finished_at = None
        self.steps = 0
        self._text_cache = {}
        if self.broken:
            apply_broken(self.broken)

    def say(self, text):
        print(f"{self.now / MS:10.3f} ms  {text}", file=self.out)

    # --- scheduling ---------------------------------------------------------------------------------
    def later(self, delay, node, kind, arg):
        self.n += 1
        heapq.heappush(self.q, (self.now + delay, self.n, node, kind, arg, getattr(node, "incarnation", 0)))

    def send(self, src, dst, msg):
        if dst is None:
            return
        if (src in self.cut or dst in self.cut) and src != dst:
            return
        if (src == "vs" and dst in self.vs_cut) or (dst == "vs" and src in self.vs_cut):
            return
        r = self.rng.random()
        if r < self.sc.drop:
            return
        copies = 2 if r < self.sc.drop + self.sc.dup else 1
        for _ in range(copies):
            delay = self.sc.latency_ns + (self.rng.randint(0, self.sc.jitter_ns) if self.sc.jitter_ns else 0)
            if self.sc.late and self.rng.random() < self.sc.late:
                delay += self.rng.randint(50 * MS, 500 * MS)
            target = self.nodes.get(dst) if dst != P.OBSERVER else P.OBSERVER
            if dst == "vs":
                target = "vs"
            self.later(delay, target, "msg", msg)

    # --- the stand-in guest's text ------------------------------------------------------------------
    @staticmethod
    def line(i, t):
        return f"{i} {t}\n".encode()

    def console_of(self, log):
        out = bytearray()
        for i, t in enumerate(log):
            if i % self.sc.print_every == 0 or i == self.sc.records - 1:
                out += self.line(i, t)
        return bytes(out)

    # --- running --------------------------------------------------------------------------------------
    def run(self, limit_ns=None):
        sc = self.sc
        limit_ns = limit_ns or (sc.faults_end + sc.records * sc.stop_ns * 4 + 20_000 * MS)
        for name, node in self.nodes.items():
            self.later(self.rng.randint(0, 20 * MS), node, "tick", None)
            if self.managed:
                self.later(self.rng.randint(0, PING_NS), node, "ping", None)
        self.later(50 * MS, P.OBSERVER, "tick", None)
        if self.managed and self.store is None:
            self.later(PING_NS, "vs", "tick", None)
        else:
            self.nodes["A"].start_guest("primary")
        for f in sc.faults:
            self.later(f[0], None, "fault", f)
        while self.q and self.finished_at is None:
            t, _, target, kind, arg, inc = heapq.heappop(self.q)
            if t > limit_ns:
                break
            self.now = t
            self.steps += 1
            self.dispatch(target, kind, arg, inc)
        self.check_end(limit_ns)
        return self

    def dispatch(self, target, kind, arg, inc):
        if kind == "fault":
            return self.fault(arg)
        if target == P.OBSERVER:
            effects = self.obs.step(arg if kind == "msg" else P.Tick(), self.now)
            for e in effects:
                self.perform_observer(e)
            if kind == "tick":
                self.later(50 * MS, P.OBSERVER, "tick", None)
            self.check_observer()
            return
        if target == "vs" and self.store is not None:
            if kind == "msg":
                self.etcd_request(arg)
            else:
                self.etcd_propose(arg)
            self.check_store_views()
            return
        if target == "vs":
            if kind == "tick":
                self.vs.tick(self.now)
                self.later(PING_NS, "vs", "tick", None)
            else:
                name, viewnum, ready, asked_at, incarnation, suspect = arg
                v = self.vs.ping(name, viewnum, self.now, ready, incarnation=incarnation, suspect=suspect)
                self.send("vs", name, ("view", v.num, v.primary, v.backup, asked_at))
            self.check_views()
            return
        node = target
        if node is None or not node.alive or inc != node.incarnation:
            return
        if self.now < node.paused_until:
            # Frozen (SIGSTOP) or not scheduled: everything waits until it runs again.
            heapq.heappush(self.q, (node.paused_until, self.n, node, kind, arg, inc))
            self.n += 1
            return
        if kind == "msg":
            if isinstance(arg, tuple) and arg[0] == "view":
                node.step(P.ViewReply(*arg[1:]))
            elif isinstance(arg, tuple) and arg[0] == "snap":
                self.receive_snap(node, arg)
            else:
                node.step(arg)
        elif kind == "tick":
            node.step(P.Tick())
            self.later(self.timing.hb_interval_ns, node, "tick", None)
            if node.sched_delay_ns and self.rng.random() < 0.3:
                # A loaded machine: now and then this process does not run for a while.
                node.paused_until = self.now + self.rng.randint(0, node.sched_delay_ns)
        elif kind == "guest":
            node.guest_step()
        elif kind == "claim":
            if self.store is not None:
                won = None if (node.name in self.vs_cut or node.name in self.cut) else node.coord.try_claim(arg, node.name)
                if won is None:
                    self.later(20 * MS, node, "claim", arg)     # etcd unavailable: a failover waits for it
                    return
                if won and self.claims.setdefault(arg, node.name) != node.name:
                    raise Violation(f"two nodes went live in view {arg}: {self.claims[arg]} and {node.name}")
            else:
                won = self.claims.setdefault(arg, node.name) == node.name
            node.step(P.Claimed(arg, won))
        elif kind in ("ping", "ping_now"):
            c = node.core
            if self.store is not None:
                self.send(node.name, "vs", ("etcd", node, c.acked_view, c.ready, node.clock(),
                                            node.core.suspect(node.clock())))
            else:
                self.send(node.name, "vs", (node.name, c.acked_view, c.ready, node.clock(), node.incarnation,
                                            c.silent_backup))
            if kind == "ping":
                self.later(PING_NS, node, "ping", None)
        elif kind == "snapshot":
            self.snapshot(node, arg)
        elif kind == "resnap":
            self.resnap(node, arg)
        elif kind == "replayed":
            node.replayed = max(node.replayed, arg)
        elif kind == "rejoin":
            self.restart(node)
        else:
            raise AssertionError(kind)

    # --- etcd -------------------------------------------------------------------------------------------
    def etcd_request(self, msg):
        """A node's coordinator request reached etcd (it is processed even if the node
        died since it sent it, as a real request in flight would be)."""
        _, node, acked, ready, asked_at, suspect = msg
        node.coord.suspects = lambda: {suspect} if suspect else set()
        try:
            r, p = node.coord.read_and_decide(acked, ready, node.name)
        except Unavailable:
            return
        # The proposal is a second request: other nodes' requests may come between.
        delay = self.sc.latency_ns * 2 + (self.rng.randint(0, self.sc.jitter_ns) if self.sc.jitter_ns else 0)
        self.later(delay, "vs", "propose", (node, r, p, asked_at))

    def etcd_propose(self, arg):
        node, r, p, asked_at = arg
        try:
            rep = node.coord.propose(r, p)
        except Unavailable:
            return
        self.send("vs", node.name, ("view", rep[0], rep[1], rep[2], asked_at))

    def check_store_views(self):
        key = CO.keys(SIM_PREFIX)["view"]
        for rev, k, value in self.store.changes[self._changes_checked:]:
            if k != key:
                continue
            v = CO.parse_view(value)
            if self.store_views:
                prev = self.store_views[-1]
                if v.num != prev.num + 1:
                    raise Violation(f"etcd's view went from {prev.num} to {v.num}")
                if v.primary not in (prev.primary, prev.backup):
                    raise Violation(f"{v.primary} became primary of view {v.num} without being primary or backup "
                                    f"of view {prev.num}")
            self.store_views.append(v)
            self.store_view_at.append(self.now)
        self._changes_checked = len(self.store.changes)

    # --- managed: state transfer ----------------------------------------------------------------------
    def snapshot(self, node, to):
        c = node.core
        if c.role != P.PRIMARY or c.peer != to or c.halted:
            return
        k = len(node.log)
        node.step(P.TransferStarted(k))
        snap = ("snap", c.view, list(node.log), node.tsc_offset, k)
        self.resnap(node, (to, snap, c.view))

    def resnap(self, node, arg):
        to, snap, view = arg
        c = node.core
        if c.role != P.PRIMARY or not c.transferring or c.peer != to or c.view != view:
            return
        self.send(node.name, to, snap)
        self.later(100 * MS, node, "resnap", arg)

    def receive_snap(self, node, snap):
        _, view, log, tsc_offset, k = snap
        c = node.core
        if c.role != P.BACKUP or c.view != view or c.ready or node.log:
            return
        node.log = list(log)
        node.replayed = k
        node.tsc_offset = tsc_offset
        self.received_max[node.name] = max(self.received_max.get(node.name, 0), k)
        node.step(P.TransferDone(k))

    def restart(self, node):
        """A stale node starts again as idle (a new process, a new log)."""
        fresh = SimNode(self, node.name, P.IDLE, 0, None, True)
        fresh.incarnation = node.incarnation + 1
        if fresh.coord is not None:
            fresh.coord.incarnation = fresh.incarnation
        node.alive = False
        self.nodes[node.name] = fresh
        self.later(0, fresh, "tick", None)
        self.later(self.rng.randint(0, PING_NS), fresh, "ping", None)

    # --- faults ---------------------------------------------------------------------------------------
    def pick(self, which):
        live = [n for n in self.nodes.values() if n.alive]
        role = {"primary": P.PRIMARY, "backup": P.BACKUP}.get(which)
        cands = [n for n in live if n.core.role == role] if role else live
        return cands[0] if cands else None

    def fault(self, f):
        kind = f[1]
        if kind == "kill":
            n = self.pick(f[2])
            if n is not None:
                self.say(f"fault: kill {n.name}") if self.trace else None
                n.alive = False
        elif kind == "pause":
            n = self.pick(f[2])
            if n is not None:
                self.say(f"fault: pause {n.name} {f[3] // MS} ms") if self.trace else None
                n.paused_until = self.now + f[3]
        elif kind == "partition":
            names = sorted(n.name for n in self.nodes.values() if n.alive)
            if names:
                victim = names[f[2] % len(names)]
                self.say(f"fault: cut {victim} off for {f[3] // MS} ms") if self.trace else None
                self.cut.add(victim)
                self.later(f[3], None, "fault", (0, "heal", victim))
        elif kind == "heal":
            self.cut.discard(f[2])
        elif kind == "vs_cut":
            n = self.pick(f[2])
            if n is not None and self.managed:
                self.say(f"fault: cut {n.name} off the view service for {f[3] // MS} ms") if self.trace else None
                self.vs_cut.add(n.name)
                self.later(f[3], None, "fault", (0, "vs_heal", n.name))
        elif kind == "vs_heal":
            self.vs_cut.discard(f[2])
        elif kind == "sched":
            n = self.pick(f[2])
            if n is not None:
                n.sched_delay_ns = f[3]
                self.later(2000 * MS, None, "fault", (0, "unsched", n.name))
        elif kind == "unsched":
            n = self.nodes.get(f[2])
            if n is not None:
                n.sched_delay_ns = 0
        elif kind == "quorum":
            self.say(f"fault: etcd loses its quorum for {f[3] // MS} ms") if self.trace else None
            self.store.lost_quorum()
            self.later(f[3], None, "fault", (0, "quorum_back", f[3]))
        elif kind == "quorum_back":
            self.store.regained_quorum(f[2])

    # --- the observer's effects -------------------------------------------------------------------------
    def perform_observer(self, e):
        if isinstance(e, P.Send):
            self.send(P.OBSERVER, e.to, P.Recv(e.type, P.OBSERVER, e.view, e.seq, e.payload))
        elif isinstance(e, P.Write):
            self.console += e.data
            self.check_console()
        elif isinstance(e, P.Ended):
            self.finished_at = self.now
        elif isinstance(e, (P.Announced, P.Say, P.NetWrite)):
            if isinstance(e, P.Say) and "CONFLICT" in e.text:
                raise Violation(e.text)

    # --- invariants ---------------------------------------------------------------------------------------
    def on_release(self, node, held):
        c = node.core
        v = c.view
        other = self.releaser.setdefault(v, node.name)
        if other != node.name:
            raise Violation(f"two nodes released in view {v}: {other} and {node.name}")
        if c.protected and held.cover > self.received_max.get(c.peer, 0):
            raise Violation(f"{node.name} released output covered by record {held.cover} before its backup "
                            f"{c.peer} had it (it had {self.received_max.get(c.peer, 0)})")

    def check_node(self, node):
        c = node.core
        if c.view < node.views_seen[-1]:
            raise Violation(f"{node.name}'s view went back from {node.views_seen[-1]} to {c.view}")
        if c.view != node.views_seen[-1]:
            node.views_seen.append(c.view)
        if c.role in (P.PRIMARY, P.BACKUP) and c.view > 0:
            key = (node.name, c.view)
            if key not in self.roles:
                self.roles[key] = c.role
                if c.role == P.PRIMARY and c.view > 1 and not self.managed:
                    before = self.roles.get((node.name, c.view - 1))
                    if before not in (P.PRIMARY, P.BACKUP):
                        raise Violation(f"{node.name} became primary of view {c.view} without being primary "
                                        f"or backup of view {c.view - 1}")

    def check_views(self):
        h = self.vs.history
        if len(h) >= 2 and len(h) != getattr(self, "_vs_checked", 0):
            self._vs_checked = len(h)
            prev, cur = h[-2][1], h[-1][1]
            if cur.num <= prev.num:
                raise Violation(f"the view service's view went from {prev.num} to {cur.num}")
            if cur.primary not in (prev.primary, prev.backup):
                raise Violation(f"{cur.primary} became primary of view {cur.num} without being primary or backup "
                                f"of view {prev.num}")

    def check_observer(self):
        if self.obs.view < self.obs_view:
            raise Violation(f"the observer's view went back from {self.obs_view} to {self.obs.view}")
        self.obs_view = self.obs.view

    def check_console(self):
        text = bytes(self.console)
        end = text.rfind(b"\n")
        seen = self._parsed
        new = text[seen:end + 1] if end >= 0 else b""
        self._parsed = max(seen, end + 1)
        for raw in new.split(b"\n")[:-1]:
            i, t = map(int, raw.split())
            want = self.last_line + 1
            while want % self.sc.print_every and want != self.sc.records - 1:
                want += 1
            if i != want:
                raise Violation(f"the observer printed line {i} after line {self.last_line} (wanted {want}): "
                                f"not exactly once in order")
            if t < self.last_t:
                raise Violation(f"guest time ran backwards: line {i} at {t} after {self.last_t}")
            self.last_line, self.last_t = i, t

    _parsed = 0

    def check_end(self, limit_ns):
        live = [n for n in self.nodes.values() if n.alive and not n.core.halted]
        if self.finished_at is not None:
            if self.last_line != self.sc.records - 1:
                raise Violation(f"the run ended after line {self.last_line} of {self.sc.records}")
            return
        if live and self.recoverable():
            raise Violation(f"no progress: the run did not end by {limit_ns / 1e9:.1f} s (simulated) with "
                            f"{[n.name + ':' + n.core.role for n in live]} alive; the observer has "
                            f"{self.last_line + 1} lines")

    def recoverable(self):
        """Whether the run must end: some node holds the whole state."""
        if not self.managed:
            return any(n.alive and not n.core.halted for n in self.nodes.values())
        if self.store is not None:
            k = CO.keys(SIM_PREFIX)
            e = self.store.kv.get(k["view"])
            if e is None:
                return False
            v = CO.parse_view(e[0])
            a = self.store.kv.get(k["acked"])
            acked = a is not None and CO.decode(a[0]).get("num") == v.num
        else:
            v, acked = self.vs.view, self.vs.acked
        p = self.nodes.get(v.primary)
        if not acked and not (p is not None and p.alive) and not (v.num == 1 and self.vs is not None
                                                                 and self.vs.formed):
            return False            # the classic stuck case: the primary died before it acknowledged the view
        for name in (v.primary, v.backup):
            n = self.nodes.get(name)
            if n is not None and n.alive and (name == v.primary or n.core.ready):
                return True
        return False


def _short(e):
    if isinstance(e, P.Send):
        return f"send {TYPE_NAMES.get(e.type, e.type)}->{e.to} v{e.view} #{e.seq}"
    if isinstance(e, P.SendLog):
        return f"log->{e.to} [{e.first},{e.upto})"
    if isinstance(e, P.AppendLog):
        return f"append {len(e.frames)} at {e.first}"
    if isinstance(e, P.Released):
        return f"release {e.held.stream}@{e.held.offset} cover {e.held.cover}"
    return type(e).__name__


# --- negative controls: deliberately broken variants of the protocol -----------------------------------

_ORIGINALS = {}


def apply_broken(name):
    """Patch the core into a known-broken variant (restored by ``restore``)."""
    restore()
    if name == "release_before_ack":
        orig = core.OutputGate.release
        _ORIGINALS[(core.OutputGate, "release")] = orig
        core.OutputGate.release = lambda self, acked, protected, fresh: orig(self, 1 << 62, protected, True)
    elif name == "skip_fence":
        orig = P.NodeCore._recv

        def recv(self, m, now, out):
            # Take every node's message as if it came from the peer of this view.
            if m.sender != P.OBSERVER and self.peer is not None and not self.halted:
                m = dataclasses.replace(m, sender=self.peer, view=self.view)
            return orig(self, m, now, out)
        _ORIGINALS[(P.NodeCore, "_recv")] = orig
        P.NodeCore._recv = recv
    elif name == "release_while_backup_named":
        orig = P.NodeCore._release

        def release(self, now, out):
            # The old rule: a managed primary whose backup went silent released under
            # the view service's lease while the view still named that backup.
            saved = self.vs_view
            if self.managed and not self.protected:
                self.vs_view = (saved[0], saved[1], None)
            try:
                return orig(self, now, out)
            finally:
                self.vs_view = saved
        _ORIGINALS[(P.NodeCore, "_release")] = orig
        P.NodeCore._release = release
    elif name == "backup_named_again":
        orig = P.NodeCore._on_view

        def on_view(self, now, out):
            # The old rule: a backup named again in a later view stays backup with the
            # state it had (and the view service keeps its old readiness report).
            num, primary, backup = self.vs_view
            if self.role == P.BACKUP and backup == self.name and primary != self.name and num != self.view:
                self.view = self.acked_view = num
                return
            return orig(self, now, out)
        _ORIGINALS[(P.NodeCore, "_on_view")] = orig
        P.NodeCore._on_view = on_view
        orig_ping = ViewService.ping

        def ping(self, name, viewnum, now, ready=False, addr=None, incarnation=None, suspect=None):
            v = orig_ping(self, name, viewnum, now, ready, addr, incarnation, suspect)
            self.ready[name] = ready
            return v
        _ORIGINALS[(ViewService, "ping")] = orig_ping
        ViewService.ping = ping
    elif name == "no_cas":
        # etcd without compare-and-swap: every proposal commits, whatever was read.
        orig = SimStore._compare
        _ORIGINALS[(SimStore, "_compare")] = orig
        SimStore._compare = lambda self, c: True
    elif name == "old_retransmit":
        orig = P.NodeCore._retransmit

        def retransmit(self, now, out):
            # The old rule: re-send only records already sent once, and never send at a
            # stop because flow control waits.
            if self.transferring or self.acked >= self.sent:
                return
            if now - self.last_ack_progress > self.t.retransmit_ns:
                out.append(P.SendLog(self.peer, self.view, self.acked, self.sent))
                self.last_ack_progress = now
        _ORIGINALS[(P.NodeCore, "_retransmit")] = orig
        P.NodeCore._retransmit = retransmit
        orig_wait = P.NodeCore.must_wait
        _ORIGINALS[(P.NodeCore, "must_wait")] = orig_wait
        state = {"in_stop": False}
        orig_stop = P.NodeCore._at_stop

        def at_stop(self, ev, now, out):
            state["in_stop"] = True
            try:
                orig_stop(self, ev, now, out)
            finally:
                state["in_stop"] = False

        def must_wait(self, now):
            return False if state["in_stop"] else orig_wait(self, now)
        _ORIGINALS[(P.NodeCore, "_at_stop")] = orig_stop
        P.NodeCore._at_stop = at_stop
        P.NodeCore.must_wait = must_wait
    else:
        raise ValueError(f"unknown broken variant {name!r}")


def restore():
    for (cls, attr), fn in _ORIGINALS.items():
        setattr(cls, attr, fn)
    _ORIGINALS.clear()


def run_seed(seed, trace=False, broken=None, nodes=None, out=None):
    """Run one scenario; raise Violation with the seed and a replay command."""
    sc = Scenario(seed, nodes)
    sim = Sim(sc, trace=trace, broken=broken, out=out)
    try:
        sim.run()
    except Violation as e:
        extra = f" --broken {broken}" if broken else ""
        extra += f" --nodes {nodes}" if nodes else ""
        raise Violation(f"{e}\n  {sc}\n  replay: python -m hypervisor.ft.sim --seed {seed}{extra} --trace") from None
    finally:
        if broken:
            restore()
    return sim


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hypervisor.ft.sim", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, help="run this one seed")
    ap.add_argument("--seeds", type=int, default=10000, help="run seeds 0..N-1 (default 10000)")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--nodes", type=int, choices=(2, 3), default=None)
    ap.add_argument("--trace", action="store_true", help="print every step")
    ap.add_argument("--broken", default=None, help="a broken variant (negative control)")
    a = ap.parse_args(argv)
    if a.seed is not None:
        sim = run_seed(a.seed, trace=a.trace, broken=a.broken, nodes=a.nodes)
        print(f"seed {a.seed}: ok, {sim.steps} steps, {sim.last_line + 1} lines, ended at "
              f"{(sim.finished_at or 0) / MS:.1f} ms")
        return 0
    for s in range(a.first, a.first + a.seeds):
        run_seed(s, broken=a.broken, nodes=a.nodes)
    print(f"{a.seeds} seeds from {a.first}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
