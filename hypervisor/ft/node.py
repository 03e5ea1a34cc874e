"""A fault-tolerant node: the primary records and streams its log to the backup, which
replays it as a hot standby and goes live when the primary dies.

Threads: the main thread runs the guest (recording or replaying); the I/O thread of
the transport handles every message and the timers (heartbeats, failure detection,
retransmission, status). They share the state below under ``self.lock``.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time

from logging_channel import messages as M
from logging_channel import records as R
from logging_channel.frames import Frames, check as frames_check
from logging_channel.logfile import LogWriter
from .arbiter import Arbiter
from .statusfile import StatusFile

from ..console import Console
from ..errors import FtvmError
from ..machine import Config
from ..profiling import thread_profile
from ..record import Recorder
from ..replay import Replayer, StreamSource
from ..sources.interrupts import HostEvents
from ..uc import lib
from . import core, faults
from . import protocol as P
from .sink import FtSink
from .transport import Endpoint

BACKUP_NICE = 0     # a backup's replaying thread, as root (Node.replay_priority): see there why not 10
OBSERVER_GONE_NS = 10_000_000_000   # no word from the observer this long: the run is over
EXIT_STALE = 9          # this node learned it is stale (lost the test-and-set) and halted
NODE_IDS = {}


def node_id(name: str) -> str:
    """What a node puts in a message's sender field: its name (logging_channel.messages)."""
    return name


_SKEW_NS = 0        # tests only: this node's clock disagrees with its peer's (faults.clock_skew_ns)


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

    def timing(self):
        ms = 1_000_000
        return P.Timing(hb_interval_ns=self.hb_interval_ms * ms, fail_timeout_ns=self.fail_timeout_ms * ms,
                        startup_grace_ns=self.startup_grace_ms * ms, max_lag_ns=self.max_lag_ms * ms,
                        gate_bytes=self.gate_bytes, unacked_bytes=self.unacked_bytes,
                        retransmit_ns=self.retransmit_ms * ms)

    def to_args(self):
        return ["--hb-interval-ms", str(self.hb_interval_ms), "--fail-timeout-ms", str(self.fail_timeout_ms),
                "--max-lag-ms", str(self.max_lag_ms)]


def _by_type(counts):
    return {M.TYPE_NAMES[t]: n for t, n in enumerate(counts) if n and t in M.TYPE_NAMES}


class Halted(FtvmError):
    """This node found it is stale: another node holds a newer view. It stops at once
    and releases nothing more."""
    exit_status = EXIT_STALE


class Stopped(Exception):
    """The run is over for this node (the observer said stop, or went away)."""


class Node:
    def __init__(self, name, role, listen, peer, observer, shared_dir, run_dir, log_path,
                 guest=None, view=1, opts: FtOptions | None = None, peer_name=None, disk=None, disk_reads="log",
                 net=False):
        self.name = name
        self.id = node_id(name)
        self._peer_name = peer_name or ("B" if name == "A" else "A")
        peer_name = self._peer_name
        self.opts = opts or FtOptions()
        self.run_dir = run_dir
        self.log_path = log_path
        self.guest = guest
        self.disk_path = disk           # the disk image on shared storage (None: no disk)
        self.disk_reads = disk_reads
        self.net = net                  # the observer runs a network front end
        self.transfer_pending = False
        self.start_fresh = False
        self.arbiter = Arbiter(shared_dir)
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.started = now_ns()
        # Every protocol decision is the core's (protocol.py); this class is its shell.
        self.core = P.NodeCore(name, role, view, peer_name if peer else None, self.opts.timing(),
                               now=self.started, pid=os.getpid(), net=net)
        self.file_released = set()      # data-directory changes the Output Rule let go
        self.disk_worker = None
        self.host = None                # HostEvents of the recording guest
        self.sink = None
        self.machine = None
        self.stream = StreamSource()
        self.writer = LogWriter(log_path)
        self.managed = False            # roles come from the view service (managed.py)
        self.status_at = 0
        self.status_file = StatusFile(os.path.join(run_dir, f"{name}.status.json"))
        self.last_release_unix = None
        self._rate_mark = (0, 0)
        self.after_stop_ns = 0          # time the emulation thread spent handing over at stops
        self.paced_ns = 0               # time the primary waited for the backup (flow control)
        self.guest_waits = False        # at the last stop the guest waited (for input, a client, a timer)
        self.rule = core.Histogram()    # what the Output Rule added to each output (held -> released)
        self.failover_from = self.started
        self.view_target = None
        self.rejoin = False
        self._stop_rec = None           # the recorder at a stop (for StopSoon)
        self.main_tid = None            # the thread that records or replays the guest
        self.ep = Endpoint(listen, self._on_message, self._on_tick, tick_s=self.opts.hb_interval_ms / 1000,
                           name=name)
        self.addrs = {"observer": observer}
        if peer:
            self.addrs[peer_name] = peer
            self.ep.connect(peer_name, peer)
        self.ep.connect("observer", observer, immediate=False)

    # --- the core's state, read-only here ----------------------------------------------------
    role = property(lambda self: self.core.role)
    view = property(lambda self: self.core.view)
    protected = property(lambda self: self.core.protected)
    halted = property(lambda self: self.core.halted)
    stop_requested = property(lambda self: self.core.stop_requested)
    failover = property(lambda self: self.core.failover)
    acked = property(lambda self: self.core.acked)
    received = property(lambda self: self.core.received)
    gate = property(lambda self: self.core.gate)
    transferring = property(lambda self: self.core.transferring)
    observer_confirmed = property(lambda self: self.core.console.confirmed)
    observer_net_confirmed = property(lambda self: self.core.netout.confirmed)

    @property
    def peer_name(self):
        return self.core.peer if hasattr(self, "core") else self._peer_name

    @peer_name.setter
    def peer_name(self, value):
        self._peer_name = value

    # --- performing the core's effects ----------------------------------------------------------
    def step(self, ev, now=None):
        """Hand one event to the core and perform what it decides, in order. Under the lock."""
        effects = self.core.step(ev, now_ns() if now is None else now)
        for e in effects:
            self._perform(e)

    def _perform(self, e):
        if isinstance(e, P.Send):
            self.ep.send(e.to, M.encode(e.type, self.id, e.view, e.seq, e.payload))
        elif isinstance(e, P.SendLog):
            s = self.sink
            if s is None:
                return
            blob, count = s.frames_from(e.first, e.upto)
            s.sent = max(s.sent, e.upto)
            if count:
                m = self.machine
                data = M.encode(M.LOG, self.id, e.view, e.first,
                                [blob, count, int(m.cpu.blocks), int(m.cpu.tsc_offset_ns), e.at])
                if threading.get_native_id() == self.main_tid:
                    self.ep.send_direct(e.to, data)     # the emulation thread: skip the hop
                else:
                    self.ep.send(e.to, data)
        elif isinstance(e, P.SendAck):
            blocks = self.machine.cpu.blocks if self.machine is not None else 0
            self.ep.send(e.to, M.encode(M.ACK, self.id, e.view, e.received,
                                        [int(blocks), e.received, self._disk_reads_replayed(), e.echo]))
        elif isinstance(e, P.AppendLog):
            fr = e.frames
            self.writer.append_frames(fr.join() if type(fr) is Frames else b"".join(fr), len(fr))
            self.stream.push([fr] if type(fr) is Frames else list(fr))
        elif isinstance(e, P.Trim):
            if self.sink is not None:
                self.sink.acked(e.acked)
                self.sink.sent = max(self.sink.sent, min(e.acked, self.sink.records))
        elif isinstance(e, P.Released):
            if self.core.protected:
                self.rule.add(e.waited_ns)
            # When the core decided, not now: a process frozen between the decision and
            # this line (SIGSTOP under load) would otherwise seem to release after it
            # resumed, which a stale primary never decides to do (its lease is judged on
            # echoes of its own clock).
            decided_ns = e.held.at + e.waited_ns
            self.last_release_unix = time.time() - max(0, now_ns() - decided_ns) / 1e9
        elif isinstance(e, P.Deliver):
            if e.held.stream == "disk":
                if self.disk_worker is not None:
                    self.disk_worker.release(e.held.offset)
            else:
                self.file_released.add(e.held.offset)
                self.cond.notify_all()
        elif isinstance(e, P.PushInput):
            if self.host is not None:
                self.host.push_input(e.data)
        elif isinstance(e, P.PushNet):
            if self.host is not None:
                self.host.push_net([tuple(x) for x in e.events])
        elif isinstance(e, P.Claim):
            won = self.arbiter.claim(e.view, self.name)
            self.step(P.Claimed(e.view, won))
        elif isinstance(e, P.Failover):
            self.replay_priority(behind=False)      # catching up is on the failover's path
            self.failover_from = e.since_ns
            self.view_target = e.view
            self.stream.end()
            self._poke()
        elif isinstance(e, P.Suspect):
            self.on_suspect()
        elif isinstance(e, P.Halt):
            if e.rejoin:
                self.say(f"stale: {e.why}; releasing nothing more, rejoining as idle")
                self.rejoin = True
            self._poke()
        elif isinstance(e, P.StopRun):
            if "observer said" not in e.why:
                self.say(f"{e.why}: stopping")
            self._poke()
        elif isinstance(e, P.StopSoon):
            if self._stop_rec is not None:
                self._stop_rec.stop_soon()       # the log waits for the next stop, which comes soon
        elif isinstance(e, P.Connect):
            addr = self.addrs.get(e.name)
            if addr is not None:
                self.ep.connect(e.name, addr)
        elif isinstance(e, P.StartTransfer):
            self.transfer_pending = True
        elif isinstance(e, P.GoLive):
            self.start_fresh = not self.core.failover and self.machine is None
        elif isinstance(e, P.Say):
            self.say(e.text)
        elif isinstance(e, P.Wake):
            self.cond.notify_all()
        else:
            raise AssertionError(f"effect {e!r} not performed")

    def on_suspect(self):
        """A peer is suspected (arbitrated nodes only: managed.py asks etcd now)."""

    def _poke(self):
        self.cond.notify_all()
        if self.machine is not None:
            lib.ftvm_poke(self.machine.cpu)

    # --- small helpers --------------------------------------------------------------
    def say(self, msg):
        print(f"ftvm[{self.name}]: {msg}", file=sys.stderr, flush=True)

    def members(self):
        """Sender ids this node takes messages from, by name: the observer and the nodes
        it knows. Anything else is refused before the core sees it."""
        names = {n for n in self.addrs if n != "observer"}
        if self.core.peer:
            names.add(self.core.peer)
        ids = {n: n for n in names}
        ids[""] = P.OBSERVER
        return ids

    # --- I/O thread: messages ---------------------------------------------------------
    def _on_message(self, msg):
        with self.lock:
            sender = self.members().get(msg.sender)
            if sender is None:
                self.core.stale += 1
                return
            payload = msg.payload
            if msg.type == M.LOG:
                payload = self._split_frames(payload)
                if payload is None:
                    self.core.stale += 1
                    return
            self.step(P.Recv(msg.type, sender, msg.view, msg.seq, payload))

    @staticmethod
    def _split_frames(payload):
        """A LOG message's frames, checked (framing and CRCs, in one C call; the replay
        thread decodes the bodies), as a run of frames; None if any is damaged."""
        try:
            return [frames_check(payload[0]), *payload[1:]]
        except R.FrameError:
            return None

    # --- I/O thread: timers ------------------------------------------------------------
    def _on_tick(self):
        with self.lock:
            now = now_ns()
            self.step(P.Tick(), now)
            if now - self.status_at > 200_000_000:
                self.status_at = now
                self._write_status(now)

    def hello(self, detail=None):
        """Announce this node to the observer (the core re-announces every 200 ms)."""
        if detail is not None:
            self.core.hello_detail = detail
        self.core._hello(now_ns(), out := [])
        for e in out:
            self._perform(e)

    def _status(self, now):
        """This node's status, as `ftvm status` and --progress show it."""
        prev_t, prev_b = self._rate_mark
        rate = (self.writer.bytes - prev_b) / max(1e-9, (now - prev_t) / 1e9) if prev_t else 0.0
        self._rate_mark = (now, self.writer.bytes)
        c = self.core
        lag_ms = c.lag.lag_ns(now, c.backup_blocks) / 1e6 if c.role == "primary" and c.protected else None
        ms = self.machine
        return {
            "name": self.name, "pid": os.getpid(), "role": c.role, "view": c.view,
            "protected": c.protected, "lag_ms": lag_ms, "halted": c.halted,
            "log": self.log_path, "log_records": self.sink.records if self.sink else c.received,
            "log_bytes": self.writer.bytes, "log_rate_kbps": rate * 8 / 1000, "acked": c.acked,
            "held_bytes": c.gate.held_bytes, "released_bytes": c.gate.released_bytes,
            "last_release_unix": self.last_release_unix, "output_rule_us": self._rule_stats(),
            "failovers": c.failovers, "clock_offset_us": c.skew.offset_ns / 1000,
            "rtt_us": None if c.skew.rtt_ns is None else c.skew.rtt_ns / 1000,
            "rtt_p50_us": (core.percentile(sorted(r for r, _ in c.skew.samples), 50) or 0) / 1000,
            "messages": {"sent": _by_type(self.ep.sent), "received": _by_type(self.ep.received)},
            "garbage": self.ep.garbage, "stale": c.stale, "gaps": c.gaps, "io_sched": f"{self.ep.io_sched}, libzmq {self.ep.zmq_sched}",
            "fail_timeout_ms": c.watch.timeout_ns() / 1e6,
            "io_failure": repr(self.ep.failure) if self.ep.failure else None,
            "observer_seen_s_ago": None if c.observer_seen is None else (now - c.observer_seen) / 1e9,
            "observer_confirmed": c.console.confirmed,
            "paced_ms": self.paced_ns / 1e6, "after_stop_ms": self.after_stop_ns / 1e6,
            "net_events": int(ms.net.events) if ms is not None else 0,
            "net_out_bytes": int(ms.netout.total) if ms is not None else 0,
            "disk": dict(self.disk_worker.stats, in_flight=len(ms.disk.inflight)) if self.disk_worker and ms else None,
            "blocks": int(ms.cpu.blocks) if ms is not None else 0,
            "guest_waits": self.guest_waits,
            "stops": int(ms.cpu.hook_stops) if ms is not None else 0,
            "time": time.time(),
        }

    def _write_status(self, now):
        """Hand the status to its writer thread (statusfile.py): no file I/O here, on
        the I/O thread, under the lock."""
        self.status_file.put(self._status(now))

    def _rule_stats(self):
        h = self.rule
        if not h.n:
            return None
        return {"n": h.n, "p50": h.percentile(50), "p99": h.percentile(99)}

    # --- main thread: the primary's output protocol (Recorder.out) -------------------
    def output(self, offset, data, cover):
        with self.lock:
            self.step(P.Hold("console", offset, data, cover))

    def net_output(self, offset, data, cover):
        with self.lock:
            self.step(P.Hold("net", offset, data, cover))

    def disk_write(self, req_id, cover):
        """A disk write is output too: the host writes only under the Output Rule."""
        with self.lock:
            self.step(P.Hold("disk", req_id, b"", cover))

    def file_output(self, rec):
        """A Linux guest changes its data directory: that is output. Hold the call until
        the backup has the log that covers it (rule 2), then let it go ahead; a node that
        is no longer a primary in its lease changes nothing (it halts)."""
        token = object()
        with self.lock:
            self.step(P.Hold("file", token, b"", rec.sink.records))
        while True:
            self._after_stop(rec)
            with self.lock:
                if token in self.file_released:
                    self.file_released.discard(token)
                    break
                if self.halted:
                    raise Halted(self.halted)
                if self.stop_requested and not getattr(self, "_ending", False):
                    raise Stopped()
                self.cond.wait(0.002)
        # Released under a fresh lease; by now (this thread may have waited for a core)
        # the lease may have lapsed, which alone is no reason to stop: wait until it is
        # renewed, or until the core says this node is no longer primary. (Halting at
        # once stopped a new primary at its first append-only-file write, seen with
        # three nodes while its backup's state transfer had just ended.)
        while not self._may_write_disk():
            with self.lock:
                if self.halted or self.role != "primary":
                    out = []
                    if not self.halted:
                        self.core._halt("no longer a primary in its lease: the data directory is not written", out)
                    for e in out:
                        self._perform(e)
                    raise Halted(self.halted)
                if self.stop_requested and not getattr(self, "_ending", False):
                    raise Stopped()
                self.cond.wait(0.002)

    def exit(self, total, status, detail, cover):
        with self.lock:
            self.step(P.Hold("exit", total, None, cover, status, detail))

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
                if self.role == "primary" and self.machine is not None and rec.m is self.machine:
                    if not getattr(self, "_ending", False):
                        # The run is being stopped (Ctrl-C on the observer): the guest
                        # gets SIGTERM (a Linux program's handler may shut it down
                        # cleanly; otherwise the log ends with an "interrupted" END
                        # record), and the protocol goes on until the guest has ended.
                        self._ending = True
                        self.machine.cpu.signal = 15
                        lib.ftvm_poke(self.machine.cpu)
                elif not getattr(self, "_ending", False):
                    raise Stopped()
                else:
                    return
            m = self.machine
            now = now_ns()
            if self.slew is not None:
                m.cpu.tsc_offset_ns -= self.slew.absorb(now)
            s = self.sink
            self._stop_rec = rec
            self.guest_waits = bool(rec.guest_waits)
            try:
                self.step(P.AtStop(s.records, int(m.cpu.blocks), unsent_bytes=s.unsent_bytes(), unacked_bytes=s.bytes,
                                   guest_waits=bool(rec.guest_waits), net_events=int(m.net.events)), now)
            finally:
                self._stop_rec = None
            self.confirmed_to_console()
            # Flow control (the core decides): the backup may trail by at most
            # max_lag_ms of guest progress; held output and unacknowledged log are bounded.
            t_pace = now_ns()
            while self.core.must_wait(now_ns()):
                self.cond.wait(0.001)
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
        return int(m.disk.reads_completed) if m is not None and m.disk is not None else 0

    def _wait_reads_replayed(self, reads_done):
        """Shared-disk reads: before the host writes, the backup must have read (at replay)
        every block the primary read so far, or it would read the newer data."""
        with self.lock:
            while (self.protected and self.role == "primary" and not self.halted and not self.stop_requested
                   and self.core.backup_disk_reads < reads_done):
                self.cond.wait(0.002)

    def _may_write_disk(self):
        """Checked just before each disk write: only a primary still in its lease writes."""
        with self.lock:
            return self.core.may_write_disk(now_ns())

    # --- main thread: roles -----------------------------------------------------------
    def run(self):
        # The I/O thread must get the GIL quickly when a message arrives, or every
        # acknowledgement waits out the emulation thread's 5 ms switch interval.
        sys.setswitchinterval(0.0001)
        self.main_tid = threading.get_native_id()
        global _SKEW_NS
        _SKEW_NS = faults.clock_skew_ns(self.name)
        lib.ftvm_set_clock_skew(_SKEW_NS)
        self.started = now_ns()
        with self.lock:
            c = self.core
            c.started = c.watch_started = c.last_ack_progress = self.started
        self.ep.start()
        self.slew = None
        try:
            with thread_profile(f"main-{self.name}"):
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
                final = self._status(now_ns())
            self.status_file.close(final)
            self.ep.close()
        return 0

    def _wait_for_backup(self):
        """Readiness, not hope: a protected primary starts the guest once its backup has
        been heard from (or after the startup grace, when the core gives up on it), so
        its first outputs do not wait for the backup process to start."""
        deadline = time.monotonic() + self.opts.startup_grace_ms / 1000
        with self.lock:
            while (self.core.protected and self.core.watch.last_ns is None and not self.stop_requested
                   and time.monotonic() < deadline):
                self.cond.wait(0.005)

    def _run_primary(self):
        from ..guest import open_guest
        guest = open_guest(self.guest)
        self._wait_for_backup()
        config = self.machine_config()
        self.sink = FtSink(self.writer)
        console = Console()
        # A managed primary may transfer its state to a new backup later; the snapshot
        # must carry the output the observer has not confirmed, so keep it. (Not kept,
        # a backup made by state transfer from the first primary of a run went live
        # with its kept output labelled from the wrong offset: the observer printed
        # lines out of place or waited forever for a line nobody had.)
        console.retain = self.managed
        with self.lock:
            self.host = HostEvents(None, None, external_input=True)
        rec = Recorder.start(guest, self.sink, config, console, out=self,
                             progress_records=True, poke_interval_s=0.02, host=self.host)
        self.machine = rec.m
        rec.m.netout.retain = self.managed
        self.attach_devices(rec)
        with self.lock:
            self.step(P.Recording(0, 0, "primary" if self.view == 1 else f"started afresh in view {self.view}"))
        self._record(rec)

    def _record(self, rec):
        end = rec.run()
        self.say(f"guest ended: {end.detail}")
        self._wait_for_the_end()

    def _wait_for_the_end(self):
        """Keep serving (acks, retransmits, re-sends) until the observer has the exit.
        A STOP that came before the exit was sent (the run is being stopped: the guest got
        SIGTERM and shut down) does not count: a primary alone in its view may still hold
        the exit until the view service renews its lease, and leaving then ended such runs
        with "every node is dead and the guest had not ended"."""
        with self.lock:
            deadline = time.monotonic() + 600
            c = self.core
            while (not c.stop_after_exit and not c.observer_gone and not self.halted
                   and time.monotonic() < deadline):
                self.cond.wait(0.05)
            if self.halted:
                raise Halted(self.halted)

    def _claim(self, view):
        """The shared-disk test-and-set for ``view``, told to the core."""
        won = self.arbiter.claim(view, self.name)
        with self.lock:
            self.step(P.Claimed(view, won))
            if self.halted:
                raise Halted(f"{self.halted} (node {self.arbiter.owner(view)} holds view {view})")

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
                self._claim(self.view_target or self.view + 1)
                self.say(f"primary {self.peer_name or 'A'} died before its log started: starting the guest "
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
        if stream.broken():
            self.say(f"warning: {name} output: {stream.broken()}; what is sent again may be wrong")
        start, data = stream.unconfirmed_from(confirmed)
        if name == "console":
            self.say(f"going live: {len(data)} bytes of output from offset {start} to send again "
                     f"(the observer has {confirmed}; output so far {stream.total})")
        if start > confirmed:
            self.say(f"warning: {name} output {confirmed}..{start} is no longer kept here; the observer "
                     f"will wait for it")
        stream.retain = False
        stream.take()
        stream.retain = self.managed
        stream.retained, stream.retained_from = bytearray(data if self.managed else b""), start
        sender = self.core.console if name == "console" else self.core.netout
        sender.reset(confirmed)
        if data:
            self.step(P.Hold(name, start, data, 0))

    def replay_priority(self, behind: bool):
        """The nice value of a backup's replaying thread (BACKUP_NICE while behind, 0
        once it goes live). Its replay is off the Output Rule's path, but not the
        interpreter lock: the I/O thread that acknowledges the log needs the lock, and
        the replaying thread holds it whenever it runs Python. At nice 10 (as this once
        was, for 7-8% more kv throughput) that thread, preempted while holding the lock,
        waited behind every other runnable thread, and the acknowledgement with it: the
        log's one-way delay to the acknowledging handler was 1.1-1.6 ms at the median
        against 0.07-0.34 ms at nice 0, on this 2-core machine with one core busy
        elsewhere. Only as root: a user could not lower the nice value again."""
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
        peer = self.peer_name
        with self.lock:       # what the old primary told us, before the core forgets its peer
            skew_ns, primary_offset_ns = self.core.skew.estimate_ns, self.core.primary_tsc_offset
        self._claim(target_view or self.view_target or self.view + 1)
        with self.lock:
            outage_ms = (now_ns() - self.failover_from) // 1_000_000
            self.sink = FtSink(self.writer)
        if m.vtime.pending() or m.rng.pending():
            self.say(f"warning: {m.vtime.pending()} RDTSC and {m.rng.pending()} random values of the "
                     f"old primary were never reached; they are dropped")
        rip = m.vcpu.reg("rip")
        self.say(f"primary {peer} is gone: going live as primary of view {self.view} at block "
                 f"{m.blocks} after a {outage_ms} ms outage")
        console = m.console
        resend_from = self.observer_confirmed
        if result.end is not None:
            # The guest had already ended: send what the observer lacks, and the exit.
            with self.lock:
                self.core.console.reset(resend_from)
                start, data = console.unconfirmed_from(resend_from)
                if data:
                    self.step(P.Hold("console", start, data, 0))
                self.step(P.Hold("exit", console.total, None, 0, result.end.status, result.end.detail))
                self.step(P.Recording(m.input.total, m.net.events,
                                      f"went live in view {self.view} after {outage_ms} ms; guest already ended"))
            self._wait_for_the_end()
            return
        offset, excess = core.go_live_offset(primary_offset_ns, skew_ns,
                                             int(lib.ftvm_host_ns()), int(m.cpu.tsc_last))
        self.slew = core.Slew(excess, now_ns())
        host = HostEvents(m.cpu, None, external_input=True, eof_taken=m.input.eof)
        with self.lock:
            self.host = host
            self._resend_unconfirmed(console, resend_from, "console")
            self._resend_unconfirmed(m.netout, self.observer_net_confirmed, "net")
            self.step(P.Recording(m.input.total, m.net.events, f"went live in view {self.view} after {outage_ms} ms"))
        golive = R.GoLive(m.blocks, rip, self.view, self.name, outage_ms)
        rec = Recorder.take_over(m, self.sink, rp.config, self, host, offset, golive)
        rec._console_offset = console.total
        rec._net_offset = m.netout.total
        self.attach_devices(rec)
        self._record(rec)
