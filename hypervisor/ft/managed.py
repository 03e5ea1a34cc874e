"""A node whose role comes from the view service (issue: three or more nodes).

Every node pings the view service (ft/viewservice.py) and does what the view says:

- primary of view 1 with no state: start the guest;
- backup of a view: wait for a state transfer from the primary (snapshot of the machine
  plus the log so far), restore it, then replay the log stream as a hot standby and
  report itself ready (up to date), so the service may promote it;
- promoted from backup to primary: replay what it has, win the shared-disk
  test-and-set for the view's number (the fencing token), go live;
- primary, and the view names a new backup: snapshot at the next stop and send it in
  checksummed chunks while the guest runs on (unprotected until the backup has it);
- named in no role any more while it thought it had one: it is stale; it stops
  releasing anything and starts again as an idle node.

Outputs released without a backup need a fresh answer from the view service (a lease:
less than half the time after which the service declares a node dead), so a primary cut
off from the service stops releasing before the service can promote anyone else.

With ``etcd://...`` in place of the view service's address (--coordinator), the node
reaches etcd through ft/etcd.py instead: the same ping, and go-live is a transaction
there rather than the shared-directory test-and-set. The core is then *arbitrated*:
a peer silent on the channel is suspected, and the coordinator thread is woken to
propose the view change at once (docs/views.md, "Coordination on etcd").
"""
from __future__ import annotations

import os
import sys
import threading
import time

import zlib

from logging_channel import messages as M
from logging_channel import records as R
from .viewservice import ViewClient

from .. import snapshot
from ..console import Console
from ..replay import Replayer
from . import priority
from . import protocol as P
from .node import Halted, Node, Stopped, now_ns

EXIT_REJOIN = 10


class ManagedNode(Node):
    def __init__(self, name, listen, observer, shared_dir, run_dir, log_path, guest, viewservice,
                 opts=None, ping_interval_ms=50, dead_pings=6, first_backup_wait_ms=0, **devices):
        super().__init__(name, "idle", listen, None, observer, shared_dir, run_dir, log_path, guest=guest,
                         view=0, opts=opts, peer_name="", **devices)
        self.managed = True
        self.core.managed = True
        self.vs_addr = viewservice
        self.coord = None
        self.coord_wake = threading.Event()
        self.incarnation = time.time_ns()   # a restart pings with a larger one (rule 5 of views.py)
        if viewservice.startswith("etcd://"):
            from .etcd import EtcdViewClient
            self.coord = EtcdViewClient(viewservice, name, suspects=self._suspects, say=self.say,
                                        incarnation=self.incarnation,
                                        first_backup_wait_ns=first_backup_wait_ms * 1_000_000)
            self.arbiter = self.coord           # go-live: a transaction in etcd
            self.core.arbitrated = True
        self.ping_interval_s = ping_interval_ms / 1000
        # Without a backup, release only this soon after a view-service answer: the
        # service declares a node dead after ping_interval * dead_pings.
        self.core.t.vs_lease_ns = ping_interval_ms * dead_pings * 1_000_000 // 2
        self.snap_asm = None
        self.snap_k = None
        self.snap_blob = None
        self.snap_progress = (0, 0)
        self.transfer_gen = 0
        self.transfer_whole = None
        self.logged_view = 0
        self.transfer_started_ns = 0
        self.transfer_ms = []           # how long each transfer took until the backup had it
        self.protected_unix = []        # when each transfer completed (redundancy restored)
        self.my_addr = self.ep.address
        threading.Thread(target=self._pinger, name="ftvm-vs-ping", daemon=True).start()

    ready = property(lambda self: self.core.ready)
    vs_view = property(lambda self: self.core.vs_view)

    # --- view service ---------------------------------------------------------------------
    def _suspects(self):
        with self.lock:
            p = self.core.suspect(now_ns())
        return {p} if p else set()

    def on_suspect(self):
        self.coord_wake.set()           # ask the coordinator now, not at the next ping

    def _pinger(self):
        # A ping that waits for a busy core makes the view service think this node dead.
        priority.raise_this_thread(inherited=True)
        client = self.coord or ViewClient(self.vs_addr, timeout_ms=int(self.ping_interval_s * 4000))
        incarnation = self.incarnation
        while self._pinging():
            with self.lock:
                ping_num, ready, suspect = self.core.acked_view, self.core.ready, self.core.silent_backup
            asked_at = now_ns()
            if self.coord is not None:
                rep = client.ping(self.name, ping_num, ready, self.my_addr)    # suspects: self._suspects
            else:
                rep = client.ping(self.name, ping_num, ready, self.my_addr, incarnation, suspect)
            if rep is not None:
                with self.lock:
                    self.addrs.update(rep[3] or {})
                    acked = self.core.acked_view
                    self.step(P.ViewReply(rep[0], rep[1], rep[2], asked_at))
                    if self.core.acked_view != acked or self.core.ready != ready:
                        continue        # tell the service at once (it waits for the primary's word)
            self.coord_wake.wait(self.ping_interval_s)
            self.coord_wake.clear()
        client.close()

    def _pinging(self):
        """Ping until stopped. A primary that was asked to stop still brings its guest
        to an end (SIGTERM to a Linux guest, whose shutdown writes output), and alone in
        its view it may release that output only while the view service's lease is
        fresh: it keeps pinging until it exits. (It stopped at once, and a lone
        primary's last output then waited for good.)"""
        if self.rejoin:
            return False
        if not self.stop_requested:
            return True
        with self.lock:
            return self.core.role == "primary" and not self.halted

    # --- I/O thread additions -------------------------------------------------------------
    def _on_message(self, msg):
        if msg.type == M.SNAP:
            with self.lock:
                c = self.core
                sender = self.members().get(msg.sender)
                if c.role == "backup" and sender == c.peer and msg.view == c.view:
                    self._receive_snap(msg)
                else:
                    c.stale += 1
            return
        with self.lock:
            was_transferring = self.core.transferring
            super()._on_message(msg)
            if was_transferring and not self.core.transferring and self.core.protected:
                took = (now_ns() - self.transfer_started_ns) / 1e6
                self.transfer_ms.append(took)
                self.protected_unix.append(time.time())

    def _receive_snap(self, msg):
        count, crc, data, k = msg.payload
        if self.snap_blob is not None:
            return
        if self.snap_asm is None or self.snap_asm.count != count or self.snap_k != k:
            self.snap_asm, self.snap_k = snapshot.Assembler(count), k
        try:
            self.snap_asm.add(msg.seq, count, crc, data)
        except snapshot.BadSnapshot as e:
            self.say(f"state transfer: {e}; dropped, it will be sent again")
            return
        self.snap_progress = (len(self.snap_asm.have), count)
        if self.snap_asm.done():
            self.snap_blob = self.snap_asm.blob()
            self.cond.notify_all()

    def _status(self, now):
        st = super()._status(now)
        if self.coord is not None:
            st["coordinator"] = {"kind": "etcd", "ops": self.coord.ops(), "proposed": self.coord.proposed,
                                 "unavailable": self.coord.unavailable}
        st.update(managed=True, vs_view=list(self.core.vs_view[:3]), ready=self.core.ready,
                  transfer=list(self.snap_progress), transfer_ms=self.transfer_ms,
                  protected_unix=self.protected_unix, transferring=self.core.transferring)
        return st

    # --- main thread ----------------------------------------------------------------------
    def run(self):
        try:
            status = super().run()
        except Stopped:
            status = 0
        if self.rejoin and not self.stop_requested:
            self.say("restarting as an idle node")
            os.execv(sys.executable, [sys.executable, "-m", "hypervisor.cli", *sys.argv[1:]])
        return status

    def _run_backup(self):
        # Node.run dispatches on the starting role; a managed node always starts idle.
        self._run_managed()

    def _run_managed(self):
        with self.lock:
            while not (self.start_fresh or self.role == "backup" or self.stop_requested or self.rejoin):
                self.cond.wait(0.05)
        if self.stop_requested or self.rejoin:
            return
        if self.start_fresh:
            self.managed_start_primary()
        elif self.core.from_start:
            self.managed_backup_from_start()
        else:
            self.managed_backup()

    def managed_start_primary(self, claimed=False):
        if not claimed and not self.arbiter.claim(self.view, self.name) and self.coord is not None:
            raise Halted(f"lost go-live for view {self.view} (node {self.arbiter.owner(self.view)} has it)")
        self._run_primary()         # view 1 may have a backup from the start: it waits for it

    def managed_backup_from_start(self):
        """Backup of view 1: follow the primary's log from its first record, as the
        backup of a pair does. Promoted before any log came, it starts the guest afresh:
        the primary released nothing this node had not acknowledged, so nothing at all."""
        header = None
        while header is None:
            header = self.stream.poll(0.05)
            if header is None and (self.stream.ended or self.stop_requested or self.rejoin):
                if self.stop_requested or self.rejoin:
                    return
                view = self.view_target or self.view + 1
                self._claim(view)
                self.say(f"primary died before its log started: starting the guest afresh as primary of view {view}")
                self.managed_start_primary(claimed=True)
                return
        console = Console()
        console.retain = True
        rp = Replayer(self.stream, console, header=header, on_progress=lambda r: self.confirmed_to_console(),
                      should_stop=lambda: self.stop_requested or self.rejoin)
        rp.m.netout.retain = True
        rp.disk_path = self.disk_path
        self.machine = rp.m
        self._replay_then_go_live(rp)

    def _replay_then_go_live(self, rp):
        self.replay_priority(behind=True)
        result = rp.run()
        if self.stop_requested or self.rejoin:
            return
        with self.lock:
            while not self.failover and not self.stop_requested and not self.rejoin:
                self.cond.wait(0.05)
        if self.stop_requested or self.rejoin:
            return
        self._go_live(rp, result, target_view=self.view_target)

    def managed_backup(self):
        with self.lock:
            while self.snap_blob is None and not (self.stop_requested or self.rejoin or self.failover):
                self.cond.wait(0.05)
            blob = self.snap_blob
        if blob is None:
            if self.failover:
                raise Halted("promoted before the state transfer finished (the service should not do that)")
            return
        console = Console()
        console.retain = True
        m, header, k, extra = snapshot.restore(blob, console)
        prefix = extra["log_prefix"]
        with self.lock:
            self.writer.append_frames(prefix[len(R.FILE_MAGIC):], k)
            self.machine = m
            self.step(P.TransferDone(k))
        self.say(f"state transfer done: {len(blob) >> 10} KiB, continuing at record {k}, block {m.blocks}")
        self.confirmed_to_console()
        m.netout.retain = True
        rp = Replayer(self.stream, console, header=header, machine=m,
                      on_progress=lambda r: self.confirmed_to_console(), should_stop=lambda: self.stop_requested or self.rejoin)
        rp.disk_path = self.disk_path
        self._replay_then_go_live(rp)

    # --- state transfer, on the primary's emulation thread -----------------------------
    def _after_stop(self, rec):
        with self.lock:
            num, primary, backup = self.core.vs_view
            if self.role == "primary" and primary == self.name and num != self.logged_view:
                self.logged_view = num
                m = self.machine
                self.sink.append(R.ViewChange(m.blocks, m.vcpu.reg("rip"), num, primary, backup))
        if self.transfer_pending:
            self._start_transfer(rec)
        return super()._after_stop(rec)

    def _start_transfer(self, rec):
        # The emulation thread owns the machine: capture without the lock, so that the
        # I/O and ping threads are not held up by copying a large memory.
        with self.lock:
            self.transfer_pending = False
            backup = self.core.peer
            if backup is None or self.role != "primary":
                return
            k = self.sink.records
            confirmed = self.observer_confirmed
        m = self.machine
        t0 = now_ns()
        self.sink.flush()          # the writer buffers frames: the file must hold all k records
        with open(self.log_path, "rb") as f:
            prefix = f.read()
        kept_from, kept = m.console.unconfirmed_from(confirmed)
        for name, stream in (("console", m.console), ("network", m.netout)):
            if stream.broken():
                self.say(f"warning: {name} output: {stream.broken()}; a backup made now may send wrong output")
        whole = snapshot.capture(m, prefix_header(prefix), k, kept_from, kept,
                                 extra={"log_prefix": prefix})
        with self.lock:
            if self.core.peer != backup or self.role != "primary":
                return                  # the view moved on meanwhile
            s = self.sink
            s.reset(k)
            self.transfer_started_ns = t0
            self.step(P.TransferStarted(k))
            self.transfer_whole = whole
            self.sink.append(R.Transfer(m.blocks, m.vcpu.reg("rip"), self.view, backup, len(whole)))
            gen = self.transfer_gen = self.transfer_gen + 1
            threading.Thread(target=self._send_transfer, args=(gen, whole), name="ftvm-transfer",
                             daemon=True).start()
        self.say(f"state transfer to {backup}: {len(whole) >> 10} KiB at record {k} "
                 f"(captured in {(now_ns() - t0) / 1e6:.0f} ms)")

    def _send_transfer(self, gen, whole):
        """On a thread of its own: wait until the new backup is heard from (so the
        connection is up), send the chunks, and send them again if the backup has not
        taken the snapshot a while after the last one went."""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and self.core.watch.last_ns is None:
            time.sleep(0.005)
        view = memoryview(whole)
        size = snapshot.CHUNK
        n = max(1, (len(view) + size - 1) // size)
        while True:
            with self.lock:
                if gen != self.transfer_gen or not self.core.transferring or self.role != "primary":
                    return
                k, peer, viewnum = self.core.transfer_k, self.core.peer, self.view
            for i in range(n):
                data = bytes(view[i * size:(i + 1) * size])
                msg = M.encode(M.SNAP, self.id, viewnum, i, [n, zlib.crc32(data), data, k])
                self.ep.send(peer, msg)
                if i % 8 == 7:
                    time.sleep(0.001)       # let heartbeats and pings through
            t = time.monotonic()
            while time.monotonic() - t < 1.0 + len(view) / 200e6:
                time.sleep(0.01)
                with self.lock:
                    if gen != self.transfer_gen or not self.core.transferring:
                        self.transfer_whole = None
                        return


def prefix_header(prefix: bytes) -> bytes:
    """The header frame of a log's bytes."""
    off = len(R.FILE_MAGIC)
    _, size = R.decode(prefix, off)
    return prefix[off:off + size]
