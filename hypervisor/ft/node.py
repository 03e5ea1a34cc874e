"""A fault-tolerant node: the primary records and streams its log to the backup, which
replays it as a hot standby and goes live when the primary dies.

Threads: the main thread runs the guest (recording or replaying); the I/O thread of
the transport handles every message and the timers (heartbeats, failure detection,
retransmission, status). They share the state below under ``self.lock``.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
import threading
import time

from logging_channel import messages as M
from logging_channel import records as R
from logging_channel.logfile import LogWriter
from shared_disk.arbiter import Arbiter

from ..console import Console
from ..errors import FtvmError
from ..machine import Config
from ..record import Recorder
from ..replay import Replayer, StreamSource
from ..sources.interrupts import HostEvents
from ..uc import lib
from . import core
from .transport import Endpoint

BACKUP_NICE = 10                    # a backup's replaying thread, as root (Node.replay_priority)
OBSERVER_GONE_NS = 10_000_000_000   # no word from the observer this long: the run is over
EXIT_STALE = 9          # this node learned it is stale (lost the test-and-set) and halted
NODE_IDS = {}


def node_id(name: str) -> int:
    return sum(name.encode()) & 0xFFFF


# Test hook (FTVM_TEST_CLOCK_SKEW_NS_<node name>): make this node's clock disagree with
# its peer's, as two hosts' clocks do. Guest time and every clock of the node move with it.
_SKEW_NS = 0


def now_ns() -> int:
    return time.monotonic_ns() + _SKEW_NS


@dataclasses.dataclass
class FtOptions:
    hb_interval_ms: int = 20        # heartbeats, both ways
    fail_timeout_ms: int = 150      # a peer silent this long is dead
    startup_grace_ms: int = 5000    # how long a primary waits for its backup to appear
    max_lag_ms: int = 100           # the primary slows down when the backup trails more
    gate_bytes: int = 1 << 20       # console output held at most
    unacked_bytes: int = 64 << 20   # log not yet acknowledged, at most
    retransmit_ms: int = 50         # resend unacknowledged log after this long

    def to_args(self):
        return ["--hb-interval-ms", str(self.hb_interval_ms), "--fail-timeout-ms", str(self.fail_timeout_ms),
                "--max-lag-ms", str(self.max_lag_ms)]


class Halted(FtvmError):
    """This node found it is stale: another node holds a newer view. It stops at once
    and releases nothing more."""
    exit_status = EXIT_STALE


class Stopped(Exception):
    """The run is over for this node (the observer said stop, or went away)."""


class FtSink:
    """The primary's log: each record goes to the local file and is kept until the
    backup acknowledges it."""

    def __init__(self, writer: LogWriter):
        self.writer = writer
        self.records = writer.records
        self.frames = []            # frames from index `base` on, not yet acknowledged
        self.base = writer.records
        self.sent = writer.records  # frames before this index have been sent once
        self.bytes = 0

    def append(self, rec):
        frame = R.encode(rec)
        self.writer.append_frames(frame, 1)
        self.frames.append(frame)
        self.bytes += len(frame)
        self.records += 1

    def flush(self):
        self.writer.flush()

    def unsent_bytes(self):
        return sum(len(f) for f in self.frames[max(0, self.sent - self.base):])

    def acked(self, n):
        drop = min(max(0, n - self.base), len(self.frames))
        if drop:
            self.bytes -= sum(len(f) for f in self.frames[:drop])
            del self.frames[:drop]
            self.base += drop

    def frames_from(self, index, max_bytes=8 << 20):
        out, size = [], 0
        for f in self.frames[max(0, index - self.base):]:
            if out and size + len(f) > max_bytes:
                break
            out.append(f)
            size += len(f)
        return out


class Node:
    def __init__(self, name, role, listen, peer, observer, shared_dir, run_dir, log_path,
                 guest=None, view=1, opts: FtOptions | None = None, peer_name=None, disk=None, disk_reads="log",
                 net=False):
        self.name, self.role, self.view = name, role, view
        self.id = node_id(name)
        self.peer_name = peer_name or ("B" if name == "A" else "A")
        self.opts = opts or FtOptions()
        self.run_dir = run_dir
        self.log_path = log_path
        self.guest = guest
        self.disk_path = disk           # the disk image on shared storage (None: no disk)
        self.disk_reads = disk_reads
        self.net = net                  # the observer runs a network front end
        self.net_received = 0           # network events taken from the front end (their index)
        self.observer_net_confirmed = 0
        self.unconfirmed_net = []       # released network output the front end has not confirmed
        self.file_released = set()      # data-directory changes the Output Rule let go
        self.disk_worker = None
        self.backup_disk_reads = 0      # disk read completions the backup has replayed
        self.net_marks = collections.deque()   # (log records, network events in the guest by then)
        self.net_safe = 0               # network events the backup has in its log (the front end may forget them)
        self.arbiter = Arbiter(shared_dir)
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.started = now_ns()
        self.watch = core.PeerWatch(self.opts.fail_timeout_ms * 1_000_000)
        self.skew = core.ClockSkew()
        self.lag = core.LagTracker()
        self.gate = core.OutputGate(self.opts.gate_bytes)
        self.protected = peer is not None
        self.peer_clock = (0, 0)        # (peer's clock in its last heartbeat, our time then)
        self.lease_from = 0             # our clock when we last sent something the backup has seen
        self.acked = 0
        self.backup_blocks = 0
        self.backup_records = 0
        self.last_ack_progress = now_ns()
        self.observer_confirmed = 0
        self.input_received = 0
        self.host = None                # HostEvents of the recording guest
        self.sink = None
        self.machine = None
        self.failovers = 0
        self.stale = 0                  # messages refused: wrong view or sender (fencing)
        self.gaps = 0                   # log messages that skipped ahead (one was lost)
        self.halted = None
        self.failover = False
        self.primary_tsc_offset = 0
        self.primary_blocks = 0
        self.received = 0               # backup: records received from the primary
        self.stream = StreamSource()
        self.writer = LogWriter(log_path)
        self.done = False
        self.managed = False            # roles come from the view service (managed.py)
        self.transferring = False       # a state transfer to a new backup is under way
        self.stop_requested = False
        self.observer_seen_ns = None    # the observer confirms every 50 ms while it lives
        self.status_at = 0
        self.events = []
        self.ep = Endpoint(listen, self._on_message, self._on_tick, tick_s=self.opts.hb_interval_ms / 1000)
        if peer:
            self.ep.connect(self.peer_name, peer)
        self.ep.connect("observer", observer, immediate=False)
        self.unconfirmed = []           # released output the observer has not confirmed
        self.exit_msg = None
        self.last_release_unix = None
        self._rate_mark = (0, 0)
        self.after_stop_ns = 0          # time the emulation thread spent handing over at stops
        self.paced_ns = 0               # time the primary waited for the backup (flow control)
        self.rule_ns = []               # what the Output Rule added to each output (held -> released)
        self.resent_at = 0
        self.log_sent_at = 0            # when the emulation thread last sent log to the backup
        self.hello_at = 0
        self.hello_detail = ""
        self.main_tid = None            # the thread that records or replays the guest

    # --- small helpers --------------------------------------------------------------
    def say(self, msg):
        print(f"ftvm[{self.name}]: {msg}", file=sys.stderr, flush=True)

    def send_peer(self, type_, seq, payload=None):
        self.ep.send(self.peer_name, M.encode(type_, self.id, self.view, seq, payload))

    def send_observer(self, type_, seq, payload=None):
        self.ep.send("observer", M.encode(type_, self.id, self.view, seq, payload))

    def hello(self, detail=None):
        if detail is not None:
            self.hello_detail = detail
        self.hello_at = now_ns()
        self.send_observer(M.HELLO, self.input_received, [self.name, self.role, os.getpid(), self.hello_detail,
                                                          self.net_received, self.net_safe])

    # --- I/O thread: messages ---------------------------------------------------------
    def _on_message(self, msg):
        with self.lock:
            t = msg.type
            if t in (M.INPUT, M.CONFIRM, M.STOP, M.NETIN):
                return self._from_observer(msg)
            if self.peer_name is None or msg.sender != node_id(self.peer_name):
                self.stale += 1
                return
            if msg.view != self.view:
                self.stale += 1      # fencing: only the peer of our view counts
                return
            now = now_ns()
            if t == M.HEARTBEAT:
                echo, held, _role = msg.payload
                # The peer has heard from us as of our clock `echo`: that renews our lease.
                if 0 < echo <= now:
                    self.lease_from = max(self.lease_from, echo)
                self.skew.sample(now, msg.seq, echo, held)
                self.watch.heard(now, msg.seq, self.skew.estimate_ns)
                self.peer_clock = (msg.seq, now)
            elif t == M.ACK and self.role == "primary":
                self.watch.heard(now)
                if msg.seq > self.acked:
                    self.acked = msg.seq
                    while self.net_marks and self.net_marks[0][0] <= msg.seq:
                        self.net_safe = max(self.net_safe, self.net_marks.popleft()[1])
                    self.last_ack_progress = now
                    if self.sink is not None:
                        self.sink.acked(msg.seq)
                self.backup_blocks, self.backup_records = msg.payload[:2]
                if len(msg.payload) > 2:
                    self.backup_disk_reads = msg.payload[2]
                self._release()
                self.cond.notify_all()
            elif t == M.LOG and self.role == "backup" and not self.failover:
                self.watch.heard(now)
                self._receive_log(msg)
            else:
                self.stale += 1

    def _from_observer(self, msg):
        self.observer_seen_ns = now_ns()
        if msg.type == M.STOP:
            self.stop_requested = True
            self.cond.notify_all()
            if self.machine is not None:
                lib.ftvm_poke(self.machine.cpu)
            return
        if msg.type == M.CONFIRM:
            self.observer_confirmed = max(self.observer_confirmed, msg.seq)
            while self.unconfirmed and self.unconfirmed[0][0] + len(self.unconfirmed[0][1]) <= self.observer_confirmed:
                self.unconfirmed.pop(0)
            if msg.payload is not None:
                self.observer_net_confirmed = max(self.observer_net_confirmed, msg.payload)
                u = self.unconfirmed_net
                while u and u[0][0] + len(u[0][1]) <= self.observer_net_confirmed:
                    u.pop(0)
            return
        if msg.type == M.NETIN:
            # Network events: only the primary takes them (rule 4), each exactly once.
            if self.role != "primary" or self.host is None:
                self.stale += 1
                return
            first, events = msg.seq, msg.payload
            if first > self.net_received or first + len(events) <= self.net_received:
                return           # a gap the front end will fill again, or a duplicate
            fresh = events[self.net_received - first:]
            self.net_received += len(fresh)
            self.host.push_net([tuple(e) for e in fresh])
            return
        # INPUT: only the primary takes client input (rule 4).
        if self.role != "primary" or self.host is None:
            self.stale += 1
            return
        off, data = msg.seq, msg.payload
        if data is None:
            if off == self.input_received:
                self.host.push_input(None)
            return
        if off + len(data) <= self.input_received or off > self.input_received:
            return                   # a duplicate, or a gap the observer will fill again
        fresh = data[self.input_received - off:]
        self.input_received += len(fresh)
        self.host.push_input(fresh)

    def _receive_log(self, msg):
        frames_blob, count, primary_blocks, tsc_offset = msg.payload
        self.primary_tsc_offset = tsc_offset
        self.primary_blocks = primary_blocks
        if msg.seq > self.received:
            self.gaps += 1           # an earlier message was lost: wait for the retransmission
            return
        # Check framing and CRCs only (cheap); the replay thread decodes the bodies.
        frames, off, index = [], 0, msg.seq
        try:
            while off < len(frames_blob):
                R.check_frame(frames_blob, off)
                size = R.FRAME.size + R.FRAME.unpack_from(frames_blob, off)[2]
                if index >= self.received:
                    frames.append(frames_blob[off:off + size])
                off += size
                index += 1
        except R.FrameError:
            self.stale += 1
            return
        if frames:
            self.received += len(frames)
            # Acknowledge first: the Output Rule waits on this, not on our disk.
            blocks = self.machine.cpu.blocks if self.machine is not None else 0
            self.send_peer(M.ACK, self.received, [int(blocks), self.received, self._disk_reads_replayed()])
            self.writer.append_frames(b"".join(frames), len(frames))
            self.stream.push(frames)

    # --- I/O thread: timers ------------------------------------------------------------
    def _on_tick(self):
        with self.lock:
            now = now_ns()
            if self.peer_name and self.protected and self.role in ("primary", "backup"):
                echo_clock, echo_at = self.peer_clock
                self.send_peer(M.HEARTBEAT, now, [echo_clock, now - echo_at if echo_at else 0, self.role])
                if self.role == "backup":
                    blocks = self.machine.cpu.blocks if self.machine is not None else 0
                    self.send_peer(M.ACK, self.received, [int(blocks), self.received, self._disk_reads_replayed()])
            if self.role == "primary" and self.protected:
                self._retransmit(now)
                if self.watch.dead(now, self.started, self.opts.startup_grace_ms * 1_000_000):
                    self._backup_lost(now)
            elif self.role == "backup" and not self.failover:
                if self.watch.dead(now, self.started, self.opts.startup_grace_ms * 1_000_000):
                    self._primary_lost(now)
            if self.role == "primary":
                self._release()
                if now - self.hello_at > 200_000_000:
                    self.hello()
                if (self.unconfirmed or self.exit_msg or self.unconfirmed_net) and now - self.resent_at > 300_000_000:
                    # The observer has not confirmed: send again (it drops duplicates).
                    self.resent_at = now
                    for off, data in self.unconfirmed:
                        self.send_observer(M.OUTPUT, off, data)
                    for off, data in self.unconfirmed_net:
                        self.send_observer(M.NETOUT, off, data)
                    if self.exit_msg:
                        self.send_observer(M.EXIT, *self.exit_msg)
            seen = self.observer_seen_ns
            if not self.stop_requested and (now - seen > OBSERVER_GONE_NS if seen is not None
                                            else now - self.started > 6 * OBSERVER_GONE_NS):
                self.say(f"no word from the observer for {(now - (seen or self.started)) // 10**9} s: stopping")
                self.stop_requested = True
                self.cond.notify_all()
                if self.machine is not None:
                    lib.ftvm_poke(self.machine.cpu)
            if now - self.status_at > 200_000_000:
                self.status_at = now
                self._write_status(now)

    def _primary_lost(self, now):
        """The primary went silent: stop taking its log and take over."""
        self.replay_priority(behind=False)      # catching up is on the failover's path
        self.failover = True
        self.failover_from = self.watch.last_ns or self.started
        self.stream.end()
        if self.machine is not None:
            lib.ftvm_poke(self.machine.cpu)

    def _retransmit(self, now):
        s = self.sink
        if s is None or self.acked >= s.sent:
            return
        if now - self.last_ack_progress > self.opts.retransmit_ms * 1_000_000:
            frames = s.frames_from(self.acked)
            if frames:
                self.send_peer(M.LOG, self.acked, [b"".join(frames), len(frames), int(self.primary_blocks),
                                                   int(self.machine.cpu.tsc_offset_ns)])
            self.last_ack_progress = now

    def _backup_lost(self, now):
        """The backup went silent: race for the next view. Winning means carrying on
        unprotected; losing means the backup went live and this node is stale."""
        won = self.arbiter.claim(self.view + 1, self.name)
        if core.on_lost_contact("primary", won) == "halt":
            self._halt(f"lost the test-and-set for view {self.view + 1} to node "
                       f"{self.arbiter.owner(self.view + 1)}: this primary is stale")
            return
        self.view += 1
        self.protected = False
        self.failovers += 1
        self.say(f"backup {self.peer_name} is gone (silent {self.watch.silent_ns(now) // 1_000_000} ms): "
                 f"running UNPROTECTED as primary of view {self.view}")
        self.hello(f"backup lost; unprotected in view {self.view}")
        self._release()
        self.cond.notify_all()

    def _halt(self, why):
        self.halted = why
        self.role = "halted"
        self.gate.held.clear()
        self.cond.notify_all()
        if self.machine is not None:
            lib.ftvm_poke(self.machine.cpu)

    def _release(self):
        """Send to the observer whatever the Output Rule lets out now."""
        if self.role != "primary":
            return
        now = now_ns()
        # The lease: the backup echoed a heartbeat we sent less than half the failure
        # timeout ago, so it cannot have declared us dead yet. Judged on our own clock
        # only, so a frozen and resumed primary (or queued messages) cannot fool it.
        fresh = now - self.lease_from < self.opts.fail_timeout_ms * 1_000_000 // 2
        protected = self.protected
        for h in self.gate.release(self.acked, protected, fresh):
            if protected and h.at and len(self.rule_ns) < 1_000_000:
                self.rule_ns.append(now - h.at)
            if h.stream == "disk":
                if self.disk_worker is not None:
                    self.disk_worker.release(h.offset)
                continue
            if h.stream == "file":
                self.file_released.add(h.offset)
                self.cond.notify_all()
                continue
            if h.stream == "net":
                self.unconfirmed_net.append((h.offset, h.data))
                self.send_observer(M.NETOUT, h.offset, h.data)
            elif h.data is None:
                self.exit_msg = (h.offset, [h.status, h.detail])
                self.send_observer(M.EXIT, *self.exit_msg)
            else:
                self.unconfirmed.append((h.offset, h.data))
                self.send_observer(M.OUTPUT, h.offset, h.data)
            self.resent_at = now_ns()
            self.last_release_unix = time.time()

    def _status(self, now):
        """This node's status, as `ftvm status` and --progress show it."""
        prev_t, prev_b = self._rate_mark
        rate = (self.writer.bytes - prev_b) / max(1e-9, (now - prev_t) / 1e9) if prev_t else 0.0
        self._rate_mark = (now, self.writer.bytes)
        lag_ms = self.lag.lag_ns(now, self.backup_blocks) / 1e6 if self.role == "primary" and self.protected else None
        ms = self.machine
        return {
            "name": self.name, "pid": os.getpid(), "role": self.role, "view": self.view,
            "protected": self.protected, "lag_ms": lag_ms, "halted": self.halted,
            "log": self.log_path, "log_records": self.sink.records if self.sink else self.received,
            "log_bytes": self.writer.bytes, "log_rate_kbps": rate * 8 / 1000, "acked": self.acked,
            "held_bytes": self.gate.held_bytes, "released_bytes": self.gate.released_bytes,
            "last_release_unix": self.last_release_unix, "output_rule_us": self._rule_stats(),
            "failovers": self.failovers, "clock_offset_us": self.skew.offset_ns / 1000,
            "rtt_us": None if self.skew.rtt_ns is None else self.skew.rtt_ns / 1000,
            "rtt_p50_us": (core.percentile(sorted(r for r, _ in self.skew.samples), 50) or 0) / 1000,
            "garbage": self.ep.garbage, "stale": self.stale, "gaps": self.gaps,
            "io_failure": repr(self.ep.failure) if self.ep.failure else None,
            "observer_seen_s_ago": None if self.observer_seen_ns is None else (now - self.observer_seen_ns) / 1e9,
            "paced_ms": self.paced_ns / 1e6, "after_stop_ms": self.after_stop_ns / 1e6,
            "net_events": int(ms.net.events) if ms is not None else 0,
            "net_out_bytes": int(ms.netout.total) if ms is not None else 0,
            "disk": dict(self.disk_worker.stats, in_flight=len(ms.disk.inflight)) if self.disk_worker and ms else None,
            "blocks": int(ms.cpu.blocks) if ms is not None else 0,
            "stops": int(ms.cpu.hook_stops) if ms is not None else 0,
            "time": time.time(),
        }

    def _write_status(self, now):
        st = self._status(now)
        path = os.path.join(self.run_dir, f"{self.name}.status.json")
        try:
            with open(path + ".tmp", "w") as f:
                json.dump(st, f)
            os.replace(path + ".tmp", path)
        except OSError:
            pass

    def _rule_stats(self):
        v = sorted(self.rule_ns)
        if not v:
            return None
        return {"n": len(v), "p50": core.percentile(v, 50) / 1000, "p99": core.percentile(v, 99) / 1000}

    # --- main thread: the primary's output protocol (Recorder.out) -------------------
    def output(self, offset, data, cover):
        with self.lock:
            self.gate.hold(cover, offset, data, at=now_ns())
            self._release()

    def net_output(self, offset, data, cover):
        with self.lock:
            self.gate.hold(cover, offset, data, at=now_ns(), stream="net")
            self._release()

    def disk_write(self, req_id, cover):
        """A disk write is output too: the host writes only under the Output Rule."""
        with self.lock:
            self.gate.hold(cover, req_id, b"", at=now_ns(), stream="disk")
            self._release()

    def file_output(self, rec):
        """A Linux guest changes its data directory: that is output. Hold the call until
        the backup has the log that covers it (rule 2), then let it go ahead; a node that
        is no longer a primary in its lease changes nothing (it halts)."""
        token = object()
        with self.lock:
            self.gate.hold(rec.sink.records, token, b"", at=now_ns(), stream="file")
            self._release()
        while True:
            self._after_stop(rec)
            with self.lock:
                if token in self.file_released:
                    self.file_released.discard(token)
                    break
                if self.halted:
                    raise Halted(self.halted)
                if self.stop_requested:
                    raise Stopped()
                self.cond.wait(0.002)
        if not self._may_write_disk():
            with self.lock:
                self._halt("no longer a primary in its lease: the data directory is not written")
            raise Halted(self.halted)

    def exit(self, total, status, detail, cover):
        with self.lock:
            self.gate.hold_exit(cover, total, status, detail, at=now_ns())
            self._release()

    def after_stop(self, rec):
        t_in = now_ns()
        try:
            self._after_stop(rec)
        finally:
            self.after_stop_ns += now_ns() - t_in

    def _after_stop(self, rec):
        with self.lock:
            if self.halted:
                raise Halted(self.halted)
            if self.stop_requested:
                if self.role == "primary" and self.machine is not None and rec.m is self.machine \
                        and not getattr(self, "_ending", False):
                    # The run is being stopped (Ctrl-C on the observer): end the log with
                    # an "interrupted" END record, so it replays to the end.
                    self._ending = True
                    self.machine.cpu.signal = 15
                    lib.ftvm_poke(self.machine.cpu)
                    return
                if not getattr(self, "_ending", False):
                    raise Stopped()
                return
            m = self.machine
            now = now_ns()
            self.primary_blocks = int(m.cpu.blocks)
            self.lag.primary_at(now, self.primary_blocks)
            if self.slew is not None:
                m.cpu.tsc_offset_ns -= self.slew.absorb(now)
            s = self.sink
            ev = m.net.events
            if ev > self.net_safe and (not self.net_marks or self.net_marks[-1][1] < ev):
                if self.protected or self.transferring:
                    self.net_marks.append((s.records, ev))
                elif not self.managed:
                    self.net_safe = ev      # no backup to wait for
            if self.protected and s.records > s.sent and not self.transferring and not core.send_log_now(
                    s.unsent_bytes(), bool(self.gate.held), rec.guest_waits, now - self.log_sent_at):
                rec.stop_soon()          # the log waits for the next stop, which comes soon
            elif self.protected and s.records > s.sent:
                self.log_sent_at = now
                frames = s.frames_from(s.sent, max_bytes=1 << 62)
                self.ep.send_direct(self.peer_name, M.encode(
                    M.LOG, self.id, self.view, s.sent,
                    [b"".join(frames), len(frames), self.primary_blocks, int(m.cpu.tsc_offset_ns)]))
                s.sent = s.records
            elif not self.protected and not self.transferring:
                s.acked(s.records)
                s.sent = s.records
            self.confirmed_to_console()
            self._release()
            # Flow control: the backup may trail by at most max_lag_ms of guest progress,
            # and held output and unacknowledged log are bounded.
            limit = self.opts.max_lag_ms * 1_000_000
            t_pace = now_ns()
            while self.protected and not self.halted and not self.stop_requested and (
                    self.lag.lag_ns(now_ns(), self.backup_blocks) > limit or self.gate.full()
                    or s.bytes > self.opts.unacked_bytes):
                self.cond.wait(0.001)
                self.lag.primary_at(now_ns(), self.primary_blocks)
            self.paced_ns += now_ns() - t_pace
            if self.halted:
                raise Halted(self.halted)

    def confirmed_to_console(self):
        if self.machine is not None:
            self.machine.console.confirmed(self.observer_confirmed)
            self.machine.netout.confirmed(self.observer_net_confirmed)

    def machine_config(self):
        """The configuration of a guest this node starts afresh (devices included)."""
        if not self.disk_path:
            return Config()
        from ..sources.disk import open_image
        return Config(disk_sectors=open_image(self.disk_path, None), disk_reads=self.disk_reads)

    def attach_devices(self, rec):
        """The host side of the guest's devices, on a node about to record."""
        if self.net:
            self.host.net_attached = True
        if self.machine.config.disk_sectors:
            if not self.disk_path:
                raise FtvmError("the guest has a disk, but this node was given no --disk image to reach it")
            def setup(worker):
                worker.guard = self._may_write_disk
                if self.machine.config.disk_reads == "shared":
                    worker.before_write = self._wait_reads_replayed
                with self.lock:
                    self.disk_worker = worker
            rec.attach_disk(self.disk_path, setup)

    def _disk_reads_replayed(self):
        m = self.machine
        return int(m.disk.reads_completed) if m is not None else 0

    def _wait_reads_replayed(self, reads_done):
        """Shared-disk reads: before the host writes, the backup must have read (at replay)
        every block the primary read so far, or it would read the newer data."""
        with self.lock:
            while (self.protected and self.role == "primary" and not self.halted and not self.stop_requested
                   and self.backup_disk_reads < reads_done):
                self.cond.wait(0.002)

    def _may_write_disk(self):
        """Checked just before each disk write: only a primary still in its lease writes."""
        if self.role != "primary" or self.halted:
            return False
        return not self.protected or now_ns() - self.lease_from < self.opts.fail_timeout_ms * 1_000_000 // 2

    # --- main thread: roles -----------------------------------------------------------
    def run(self):
        # The I/O thread must get the GIL quickly when a message arrives, or every
        # acknowledgement waits out the emulation thread's 5 ms switch interval.
        sys.setswitchinterval(0.0001)
        self.main_tid = threading.get_native_id()
        global _SKEW_NS
        _SKEW_NS = int(os.environ.get(f"FTVM_TEST_CLOCK_SKEW_NS_{self.name}", "0"))
        lib.ftvm_set_clock_skew(_SKEW_NS)
        self.started = now_ns()
        self.ep.start()
        self.slew = None
        try:
            if self.role == "primary":
                self._run_primary()
            else:
                self._run_backup()
        except Halted as e:
            self.say(f"halting: {e}")
            return EXIT_STALE
        except Stopped:
            self.say("stopped before the guest ended")
        finally:
            self.writer.close()
            with self.lock:
                self._write_status(now_ns())
            self.ep.close()
        return 0

    def _run_primary(self):
        from ..guest import open_guest
        guest = open_guest(self.guest)
        config = self.machine_config()
        self.sink = FtSink(self.writer)
        console = Console()
        with self.lock:
            self.host = HostEvents(None, None, external_input=True)
        rec = Recorder.start(guest, self.sink, config, console, out=self,
                             progress_records=True, poke_interval_s=0.02, host=self.host)
        self.machine = rec.m
        self.attach_devices(rec)
        self.hello("primary" if self.view == 1 else f"started afresh in view {self.view}")
        self._record(rec)

    def _record(self, rec):
        end = rec.run()
        self.say(f"guest ended: {end.detail}")
        self._wait_for_the_end()

    def _wait_for_the_end(self):
        """Keep serving (acks, retransmits, re-sends) until the observer has the exit."""
        with self.lock:
            deadline = time.monotonic() + 600
            while not self.stop_requested and not self.halted and time.monotonic() < deadline:
                self.cond.wait(0.05)
            if self.halted:
                raise Halted(self.halted)

    def _run_backup(self):
        self.hello("backup")
        header = None
        while header is None:
            header = self.stream.poll(0.05)
            if header is None and (self.stream.ended or self.stop_requested):
                if self.stop_requested:
                    return
                if not self.guest:
                    raise FtvmError("the primary died before it sent any log, and this backup has no "
                                    "--guest to start from; nothing to take over")
                # Nothing was logged, so nothing was released: start the guest afresh.
                won = self.arbiter.claim(self.view + 1, self.name)
                if core.on_lost_contact("backup", won) == "halt":
                    raise Halted(f"lost the test-and-set for view {self.view + 1}: the primary carries on")
                with self.lock:
                    self.view += 1
                    self.role = "primary"
                    self.protected = False
                    self.failovers += 1
                self.say(f"primary {self.peer_name} died before its log started: starting the guest "
                         f"as primary of view {self.view}")
                self._run_primary()
                return
        console = Console()
        console.retain = True
        rp = Replayer(self.stream, console, header=header, on_progress=lambda r: self.confirmed_to_console(),
                      should_stop=lambda: self.stop_requested)
        rp.m.netout.retain = True
        rp.disk_path = self.disk_path
        self.machine = rp.m
        self.replay_priority(behind=True)
        result = rp.run()
        if self.stop_requested:
            return
        while not self.failover and not self.stop_requested:
            # The guest ended in replay: wait until the run is over or the primary dies.
            with self.lock:
                self.cond.wait(0.05)
        if self.stop_requested:
            return
        self._go_live(rp, result)

    def _resend_unconfirmed(self, stream, confirmed, name):
        """Going live: hold for release everything of ``stream`` (console or network
        output) from the offset the observer confirmed on. A managed primary may
        transfer its state later, so it keeps retaining unconfirmed bytes, as a backup
        does."""
        data = stream.unconfirmed_since(confirmed)
        stream.retain = False
        stream.take()
        stream.retain = self.managed
        stream.retained, stream.retained_from = bytearray(data if self.managed else b""), confirmed
        if data:
            self.gate.hold(0, confirmed, data, stream=name)

    def replay_priority(self, behind: bool):
        """A backup's replay is off the Output Rule's path: the primary waits for the
        acknowledgement, which the I/O thread sends on receipt, not for the replay. So
        while it is a backup, the replaying thread yields the CPUs to the primary, the
        front end and the clients (nice BACKUP_NICE), and catches up when they idle;
        the lag bound still holds it to max_lag_ms behind. Back to normal once it goes
        live. Only as root: a user could not lower the nice value again."""
        tid = self.main_tid
        if tid is None or os.geteuid() != 0:
            return
        try:
            os.setpriority(os.PRIO_PROCESS, tid, BACKUP_NICE if behind else 0)
        except OSError:
            pass

    def _go_live(self, rp, result, target_view=None):
        self.replay_priority(behind=False)
        m = rp.m
        target = target_view or self.view + 1
        won = self.arbiter.claim(target, self.name)
        if core.on_lost_contact("backup", won) == "halt":
            raise Halted(f"lost the test-and-set for view {target} to node "
                         f"{self.arbiter.owner(target)}: the primary carries on")
        with self.lock:
            outage_ms = (now_ns() - self.failover_from) // 1_000_000
            self.view = target
            self.role = "primary"
            self.protected = False
            self.failovers += 1
            self.sink = FtSink(self.writer)
            self.input_received = m.input.total
            self.net_received = m.net.events
        if m.vtime.pending() or m.rng.pending():
            self.say(f"warning: {m.vtime.pending()} RDTSC and {m.rng.pending()} random values of the "
                     f"old primary were never reached; they are dropped")
        rip = m.vcpu.reg("rip")
        self.say(f"primary {self.peer_name} is gone: going live as primary of view {self.view} at block "
                 f"{m.blocks} after a {outage_ms} ms outage")
        console = m.console
        resend_from = self.observer_confirmed
        if result.end is not None:
            # The guest had already ended: send what the observer lacks, and the exit.
            with self.lock:
                self.hello(f"went live in view {self.view} after {outage_ms} ms; guest already ended")
                data = console.unconfirmed_since(resend_from)
                if data:
                    self.gate.hold(0, resend_from, data)
                self.gate.hold_exit(0, console.total, result.end.status, result.end.detail)
                self._release()
            self._wait_for_the_end()
            return
        offset, excess = core.go_live_offset(self.primary_tsc_offset, self.skew.offset_ns,
                                             int(lib.ftvm_host_ns()), int(m.cpu.tsc_last))
        self.slew = core.Slew(excess, now_ns())
        host = HostEvents(m.cpu, None, external_input=True, eof_taken=m.input.eof)
        with self.lock:
            self.host = host
            self._resend_unconfirmed(console, resend_from, "console")
            self._resend_unconfirmed(m.netout, self.observer_net_confirmed, "net")
            self.hello(f"went live in view {self.view} after {outage_ms} ms")
        golive = R.GoLive(m.blocks, rip, self.view, self.name, outage_ms)
        rec = Recorder.take_over(m, self.sink, rp.config, self, host, offset, golive)
        rec._console_offset = console.total
        rec._net_offset = m.netout.total
        self.attach_devices(rec)
        self._record(rec)
