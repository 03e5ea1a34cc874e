"""The fault-tolerance protocol as one state machine per process, after etcd's raft.

``NodeCore.step(event, now) -> [effect]`` owns every decision a node takes: fencing by
view (once, at the top of ``_recv``), acknowledgements, the Output Rule's release,
retransmission, flow control, failure detection, the lease, going live and the role
changes (one ``become_*`` per role). ``ObserverCore`` does the same for the observer.
Pure code: no sockets, clocks, threads or randomness (tests/test_ft_protocol.py checks
the imports). Time enters only as ``now`` (nanoseconds of the caller's monotonic
clock). The shells (node.py, managed.py, observer.py) decode messages, call ``step``
and perform the effects, in order; hypervisor/ft/sim.py drives the same cores over a
simulated network.

The log itself (its frames) stays with the shell: the core counts records. A
``SendLog(first, upto)`` effect means "send records [first, upto) of the log".
"""
from __future__ import annotations

import dataclasses

from logging_channel.messages import (ACK, CONFIRM, EXIT, HEARTBEAT, HELLO, INPUT, LOG, NETIN, NETOUT,
                                      OUTPUT, STOP)

from . import core
from .stream import OffsetReceiver, OffsetSender

PRIMARY, BACKUP, IDLE, HALTED = "primary", "backup", "idle", "halted"
OBSERVER = "observer"
MS = 1_000_000
HELLO_EVERY_NS = 200 * MS           # a primary re-announces itself (and what its backup has)
RESEND_EVERY_NS = 300 * MS          # released output the observer has not confirmed goes again
OBSERVER_GONE_NS = 10_000 * MS      # no word from the observer this long: the run is over


@dataclasses.dataclass
class Timing:
    """The protocol's parameters (FtOptions in the shell), in nanoseconds."""
    hb_interval_ns: int = 20 * MS
    fail_timeout_ns: int = 150 * MS
    startup_grace_ns: int = 5000 * MS
    max_lag_ns: int = 100 * MS
    gate_bytes: int = 1 << 20
    unacked_bytes: int = 64 << 20
    retransmit_ns: int = 50 * MS
    vs_lease_ns: int = 150 * MS     # managed: release without a backup only this soon after a view-service answer

    @property
    def lease_ns(self):
        """A primary releases only if its backup echoed a heartbeat it sent less than
        this long ago: the backup cannot declare it dead in less than the base timeout."""
        return self.fail_timeout_ns // 2


# --- events (what happened) -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Recv:
    """A message that passed its checks. ``sender`` is a member's name (the shell
    refuses senders that are not members of the run)."""
    type: int
    sender: str
    view: int
    seq: int
    payload: object


@dataclasses.dataclass(frozen=True)
class Tick:
    """The node's timer (every hb_interval)."""


@dataclasses.dataclass(frozen=True)
class AtStop:
    """The recording guest stopped: ``logged`` records are in the log."""
    logged: int
    blocks: int
    unsent_bytes: int = 0       # bytes of records [sent, logged)
    unacked_bytes: int = 0      # bytes of records not yet acknowledged
    guest_waits: bool = False   # the guest is about to sleep: no next stop in sight
    net_events: int = 0         # network events the guest has taken so far


@dataclasses.dataclass(frozen=True)
class Hold:
    """Output for the Output Rule: console or network bytes, a disk write, a data
    directory change ("file"), or the exit (stream "exit", offset = console total)."""
    stream: str
    offset: object
    data: bytes | None
    cover: int
    status: int = 0
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Claimed:
    """The shared-disk test-and-set for ``view`` came back."""
    view: int
    won: bool


@dataclasses.dataclass(frozen=True)
class Recording:
    """This node records the guest from here on (a primary started it or went live);
    the guest has taken ``input_taken`` input bytes and ``net_taken`` network events."""
    input_taken: int = 0
    net_taken: int = 0
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class ViewReply:
    """Managed: the view service answered (view number, primary, backup) the ping this
    node sent at ``asked_at`` (its clock): the service's lease runs from then."""
    num: int
    primary: str | None
    backup: str | None
    asked_at: int


@dataclasses.dataclass(frozen=True)
class TransferStarted:
    """Managed primary: the state for a new backup was captured at log index ``k``."""
    k: int


@dataclasses.dataclass(frozen=True)
class TransferDone:
    """Managed backup: the state transfer arrived and is restored, at log index ``k``."""
    k: int


# --- effects (what to do, in order) -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Send:
    to: str
    type: int
    view: int
    seq: int
    payload: object = None


@dataclasses.dataclass(frozen=True)
class SendLog:
    """Send records [first, upto) of the log to ``to`` (with the primary's blocks and
    clock offset, which the shell knows, and ``at``, this node's clock, which the
    acknowledgement echoes to renew the lease)."""
    to: str
    view: int
    first: int
    upto: int
    at: int = 0


@dataclasses.dataclass(frozen=True)
class SendAck:
    """Acknowledge ``received`` records (the shell adds how far it has replayed);
    ``echo`` is the primary's clock from the latest log message."""
    to: str
    view: int
    received: int
    echo: int = 0


@dataclasses.dataclass(frozen=True)
class AppendLog:
    """Backup: frames that are new, in order, starting at record ``first`` (a sequence:
    logging_channel.frames.Frames from the shell, a list in the simulation)."""
    first: int
    frames: object


@dataclasses.dataclass(frozen=True)
class Trim:
    """Records before ``acked`` need never be sent again."""
    acked: int


@dataclasses.dataclass(frozen=True)
class Deliver:
    """The Output Rule let ``held`` go: for a disk write or a data-directory change,
    the shell performs it now (console, network output and the exit are Sends)."""
    held: core.Held
    waited_ns: int


@dataclasses.dataclass(frozen=True)
class Released:
    """Console, network output or the exit left for the observer (for measurement)."""
    held: core.Held
    waited_ns: int


@dataclasses.dataclass(frozen=True)
class PushInput:
    data: bytes | None          # None: end of input


@dataclasses.dataclass(frozen=True)
class PushNet:
    events: list


@dataclasses.dataclass(frozen=True)
class Claim:
    view: int


@dataclasses.dataclass(frozen=True)
class Failover:
    """Backup: the primary is dead. Stop taking its log, replay what came, then claim
    the next view (``Claimed`` comes back) and go live."""
    since_ns: int               # when the primary was last heard from
    view: int                   # the view to claim


@dataclasses.dataclass(frozen=True)
class Suspect:
    """Arbitrated (etcd): the channel says ``name``, this node's peer in ``view``, is
    dead. The shell asks the coordinator now instead of at its next ping; what it
    proposes comes from ``NodeCore.suspect`` (a query, so a peer heard again is no
    longer suspected)."""
    name: str
    view: int


@dataclasses.dataclass(frozen=True)
class Halt:
    """This node is stale: it releases nothing more. ``rejoin``: start again as idle."""
    why: str
    rejoin: bool = False


@dataclasses.dataclass(frozen=True)
class StopRun:
    why: str


@dataclasses.dataclass(frozen=True)
class StopSoon:
    """The log waits for the next stop, which must come soon."""


@dataclasses.dataclass(frozen=True)
class StartTransfer:
    """Managed primary: snapshot at the next stop and send it to ``to``."""
    to: str


@dataclasses.dataclass(frozen=True)
class Connect:
    """Send to node ``name`` from now on (the shell knows its address)."""
    name: str


@dataclasses.dataclass(frozen=True)
class GoLive:
    """Backup that won the claim: it is primary of ``view`` now; the shell takes over
    recording and then steps ``Recording``. Guest time carries on from the old
    primary's clock offset corrected by the host clock offset (core.go_live_offset)."""
    view: int
    skew_ns: int | None = 0         # None: no round trip gave an estimate yet (taken as 0)
    primary_offset_ns: int = 0


@dataclasses.dataclass(frozen=True)
class Say:
    text: str


@dataclasses.dataclass(frozen=True)
class Wake:
    """Threads waiting on the protocol's state should look again."""


class NodeCore:
    def __init__(self, name: str, role: str, view: int, peer: str | None, timing: Timing | None = None,
                 now: int = 0, managed: bool = False, pid: int = 0, net: bool = False):
        self.name = name
        self.t = timing or Timing()
        self.managed = managed
        # Arbitrated: views change by the node's own compare-and-swap proposals in a
        # consensus store (etcd), so failure detection stays here, on the channel:
        # a silent peer is suspected (Suspect, then ``suspect``) and the store decides.
        self.arbitrated = False
        self.pid = pid
        self.net = net                  # the observer runs a network front end
        self.started = now
        self.role = role
        self.view = view
        self.peer = peer
        self.protected = peer is not None and role in (PRIMARY, BACKUP)
        self.halted = None
        self.stop_requested = False
        self.stop_after_exit = False    # a STOP came after this node sent the guest's exit
        self.observer_gone = False
        self.stale = 0                  # messages refused by the fence
        self.gaps = 0                   # log messages that skipped ahead (one was lost)
        self.failovers = 0
        self.claiming = None            # a view this node asked the test-and-set for
        self._reset_peer(now)
        self.gate = core.OutputGate(self.t.gate_bytes)
        self.lag = core.LagTracker()
        # primary: the log, as record counts
        self.logged = self.sent = self.acked = 0
        self.unacked_bytes = 0
        self.primary_blocks = 0
        self.log_sent_at = -(1 << 62)
        self.recording = False
        self.transferring = False
        self.transfer_k = None
        self.net_marks = []             # (log records, network events in the guest by then)
        self.net_safe = 0               # network events the backup has in its log
        # backup
        self.received = 0
        self.log_clock = 0              # the primary's clock in its latest log message
        self.failover = False
        self.primary_tsc_offset = None  # the primary's guest-time offset, from its latest log message
        # observer link
        self.console = OffsetSender()
        self.netout = OffsetSender()
        self.exit_msg = None
        self.resent_at = 0
        self.hello_at = -(1 << 62)
        self.hello_detail = ""
        self.input = OffsetReceiver()
        self.netin = OffsetReceiver()
        self.observer_seen = None
        # managed
        self.vs_ok_ns = -(1 << 62)
        self.vs_view = (0, None, None)
        self.acked_view = 0
        self.ready = False
        self.from_start = False         # managed backup of view 1: follows the log from record 0
        self.silent_backup = None       # managed primary: the backup it cannot hear (told to the service)
        self.transfer_done = False
        self.sync_point = 0             # managed: records a new backup must have before it counts as ready
        self.logged_view = 0

    # --- the one entry point -------------------------------------------------------------------
    def step(self, ev, now: int) -> list:
        out = []
        if isinstance(ev, Recv):
            self._recv(ev, now, out)
        elif isinstance(ev, Tick):
            self._tick(now, out)
        elif isinstance(ev, AtStop):
            self._at_stop(ev, now, out)
        elif isinstance(ev, Hold):
            self._hold(ev, now, out)
        elif isinstance(ev, Claimed):
            self._claimed(ev, now, out)
        elif isinstance(ev, Recording):
            self._recording(ev, now, out)
        elif isinstance(ev, ViewReply):
            self._view_reply(ev, now, out)
        elif isinstance(ev, TransferStarted):
            self._transfer_started(ev, now, out)
        elif isinstance(ev, TransferDone):
            self.received = ev.k
            self.transfer_done = True
            out.append(SendAck(self.peer, self.view, self.received, self.log_clock))
            self._check_ready()
        else:
            raise AssertionError(f"unknown event {ev!r}")
        return out

    # --- queries ---------------------------------------------------------------------------------
    def lease_fresh(self, now: int) -> bool:
        """May this primary release now? With a backup: the backup echoed a heartbeat we
        sent less than the lease ago (judged on our own clock only, so a frozen and
        resumed primary, or queued messages, cannot renew it). Managed and alone: the
        view service answered less than its lease ago."""
        if self.role != PRIMARY or self.halted:
            return False
        if self.protected:
            return now - self.lease_from < self.t.lease_ns
        if self.managed:
            return now - self.vs_ok_ns < self.t.vs_lease_ns
        return True

    def must_wait(self, now: int) -> bool:
        """Flow control, asked by the primary's emulation thread at a stop (and again
        while it waits): the backup may trail by at most max_lag of guest progress, and
        held output and unacknowledged log are bounded."""
        if not (self.role == PRIMARY and self.protected) or self.halted or self.stop_requested:
            return False
        self.lag.primary_at(now, self.primary_blocks)
        return (self.lag.lag_ns(now, self.backup_blocks) > self.t.max_lag_ns or self.gate.full()
                or self.unacked_bytes > self.t.unacked_bytes)

    def may_write_disk(self, now: int) -> bool:
        return self.lease_fresh(now)

    def _check_ready(self):
        """Managed backup: up to date (the view service may promote it) once it has the
        state and every record the primary had when it counted it as its backup."""
        if self.managed and self.role == BACKUP and self.transfer_done and 0 < self.sync_point <= self.received:
            self.ready = True

    # --- role changes ------------------------------------------------------------------------------
    def become_primary(self, view: int, peer: str | None, now: int, out: list, detail: str = ""):
        was = self.role
        self.role, self.view, self.peer = PRIMARY, view, peer
        self.recording = False          # until the shell has the guest recording again
        self.hello_detail = detail or f"went live in view {view}"
        self.protected = peer is not None and not self.managed
        self.failover = False
        self.claiming = None
        skew = self.skew
        self._reset_peer(now)
        self.skew = skew                # the old primary's clock offset stays on record (status)
        if was == BACKUP:
            self.failovers += 1
            self.logged = self.sent = self.acked = self.received
        self.gate.held.clear()
        self.gate.held_bytes = 0
        out.append(Wake())

    def become_backup(self, view: int, primary: str, now: int, out: list):
        self.role, self.view, self.peer = BACKUP, view, primary
        self.protected = True
        self.failover = False
        self._reset_peer(now)
        out.append(Connect(primary))
        out.append(Wake())

    def become_idle(self, why: str, out: list):
        """Stale: named in no role any more. Release nothing, start again as idle."""
        self._halt(why, out, rejoin=True)

    def _halt(self, why: str, out: list, rejoin: bool = False):
        self.halted = why
        self.role = HALTED
        self.gate.held.clear()
        self.gate.held_bytes = 0
        out.append(Halt(why, rejoin))
        out.append(Wake())

    def _reset_peer(self, now: int):
        self.watch = core.FailureDetector(self.t.fail_timeout_ns, self.t.hb_interval_ns)
        self.skew = core.ClockSkew()
        self.peer_clock = (0, 0)
        self.lease_from = -(1 << 62)
        self.backup_blocks = self.backup_records = self.backup_disk_reads = 0
        self.last_ack_progress = now
        self.watch_started = now
        self.suspect_sent = False

    # --- messages --------------------------------------------------------------------------------
    def _recv(self, m: Recv, now: int, out: list):
        if m.sender == OBSERVER:
            return self._from_observer(m, now, out)
        # The fence: only the peer of our current view counts. Everything else (a
        # stale primary, an old backup, a node of another view) is counted and dropped.
        if self.peer is None or m.sender != self.peer or m.view != self.view or self.halted:
            self.stale += 1
            return
        if m.type == HEARTBEAT:
            echo, held, _role = m.payload[:3]
            if len(m.payload) > 3 and self.role == BACKUP:
                self.sync_point = max(self.sync_point, m.payload[3])
                self._check_ready()
            if 0 < echo <= now:
                self.lease_from = max(self.lease_from, echo)
            self.skew.sample(now, m.seq, echo, held)
            self.watch.heard(now, m.seq, self.skew.estimate_ns)
            self.peer_clock = (m.seq, now)
            if self.transferring and self.role == PRIMARY:
                out.append(Wake())
        elif m.type == ACK and self.role == PRIMARY:
            self.watch.heard(now)
            if self.transferring:
                if m.seq < self.transfer_k:
                    return
                self.transferring = False
                self.protected = True
                # Output went out unprotected during the transfer (under the view
                # service's lease), covered by records the new backup lacks: send them
                # now, and it may not count as up to date (be promoted) before it has them.
                self.acked = self.transfer_k
                self.sync_point = self.logged
                if self.logged > self.transfer_k:
                    out.append(SendLog(self.peer, self.view, self.transfer_k, self.logged, now))
                self.sent = self.logged
                self.log_sent_at = now
                self.last_ack_progress = now
                out.append(Say(f"backup {self.peer} has the state after "
                               f"{(now - self.transfer_started) / 1e6:.0f} ms: protected again"))
            if m.seq > self.acked:
                if m.seq > self.logged:
                    self.stale += 1         # acknowledges records never logged: not our backup's
                    return
                self.acked = m.seq
                if self.acked >= self.logged:
                    # Nothing unacknowledged: the byte count from the last stop is stale
                    # (flow control waiting on it would wait for a stop that never comes).
                    self.unacked_bytes = 0
                while self.net_marks and self.net_marks[0][0] <= m.seq:
                    self.net_safe = max(self.net_safe, self.net_marks.pop(0)[1])
                self.last_ack_progress = now
                out.append(Trim(m.seq))
            self.backup_blocks, self.backup_records = m.payload[:2]
            if len(m.payload) > 2:
                self.backup_disk_reads = m.payload[2]
            if len(m.payload) > 3 and 0 < m.payload[3] <= now:
                # The backup echoes the clock of our latest log message it has: like a
                # heartbeat's echo, that renews the lease, at every acknowledgement.
                self.lease_from = max(self.lease_from, m.payload[3])
            self._release(now, out)
            out.append(Wake())
        elif m.type == LOG and self.role == BACKUP and not self.failover:
            self.watch.heard(now)
            frames, _count, primary_blocks, tsc_offset = m.payload[:4]
            if len(m.payload) > 4:
                self.log_clock = max(self.log_clock, m.payload[4])
            self.primary_tsc_offset = tsc_offset
            self.primary_blocks = primary_blocks
            if m.seq > self.received:
                self.gaps += 1           # an earlier message was lost: wait for the retransmission
                return
            new = frames[self.received - m.seq:]     # a run of frames: sliced, not copied
            if new:
                first = self.received
                self.received += len(new)
                # Acknowledge first: the Output Rule waits on this, not on our disk.
                out.append(SendAck(self.peer, self.view, self.received, self.log_clock))
                out.append(AppendLog(first, new))
                self._check_ready()
        else:
            self.stale += 1

    def _from_observer(self, m: Recv, now: int, out: list):
        self.observer_seen = now
        if m.type == STOP:
            self.stop_requested = True
            if self.exit_msg is not None:
                # The observer stops resending STOP once it has the exit, then says STOP
                # to every node: this one (or a late resend, with the EXIT on its way).
                self.stop_after_exit = True
            out.append(StopRun("the observer said stop"))
            out.append(Wake())
        elif m.type == CONFIRM:
            self.console.confirm(m.seq)
            if m.payload is not None:
                self.netout.confirm(m.payload)
        elif m.type in (INPUT, NETIN):
            # Only the primary takes client input and network events, each exactly once.
            if self.role != PRIMARY or not self.recording:
                self.stale += 1
                return
            if m.type == NETIN:
                fresh = self.netin.accept(m.seq, m.payload)
                if fresh:
                    out.append(PushNet(fresh))
            elif m.payload is None:
                if m.seq == self.input.received:
                    out.append(PushInput(None))
            else:
                fresh = self.input.accept(m.seq, m.payload)
                if fresh:
                    out.append(PushInput(fresh))
        else:
            self.stale += 1

    # --- timer -------------------------------------------------------------------------------------
    def _tick(self, now: int, out: list):
        self.watch.tick(now)
        if self.peer and self.protected and self.role in (PRIMARY, BACKUP) and not self.halted:
            echo_clock, echo_at = self.peer_clock
            hb = [echo_clock, now - echo_at if echo_at else 0, self.role]
            if self.role == PRIMARY and self.managed:
                hb.append(self.sync_point)
            out.append(Send(self.peer, HEARTBEAT, self.view, now, hb))
            if self.role == BACKUP and not self.failover:
                out.append(SendAck(self.peer, self.view, self.received, self.log_clock))
        if self.role == PRIMARY and self.protected:
            self._retransmit(now, out)
            if self.claiming is None and self.watch.dead(now, self.watch_started, self.t.startup_grace_ns):
                self._backup_lost(now, out)
        elif self.role == BACKUP and self.protected and not self.failover and (self.arbitrated or not self.managed):
            if self.watch.dead(now, self.watch_started, self.t.startup_grace_ns):
                if self.arbitrated:
                    self._suspect(out)
                else:
                    self._primary_lost(now, out)
        if self.role == PRIMARY:
            self._release(now, out)
            if self.recording and now - self.hello_at > HELLO_EVERY_NS:
                self._hello(now, out)
            if (self.console.pieces or self.netout.pieces or self.exit_msg) and now - self.resent_at > RESEND_EVERY_NS:
                # The observer has not confirmed: send again (it drops duplicates).
                self.resent_at = now
                for off, data in self.console.unconfirmed():
                    out.append(Send(OBSERVER, OUTPUT, self.view, off, data))
                for off, data in self.netout.unconfirmed():
                    out.append(Send(OBSERVER, NETOUT, self.view, off, data))
                if self.exit_msg:
                    out.append(Send(OBSERVER, EXIT, self.view, *self.exit_msg))
        seen = self.observer_seen
        if not self.stop_requested and (now - seen > OBSERVER_GONE_NS if seen is not None
                                        else now - self.started > 6 * OBSERVER_GONE_NS):
            self.stop_requested = self.observer_gone = True
            out.append(StopRun(f"no word from the observer for {(now - (seen or self.started)) // 10**9} s"))
            out.append(Wake())

    def _retransmit(self, now: int, out: list):
        """Records not acknowledged within retransmit_ns go again, from the first the
        backup lacks up to everything logged: records a stop held back to batch are
        included, so a backup can always catch up (flow control waits on it)."""
        if self.transferring or self.acked >= self.logged:
            return
        if now - self.last_ack_progress > self.t.retransmit_ns:
            out.append(SendLog(self.peer, self.view, self.acked, self.logged, now))
            self.sent = self.logged
            self.log_sent_at = now
            self.last_ack_progress = now

    def _backup_lost(self, now: int, out: list):
        if self.arbitrated:
            # No unprotected release until the store has a view without this backup:
            # it may be alive, cut off from us only, and about to be promoted. The
            # lease (its echoes) runs out meanwhile, so nothing is released.
            self._suspect(out)
            return
        if self.managed:
            # The view service decides who replaces it; meanwhile run unprotected,
            # releasing output only under the service's lease.
            # Nothing leaves until the service names another backup (or none): the
            # silent one is still in the view, and the service may promote it.
            out.append(Say(f"backup {self.peer} is silent: holding output until the view service replaces it"))
            self.protected = False
            self.silent_backup = self.peer
            return
        # The pair: race the backup for the next view. Winning means carrying on
        # unprotected; losing means the backup went live and this node is stale.
        self.claiming = self.view + 1
        self.silent_at_claim = self.watch.silent_ns(now)
        out.append(Claim(self.view + 1))

    def _suspect(self, out: list):
        if not self.suspect_sent:
            self.suspect_sent = True
            out.append(Suspect(self.peer, self.view))
            out.append(Say(f"{self.peer} is silent on the channel: asking the coordinator for a new view"))

    def suspect(self, now: int):
        """Arbitrated: the peer the channel says is dead now, or None."""
        if not self.arbitrated or self.halted or self.peer is None or self.role not in (PRIMARY, BACKUP):
            return None
        if self.role == PRIMARY and not self.protected:
            return None             # no backup to watch yet (a state transfer is under way)
        if self.failover:
            return None
        return self.peer if self.watch.dead(now, self.watch_started, self.t.startup_grace_ns) else None

    def _primary_lost(self, now: int, out: list):
        self.failover = True
        self.claiming = self.view + 1
        out.append(Failover(self.watch.last_ns if self.watch.last_ns is not None else self.started, self.view + 1))
        out.append(Wake())

    def _claimed(self, ev: Claimed, now: int, out: list):
        if ev.view != self.claiming and not (self.managed and self.role == BACKUP and self.failover):
            return
        if self.role == PRIMARY:
            if not ev.won:
                self._halt(f"lost the test-and-set for view {ev.view}: this primary is stale", out)
                return
            self.view = ev.view
            self.protected = False
            self.claiming = None
            self.failovers += 1
            self.acked = self.sent = self.logged
            out.append(Trim(self.logged))
            out.append(Say(f"backup {self.peer} is gone (silent {(self.silent_at_claim or 0) // MS} ms): "
                           f"running UNPROTECTED as primary of view {self.view}"))
            self.hello_detail = f"backup lost; unprotected in view {self.view}"
            self._hello(now, out)
            self._release(now, out)
            out.append(Wake())
        elif self.role == BACKUP:
            if not ev.won:
                self._halt(f"lost the test-and-set for view {ev.view}: the primary carries on", out)
                return
            skew_ns, offset_ns = self.skew.estimate_ns, self.primary_tsc_offset
            self.become_primary(ev.view, None, now, out)
            out.append(GoLive(ev.view, skew_ns, offset_ns))

    def _recording(self, ev: Recording, now: int, out: list):
        self.recording = True
        self.input = OffsetReceiver(ev.input_taken)
        self.netin = OffsetReceiver(ev.net_taken)
        if ev.detail:
            self.hello_detail = ev.detail
        self._hello(now, out)
        if self.managed and self.role == PRIMARY and self.vs_view[0] >= self.view:
            self._on_view(now, out)     # the view may already name a backup for this new primary

    def _hello(self, now: int, out: list):
        self.hello_at = now
        out.append(Send(OBSERVER, HELLO, self.view, self.input.received,
                        [self.name, self.role, self.pid, self.hello_detail, self.netin.received, self.net_safe]))

    # --- the primary at a stop ----------------------------------------------------------------------
    def _at_stop(self, ev: AtStop, now: int, out: list):
        if self.halted or self.role != PRIMARY:
            return
        self.logged = ev.logged
        self.primary_blocks = ev.blocks
        self.unacked_bytes = ev.unacked_bytes
        self.lag.primary_at(now, ev.blocks)
        if ev.net_events > self.net_safe and (not self.net_marks or self.net_marks[-1][1] < ev.net_events):
            if self.protected or self.transferring:
                self.net_marks.append((ev.logged, ev.net_events))
            elif not self.managed:
                self.net_safe = ev.net_events      # no backup to wait for
        if self.transferring:
            pass                                   # the log goes once the new backup has the state
        elif self.protected:
            if self.logged > self.sent:
                # Send now when anything waits on the backup: held output, the guest
                # about to sleep, or flow control (which waits for acknowledgements
                # of these very records).
                waiting = bool(self.gate.held) or self.must_wait(now)
                if core.send_log_now(ev.unsent_bytes, waiting, ev.guest_waits, now - self.log_sent_at):
                    out.append(SendLog(self.peer, self.view, self.sent, self.logged, now))
                    self.sent = self.logged
                    self.log_sent_at = now
                else:
                    out.append(StopSoon())
        else:
            self.acked = self.sent = self.logged
            out.append(Trim(self.logged))
        self._release(now, out)

    # --- the Output Rule ------------------------------------------------------------------------------
    def _hold(self, ev: Hold, now: int, out: list):
        if ev.stream == "exit":
            self.gate.hold_exit(ev.cover, ev.offset, ev.status, ev.detail, at=now)
        else:
            self.gate.hold(ev.cover, ev.offset, ev.data if ev.data is not None else b"", at=now, stream=ev.stream)
        self._release(now, out)

    def _release(self, now: int, out: list):
        """Let out whatever the Output Rule allows now: held items whose log position the
        backup acknowledged, while this node holds its lease."""
        if self.role != PRIMARY or self.halted:
            return
        fresh = self.lease_fresh(now)
        if not self.protected and not fresh:
            return                       # managed and alone, and the view service's lease ran out
        if self.managed and not self.protected and not self.transferring and self.vs_view[2] is not None:
            return                       # the view still names a backup that lacks the log: wait for a new view
        for h in self.gate.release(self.acked, self.protected, fresh):
            waited = now - h.at
            if h.stream in ("disk", "file"):
                out.append(Deliver(h, waited))
                continue
            if h.stream == "net":
                self.netout.sent(h.offset, h.data)
                out.append(Send(OBSERVER, NETOUT, self.view, h.offset, h.data))
            elif h.data is None:
                self.exit_msg = (h.offset, [h.status, h.detail])
                out.append(Send(OBSERVER, EXIT, self.view, *self.exit_msg))
            else:
                self.console.sent(h.offset, h.data)
                out.append(Send(OBSERVER, OUTPUT, self.view, h.offset, h.data))
            self.resent_at = now
            out.append(Released(h, waited))

    # --- managed: views from the view service -----------------------------------------------------------
    def _view_reply(self, ev: ViewReply, now: int, out: list):
        if ev.num < self.vs_view[0]:
            self.stale += 1             # a late answer: views only grow
            return
        self.vs_ok_ns = max(self.vs_ok_ns, min(ev.asked_at, now))
        changed = (ev.num, ev.primary, ev.backup) != self.vs_view
        self.vs_view = (ev.num, ev.primary, ev.backup)
        if changed:
            self._on_view(now, out)
        if self.role == PRIMARY:
            self._release(now, out)
        out.append(Wake())

    def _on_view(self, now: int, out: list):
        num, primary, backup = self.vs_view
        me = self.name
        if self.halted:
            return
        if self.role == PRIMARY:
            if primary != me:
                self.become_idle(f"the view service made {primary} primary of view {num}", out)
                return
            self.view = num
            if backup != self.silent_backup:
                self.silent_backup = None
            if backup != self.peer:
                self.protected = False
                self.transferring = False
                self.peer = backup
                self._reset_peer(now)
                if backup is not None:
                    out.append(Connect(backup))
                    out.append(StartTransfer(backup))
                    out.append(Say(f"view {num}: {backup} is the new backup; state transfer starts"))
            self.acked_view = num
        elif self.role == BACKUP:
            if primary == me:
                if not self.failover:
                    self.failover = True
                    self.claiming = num
                    out.append(Failover(self.watch.last_ns if self.watch.last_ns is not None else now, num))
                # Not acknowledged until this node has won the go-live and records (then
                # _recording acknowledges it): the coordinator moves on only after the
                # primary's word, and a view made meanwhile (the idle node added as
                # backup) changed etcd's view key under the go-live transaction, which
                # then lost: the new primary halted and the run had none.
                return
            elif backup != me:
                self.become_idle(f"view {num} no longer has this node as backup", out)
                return
            elif num != self.view:
                # The service changes a view only to change its primary or backup: a
                # later view naming this node backup again came after one without it,
                # in which the primary released output this node does not have.
                self.become_idle(f"view {num} names this node backup again after a view without it", out)
                return
            self.acked_view = num
        elif self.role == IDLE:
            if primary == me and num == 1:
                self.role = PRIMARY
                self.view = num
                self.protected = False
                if backup is not None:
                    # The first view has a backup: like a pair, it follows the log from
                    # the first record and nothing leaves before it has it.
                    self.peer = backup
                    self._reset_peer(now)
                    self.protected = True
                    out.append(Connect(backup))
                out.append(GoLive(num))         # start the guest afresh
            elif backup == me and num == 1:
                self.become_backup(num, primary, now, out)
                # Up to date from the start: every record the primary releases output
                # on, this node has acknowledged (and with none, nothing was released).
                self.from_start = self.transfer_done = self.ready = True
                out.append(Say(f"view {num}: backup of {primary} from the first record"))
            elif backup == me:
                self.become_backup(num, primary, now, out)
                out.append(Say(f"view {num}: backup of {primary}; waiting for the state transfer"))
            self.acked_view = num

    def _transfer_started(self, ev: TransferStarted, now: int, out: list):
        self.transferring = True
        self.transfer_k = ev.k
        self.transfer_started = now
        self.logged = self.sent = self.acked = ev.k
        out.append(Trim(ev.k))


# --- the observer ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Write:
    """Console bytes for the observer's stdout, exactly once and in order."""
    data: bytes


@dataclasses.dataclass(frozen=True)
class NetWrite:
    """Network output stream bytes for the front end, from ``offset`` on, new ones only."""
    offset: int
    data: bytes


@dataclasses.dataclass(frozen=True)
class Ended:
    status: int
    node: str
    detail: str


@dataclasses.dataclass(frozen=True)
class Announced:
    """A node announced itself primary of a view (for the observer's report)."""
    node: str
    view: int
    detail: str
    new_primary: bool


NET_CONFIRM_BYTES = 256 << 10
GAP_SAY_NS = 5_000_000_000     # output past a gap this long, the gap unfilled: the observer says so


class ObserverCore:
    def __init__(self, members, front: bool = False):
        self.members = set(members)
        self.front = front
        self.view = 0
        self.primary = None
        self.console = OffsetReceiver()
        self.seen = bytearray()         # everything delivered, to check re-sends against
        self.conflicts = 0
        self.stale = 0
        self.exit = None                # (status, total, detail, node)
        self.input = bytearray()
        self.input_eof = False
        self.net_in = []                # network events from index net_base on, kept until replicated
        self.net_base = 0
        self.netout = OffsetReceiver()
        self.net_confirm_sent = 0
        self.gap = None                 # (offset, since, said): output came past offset, none at it

    @property
    def delivered(self):
        return self.console.received

    @property
    def duplicates(self):
        return self.console.duplicates + self.netout.duplicates

    def finished(self) -> bool:
        return self.exit is not None and self.console.received >= self.exit[1]

    def step(self, ev, now: int) -> list:
        out = []
        if isinstance(ev, Recv):
            self._recv(ev, out)
            self._watch_gap(now, out)
        elif isinstance(ev, Tick):
            self._confirm(out)
            self._watch_gap(now, out)
        elif isinstance(ev, StdinData):
            self._stdin(ev, out)
        elif isinstance(ev, NetEvents):
            self._net_events(ev, out)
        else:
            raise AssertionError(f"unknown event {ev!r}")
        return out

    def _recv(self, m: Recv, out: list):
        if m.sender not in self.members:
            self.stale += 1
            return
        if m.type == HELLO:
            return self._hello(m, out)
        if m.type == OUTPUT:
            self._check_conflict(m, out)
        # The fence: a node of an older view is a stale primary; never let it through.
        if m.view < self.view:
            self.stale += 1
            return
        if self.view == 0 and m.type in (OUTPUT, NETOUT, EXIT):
            # Output before any announcement (the primary's re-announcement comes every
            # HELLO_EVERY_NS; an observer started late can take output first): only a
            # primary sends it, so the primary and its view are known. Without this, a
            # failover soon after would not be reported as one.
            self.view, self.primary = m.view, m.sender
        if m.type == OUTPUT:
            fresh = self.console.accept(m.seq, m.payload)
            if fresh:
                self.seen += fresh
                out.append(Write(bytes(fresh)))
                self._confirm(out)
        elif m.type == NETOUT:
            if not self.front:
                return
            fresh = self.netout.accept(m.seq, m.payload)
            if fresh:
                out.append(NetWrite(self.netout.received - len(fresh), bytes(fresh)))
                if self.netout.received - self.net_confirm_sent >= NET_CONFIRM_BYTES:
                    self._confirm(out)
            else:
                self._confirm(out)      # a re-send: tell the sender at once
        elif m.type == EXIT:
            status, detail = m.payload
            if self.exit is None:
                self.exit = (status, m.seq, detail, m.sender)
            self._confirm(out)
        else:
            self.stale += 1
            return
        if self.finished():
            out.append(Ended(self.exit[0], self.exit[3], self.exit[2]))

    def _watch_gap(self, now: int, out: list):
        """Output kept past a gap that nobody fills is a stall a person should hear of
        (once per gap), not a silent wait: the primary's output begins past what was
        delivered."""
        early = self.console.early
        if not early:
            self.gap = None
            return
        if self.gap is None or self.gap[0] != self.console.received:
            self.gap = (self.console.received, now, False)
            return
        at, since, said = self.gap
        if not said and now - since >= GAP_SAY_NS:
            self.gap = (at, since, True)
            out.append(Say(f"stalled: {(now - since) // 1_000_000_000} s with output from offset {min(early)} on "
                           f"but none at offset {at}, where delivery stands (primary {self.primary}, view "
                           f"{self.view}); nobody has sent the bytes between"))

    def _hello(self, m: Recv, out: list):
        node, role = m.sender, m.payload[1]
        detail = m.payload[3]
        if role != PRIMARY or m.view < self.view:
            return
        if self.view > 0 and (node != self.primary or m.view > self.view):
            out.append(Announced(node, m.view, detail, node != self.primary))
        self.view, self.primary = m.view, node
        self._send_input_from(m.seq, out)
        if len(m.payload) > 5 and m.payload[5] > self.net_base:
            # The primary says its backup has the events before this index: no future
            # primary can need them again.
            drop = min(m.payload[5], self.net_base + len(self.net_in)) - self.net_base
            del self.net_in[:drop]
            self.net_base += drop
        if len(m.payload) > 4:
            self._send_net_from(m.payload[4], out)

    def _check_conflict(self, m: Recv, out: list):
        """Two nodes must never release different output under the same offsets (split
        brain would). Compare with what was delivered."""
        lo, hi = m.seq, min(m.seq + len(m.payload), self.console.received)
        if lo < hi and self.seen[lo:hi] != m.payload[:hi - lo]:
            self.conflicts += 1
            out.append(Say(f"CONFLICT: node {m.sender} (view {m.view}) released bytes {lo}..{hi} that differ "
                           f"from what was delivered"))

    def _confirm(self, out: list):
        self.net_confirm_sent = self.netout.received
        for n in sorted(self.members):
            out.append(Send(n, CONFIRM, self.view, self.console.received,
                            self.netout.received if self.front else None))

    def _send_input_from(self, offset: int, out: list):
        if self.primary is None:
            return
        off = max(0, offset)
        chunk = 1 << 16
        while off < len(self.input):
            data = bytes(self.input[off:off + chunk])
            out.append(Send(self.primary, INPUT, self.view, off, data))
            off += len(data)
        if self.input_eof:
            out.append(Send(self.primary, INPUT, self.view, len(self.input), None))

    def _stdin(self, ev, out: list):
        off = len(self.input)
        if ev.data:
            self.input += ev.data
        else:
            self.input_eof = True
        if self.primary is not None:
            out.append(Send(self.primary, INPUT, self.view, off, ev.data or None))

    def _net_events(self, ev, out: list):
        first = self.net_base + len(self.net_in)
        self.net_in.extend([c, t, d] for c, t, d in ev.events)
        if self.primary is not None:
            out.append(Send(self.primary, NETIN, self.view, first, [[c, t, d] for c, t, d in ev.events]))

    def _send_net_from(self, index: int, out: list):
        end = self.net_base + len(self.net_in)
        if self.primary is None or index >= end:
            return
        if index < self.net_base:
            out.append(Say(f"a primary wants network events from {index}, but events before {self.net_base} "
                           f"were dropped as replicated; it cannot be served correctly"))
            index = self.net_base
        i = index
        while i < end:
            batch, size = [], 0
            while i + len(batch) < end and size < (1 << 20):
                e = self.net_in[i - self.net_base + len(batch)]
                batch.append(e)
                size += len(e[2]) + 16
            out.append(Send(self.primary, NETIN, self.view, i, batch))
            i += len(batch)


@dataclasses.dataclass(frozen=True)
class StdinData:
    data: bytes                 # b"": end of input


@dataclasses.dataclass(frozen=True)
class NetEvents:
    events: list
