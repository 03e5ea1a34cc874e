"""The deterministic core of fault tolerance. No sockets, clocks, threads or
randomness: every function takes the time it needs as an argument (nanoseconds of the
caller's monotonic clock), so tests drive it with fake time.
"""
from __future__ import annotations

import collections
import dataclasses
import math


@dataclasses.dataclass
class Held:
    """One thing the Output Rule holds back: console bytes or the exit."""
    cover: int          # log records the backup must have for this to go out
    offset: int         # console byte offset (for the exit: total console bytes)
    data: bytes | None  # console bytes; None for the exit
    status: int = 0
    detail: str = ""
    at: int = 0         # when it was held (caller's clock), to measure what the rule costs
    stream: str = "console"   # "console", "net" (network output stream) or "disk" (offset = write request id)


class OutputGate:
    """Output Rule: nothing leaves before the backup has acknowledged the log position
    that covers it. Held output is bounded (``max_bytes``); when the gate is full the
    primary must stop executing until acknowledgements free it."""

    def __init__(self, max_bytes: int = 1 << 20):
        self.max_bytes = max_bytes
        self.held = collections.deque()
        self.held_bytes = 0
        self.released_bytes = 0

    def hold(self, cover: int, offset: int, data: bytes, at: int = 0, stream: str = "console"):
        self.held.append(Held(cover, offset, data, at=at, stream=stream))
        self.held_bytes += len(data)

    def hold_exit(self, cover: int, total: int, status: int, detail: str, at: int = 0):
        self.held.append(Held(cover, total, None, status, detail, at))

    def full(self) -> bool:
        return self.held_bytes >= self.max_bytes

    def release(self, acked: int, protected: bool, backup_fresh: bool):
        """What may leave now. ``acked``: records the backup has acknowledged;
        ``protected``: a backup exists; ``backup_fresh``: the backup was heard from
        recently enough that this node is still the primary it thinks it is."""
        out = []
        while self.held:
            h = self.held[0]
            if protected and not (backup_fresh and h.cover <= acked):
                break
            self.held.popleft()
            if h.data is not None:
                self.held_bytes -= len(h.data)
                self.released_bytes += len(h.data)
            out.append(h)
        return out


LOG_BATCH_NS = 1_000_000        # a stop with nothing waiting on the backup may keep its log this long
LOG_BATCH_BYTES = 256 << 10


def send_log_now(unsent_bytes: int, output_waiting: bool, guest_waits: bool, since_sent_ns: int,
                 batch_ns: int = LOG_BATCH_NS, batch_bytes: int = LOG_BATCH_BYTES) -> bool:
    """At a stop: send the log written since the last send now, or leave it for the
    next stop. Sending at every stop costs a message and an acknowledgement each; a
    server woken by a network event would send the event's records, run for a few
    hundred microseconds, and send again with its replies. Only output waits on the
    backup, so the log goes out at once when output is held (or the guest is about to
    sleep, with no next stop in sight); otherwise it may wait for the next stop, which
    the caller makes come soon, for at most ``batch_ns`` and ``batch_bytes``."""
    return output_waiting or guest_waits or since_sent_ns >= batch_ns or unsent_bytes >= batch_bytes


class ClockSkew:
    """Cristian's algorithm over heartbeats: the peer's clock minus ours, from the
    sample with the shortest round trip among the last ``window``."""

    def __init__(self, window: int = 64):
        self.samples = collections.deque(maxlen=window)

    def sample(self, now: int, peer_sent: int, echo: int, held: int):
        """A heartbeat arrived at ``now``, sent at ``peer_sent`` (peer clock), echoing
        our clock value ``echo`` that the peer had held for ``held`` ns."""
        if echo <= 0 or echo > now:
            return
        rtt = now - echo - max(held, 0)
        if rtt < 0:
            return
        self.samples.append((rtt, peer_sent + rtt // 2 - now))

    @property
    def estimate_ns(self):
        """The offset, or None before the first round trip gave one."""
        return min(self.samples)[1] if self.samples else None

    @property
    def offset_ns(self):
        """The offset, taken as 0 until there is an estimate."""
        e = self.estimate_ns
        return 0 if e is None else e

    @property
    def rtt_ns(self):
        return min(self.samples)[0] if self.samples else None


class PeerWatch:
    """When a peer was last heard from, judged by when it *sent* (mapped onto our
    clock through the skew estimate), so that messages that sat in a queue while this
    process was frozen do not count as fresh."""

    def __init__(self, timeout_ns: int):
        self.timeout_ns = timeout_ns
        self.last_ns = None

    def heard(self, now: int, peer_sent: int | None = None, skew_ns: int | None = 0):
        """``skew_ns`` None: no estimate of the peer's clock yet, so its send time
        means nothing here (its clock may be seconds off): judge by arrival."""
        t = now if peer_sent is None or skew_ns is None else min(now, peer_sent - skew_ns)
        if self.last_ns is None or t > self.last_ns:
            self.last_ns = t

    def silent_ns(self, now: int):
        return None if self.last_ns is None else now - self.last_ns

    def fresh(self, now: int) -> bool:
        return self.last_ns is not None and now - self.last_ns < self.timeout_ns

    def dead(self, now: int, started_ns: int, startup_grace_ns: int) -> bool:
        if self.last_ns is None:
            return now - started_ns >= startup_grace_ns
        return now - self.last_ns >= self.timeout_ns


class FailureDetector:
    """When a peer counts as dead: the failure-detection rule, decided here once.

    A peer is judged by when it *sent* (mapped onto our clock through the skew
    estimate, as PeerWatch does), with two allowances for a loaded machine, where a
    process may not run for a few hundred milliseconds:

    - after this process itself did not run (our timer ticks every ``tick_ns``; a tick
      that comes late means we were descheduled or frozen), no verdict for
      ``RESUME_TICKS`` ticks: what the peer sent meanwhile may still be on its way in
      (our own network thread starved with us). Silence is still counted in full, so a
      node frozen while its peer was replaced learns it soon after it runs again;
    - the timeout adapts upward to the peer's observed silences and to this machine's
      load: it is the longest of the base timeout, ``GAP_FACTOR`` times the longest gap
      between two of the peer's messages among the last ``GAPS``, and the base plus
      ``GAP_FACTOR`` times how late our own timer came recently, short of a stall (a
      process that is not scheduled on time here predicts a peer that is not scheduled
      on time either, when both share the machine); capped at ``CAP_FACTOR`` times the
      base.

    Both only lengthen the time to declare death, never shorten it below the base: the
    primary's lease (half the base timeout, judged on its own clock) stays safe.
    """

    GAPS = 64
    GAP_FACTOR = 3
    CAP_FACTOR = 8
    RESUME_TICKS = 3

    def __init__(self, timeout_ns: int, tick_ns: int):
        self.base_ns = timeout_ns
        self.tick_ns = tick_ns
        self.last_ns = None         # the peer's latest send time, on our clock
        self.gaps = collections.deque(maxlen=self.GAPS)
        self.last_tick_ns = None
        self.defer_until = None     # no verdict before this (we just ran again after a stall)
        self.lateness = collections.deque(maxlen=self.GAPS)   # how late our recent ticks came
        self.stalled_at = None      # when we last ran again after a stall

    def heard(self, now: int, peer_sent: int | None = None, skew_ns: int | None = 0):
        t = now if peer_sent is None or skew_ns is None else min(now, peer_sent - skew_ns)
        if self.last_ns is None or t > self.last_ns:
            if self.last_ns is not None and (self.stalled_at is None or self.last_ns >= self.stalled_at):
                self.gaps.append(t - self.last_ns)  # a silence of the peer's, not one of ours
            self.last_ns = t

    def tick(self, now: int):
        """Our timer fired at ``now``."""
        if self.last_tick_ns is not None:
            if now - self.last_tick_ns > 2 * self.tick_ns:
                # A stall (descheduled or frozen): no verdict for a few ticks. It does
                # not count as load: a freeze of seconds would keep the timeout long.
                self.defer_until = now + self.RESUME_TICKS * self.tick_ns
                self.stalled_at = now
            else:
                self.lateness.append(max(0, now - self.last_tick_ns - self.tick_ns))
        self.last_tick_ns = now

    def timeout_ns(self) -> int:
        longest = max(self.gaps) if self.gaps else 0
        late = max(self.lateness) if self.lateness else 0
        return min(self.base_ns * self.CAP_FACTOR,
                   max(self.base_ns, self.GAP_FACTOR * longest, self.base_ns + self.GAP_FACTOR * late))

    def silent_ns(self, now: int):
        return None if self.last_ns is None else max(0, now - self.last_ns)

    def dead(self, now: int, started_ns: int, startup_grace_ns: int) -> bool:
        if self.defer_until is not None and now < self.defer_until:
            return False
        if self.last_ns is None:
            return now - started_ns >= startup_grace_ns
        return self.silent_ns(now) >= self.timeout_ns()


class LagTracker:
    """How far the backup trails, as time: how long ago the primary was where the
    backup is now. The primary samples (time, blocks) at its stops."""

    def __init__(self, keep: int = 4096):
        self.samples = collections.deque(maxlen=keep)

    def primary_at(self, now: int, blocks: int):
        self.samples.append((now, blocks))

    def lag_ns(self, now: int, backup_blocks: int) -> int:
        if not self.samples or backup_blocks >= self.samples[-1][1]:
            return 0
        # The newest sample at or below the backup's position; the lag is measured
        # from the first sample past it (when the primary moved beyond).
        for t, b in reversed(self.samples):
            if b <= backup_blocks:
                break
            first_past = t
        else:
            first_past = self.samples[0][0]
        return max(0, now - first_past)


class Slew:
    """Absorb a forward clock correction gradually instead of stepping time back:
    ``excess_ns`` is how far guest time runs ahead of where it should; each call to
    ``absorb`` takes back at most 1/16 of the time that passed."""

    RATE_DIV = 16

    def __init__(self, excess_ns: int = 0, now: int = 0):
        self.excess_ns = max(0, excess_ns)
        self._last = now

    def absorb(self, now: int) -> int:
        take = min(self.excess_ns, max(0, now - self._last) // self.RATE_DIV)
        self._last = now
        self.excess_ns -= take
        return take


def percentile(sorted_values, p):
    """The p-th percentile (0-100) of an already sorted list, nearest rank."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


class Histogram:
    """Latencies in buckets 2% wide (log scale, from 1 us): adding is O(1) and a
    percentile costs the number of buckets, however many values came (a status write
    every 200 ms used to sort every output's latency of the run, on the I/O thread)."""

    GROWTH = 1.02

    def __init__(self):
        self.counts = {}
        self.n = 0

    def add(self, ns: int):
        us = max(1.0, ns / 1000)
        k = int(math.log(us) / math.log(self.GROWTH))
        self.counts[k] = self.counts.get(k, 0) + 1
        self.n += 1

    def percentile(self, p) -> float | None:
        """The p-th percentile in microseconds (the upper edge of its bucket), or None."""
        if not self.n:
            return None
        rank = max(1, math.ceil(p / 100 * self.n))
        seen = 0
        for k in sorted(self.counts):
            seen += self.counts[k]
            if seen >= rank:
                return self.GROWTH ** (k + 1)
        return self.GROWTH ** (max(self.counts) + 1)


def go_live_offset(primary_offset_ns: int | None, skew_ns: int | None, host_now_ns: int, tsc_last: int):
    """The virtual-time offset a backup takes when it goes live, and the excess to slew.

    The primary's guest time was host_p + primary_offset; host_p = host_b + skew. So
    the backup's offset is primary_offset + skew. If that would put guest time at or
    behind the last value the guest saw, start just after it and slew the excess.
    ``primary_offset_ns`` None: no log message of the primary told it (a backup that got
    the state and nothing after): guest time goes on just after the last value the
    guest saw, rather than from the host clock's own zero (a jump of the host's uptime).
    ``skew_ns`` None: no heartbeat round trip has measured the two clocks yet (a backup
    killed into going live early on a loaded machine): likewise, rather than take the
    clocks as equal (a jump by the whole skew: 3 s once, in a test)."""
    if primary_offset_ns is None or skew_ns is None:
        return tsc_last + 1 - host_now_ns, 0
    offset = primary_offset_ns + skew_ns
    if host_now_ns + offset > tsc_last:
        return offset, 0
    start = tsc_last + 1
    return start - host_now_ns, start - (host_now_ns + offset)


def on_lost_contact(role: str, claim_won: bool) -> str:
    """What a node does when its peer has been silent past the timeout and it has tried
    the shared-disk test-and-set for the next view: exactly one node wins it.

    primary: won -> carry on unprotected; lost -> the backup went live: halt.
    backup:  won -> go live;              lost -> the primary carries on alone: halt."""
    if role == "primary":
        return "continue_alone" if claim_won else "halt"
    if role == "backup":
        return "go_live" if claim_won else "halt"
    raise AssertionError(role)
