"""View service decisions, after the classic primary/backup view service. Pure code:
time is an argument, nothing here does I/O.

A view is (number, primary, backup). Nodes ping every PingInterval with the number of
the view they know (0 after a restart). Rules:

1. A node is dead after ``dead_pings`` missed ping intervals (a backup still in its
   state transfer: ``TRANSFER_GRACE`` times that), alive again after one ping.
2. The service moves to a new view only once the primary of the current view has
   acknowledged it (pinged with its number), even if that primary seems dead. A primary
   that dies before acknowledging leaves the service stuck: that is the price of never
   promoting a node that may not have the state.
3. Only the backup of the current view can become primary, and only if it reported
   itself up to date (``ready``: its state transfer finished) in a ping of that view.
   An idle node never becomes primary directly.
4. Idle nodes become backup; a view may have a primary and no backup.
5. A primary or backup that pings with view 0 has restarted and lost its state: it is
   treated as failed.
6. The first view (``first_backup_wait_ns`` > 0, as `ftvm run --nodes 3` sets it) waits
   that long after the first ping for a second node, and names it backup: a view-1
   backup follows the log from its first record (no state transfer), so it is up to
   date from the start and the primary releases nothing it lacks. A primary that dies
   early is then replaced as in a pair, instead of leaving the service stuck behind a
   backup that was still receiving a transfer; for the same reason that backup may
   replace a primary that died before it acknowledged view 1 (the exception to rule 2).
7. A primary that cannot hear its backup says so in its pings (``suspect``); the
   service then treats the backup as failed. Until a view without that backup comes,
   the primary releases nothing: a backup named by the view may be promoted, so
   nothing may leave that it lacks.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class View:
    num: int
    primary: str | None
    backup: str | None

    def role_of(self, name):
        if name == self.primary:
            return "primary"
        if name == self.backup:
            return "backup"
        return "idle"

    def __str__(self):
        return f"view {self.num} {self.primary or '-'} {self.backup or '-'}"


class ViewService:
    def __init__(self, ping_interval_ns: int = 100_000_000, dead_pings: int = 5, first_backup_wait_ns: int = 0):
        self.ping_interval_ns = ping_interval_ns
        self.dead_pings = dead_pings
        self.first_backup_wait_ns = first_backup_wait_ns
        self.first = None               # (name, time) of the first ping, while view 1 waits for a backup
        self.formed = False             # view 1 was made with a backup (rule 6)
        self.view = View(0, None, None)
        self.acked = False              # the current primary has acknowledged self.view
        self.last_ping = {}             # name -> time of its last ping
        self.ready = {}                 # name -> reported itself up to date
        self.addr = {}                  # name -> how to reach it (opaque to the logic)
        self.incarnation = {}           # name -> the latest incarnation it pinged with
        self.history = []               # (time, View, why, ns since the failed node's first missed ping)
        self.stuck_since = None         # time the service first could not make progress

    # --- inputs -------------------------------------------------------------------------
    def ping(self, name: str, viewnum: int, now: int, ready: bool = False, addr: str | None = None,
             incarnation: int | None = None, suspect: str | None = None) -> View:
        """``incarnation`` grows with each start of the node's process (its start time):
        a ping of an older incarnation is a late message and is ignored, and only a new
        incarnation counts as a restart (rule 5), never a late first ping. ``suspect``:
        the primary cannot hear this backup (rule 7)."""
        known = self.incarnation.get(name)
        if incarnation is not None and known is not None and incarnation < known:
            return self.view            # a late ping of a process that has since restarted
        if incarnation is None:
            restarted = viewnum == 0 and name in self.last_ping
        else:
            restarted = known is not None and incarnation > known
            self.incarnation[name] = incarnation
        self.last_ping[name] = now
        # Up to date in this view: a report from an earlier view says nothing about what
        # the primary released since (a backup dropped and named again needs new state).
        self.ready[name] = ready and viewnum == self.view.num
        if addr is not None:
            self.addr[name] = addr
        v = self.view
        if name == v.primary:
            if viewnum == v.num:
                self.acked = True
            elif viewnum == 0 and restarted:
                self._primary_failed(now, why=f"primary {name} restarted")
        elif name == v.backup and viewnum == 0 and restarted:
            self._backup_failed(now, why=f"backup {name} restarted")
        if (suspect is not None and name == v.primary and viewnum == v.num and suspect == self.view.backup
                and self.view is v):
            self._backup_failed(now, why=f"primary {name} cannot reach backup {suspect}")
        if v.num == 0 and self.view.num == 0:
            self._first_view(name, now)
        self._fill_backup(now)
        return self.view

    def tick(self, now: int) -> View:
        if self.view.num == 0 and self.first is not None:
            self._first_view(None, now)
        v = self.view
        if v.primary is not None and self._dead(v.primary, now):
            self._primary_failed(now)
        if self.view.backup is not None and self._dead(self.view.backup, now):
            self._backup_failed(now)
        self._fill_backup(now)
        return self.view

    # --- queries ------------------------------------------------------------------------
    def alive(self, name, now) -> bool:
        return name in self.last_ping and not self._dead(name, now)

    def idle(self, now):
        v = self.view
        return sorted(n for n in self.last_ping if n not in (v.primary, v.backup) and self.alive(n, now))

    # --- decisions --------------------------------------------------------------------
    TRANSFER_GRACE = 4

    def _dead(self, name, now):
        """Rule 1, with one allowance: the backup of the current view that has not yet
        reported itself up to date is receiving and restoring a state transfer, which
        under load can starve its pings; it gets TRANSFER_GRACE times as long. Nothing
        depends on it meanwhile (it cannot be promoted), so waiting costs only a slower
        replacement if it did die."""
        limit = self.dead_pings * self.ping_interval_ns
        if name == self.view.backup and not self.ready.get(name):
            limit *= self.TRANSFER_GRACE
        return now - self.last_ping.get(name, -(1 << 62)) >= limit

    def _change(self, primary, backup, now, force=False, why="", failed=None) -> bool:
        if not (self.acked or force):
            if self.stuck_since is None:
                self.stuck_since = now
            return False
        self.view = View(self.view.num + 1, primary, backup)
        self.ready = {n: False for n in self.ready}     # readiness is reported per view
        self.acked = False
        self.stuck_since = None
        since_missed = None
        if failed is not None and failed in self.last_ping:
            since_missed = max(0, now - (self.last_ping[failed] + self.ping_interval_ns))
        self.history.append((now, self.view, why, since_missed))
        return True

    def _first_view(self, name, now):
        """Rule 6: the first node is primary; with a wait, the next live one its backup."""
        if not self.first_backup_wait_ns:
            self._change(name, None, now, force=True, why=f"first node {name}")
            return
        if self.first is None:
            self.first = (name, now)
            return
        first, since = self.first
        if not self.alive(first, now):
            self.first = None if name is None else (name, now)    # it went away before a view existed
            return
        if name is not None and name != first:
            self._change(first, name, now, force=True, why=f"first nodes {first} and {name}")
            self.formed = True
        elif now - since >= self.first_backup_wait_ns:
            self._change(first, None, now, force=True,
                         why=f"first node {first} (no second node within {self.first_backup_wait_ns // 1_000_000} ms)")

    def _primary_failed(self, now, why=None):
        v = self.view
        if v.backup is not None and self.ready.get(v.backup) and self.alive(v.backup, now):
            idle = self.idle(now)
            # A view-1 backup made with the view (rule 6) has every record the primary
            # released anything on, whether or not the primary acknowledged the view.
            self._change(v.backup, idle[0] if idle else None, now, why=why or f"primary {v.primary} failed",
                         failed=v.primary, force=v.num == 1 and self.formed)
        elif self.stuck_since is None:
            self.stuck_since = now      # no up-to-date backup to promote: wait

    def _backup_failed(self, now, why=None):
        v = self.view
        if not self.alive(v.primary, now):
            if self.stuck_since is None:
                self.stuck_since = now  # both gone: nobody has the state
            return
        idle = [n for n in self.idle(now) if n != v.backup]
        self._change(v.primary, idle[0] if idle else None, now, why=why or f"backup {v.backup} failed",
                     failed=v.backup)

    def _fill_backup(self, now):
        v = self.view
        if v.primary is not None and v.backup is None and self.acked:
            idle = self.idle(now)
            if idle:
                self._change(v.primary, idle[0], now, why=f"idle {idle[0]} becomes backup")
