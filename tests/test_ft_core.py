"""The deterministic core of fault tolerance, driven with fake time."""

import pytest

from conftest import imported_modules
from hypervisor.ft import core

MS = 1_000_000


def test_output_gate_holds_until_the_covering_position_is_acked():
    g = core.OutputGate()
    g.hold(cover=5, offset=0, data=b"a\n")
    g.hold(cover=9, offset=2, data=b"b\n")
    g.hold_exit(cover=12, total=4, status=3, detail="exit")
    assert g.release(acked=4, protected=True, backup_fresh=True) == []
    out = g.release(acked=9, protected=True, backup_fresh=True)
    assert [h.data for h in out] == [b"a\n", b"b\n"]
    assert g.release(acked=11, protected=True, backup_fresh=True) == []
    (h,) = g.release(acked=12, protected=True, backup_fresh=True)
    assert h.data is None and h.status == 3 and h.offset == 4


def test_output_gate_releases_nothing_when_the_backup_is_not_fresh():
    g = core.OutputGate()
    g.hold(1, 0, b"x")
    assert g.release(acked=100, protected=True, backup_fresh=False) == []
    assert len(g.release(acked=0, protected=False, backup_fresh=False)) == 1   # unprotected: out at once


def test_output_gate_keeps_order_and_bounds():
    g = core.OutputGate(max_bytes=10)
    g.hold(3, 0, b"12345")
    assert not g.full()
    g.hold(1, 5, b"67890")
    assert g.full()
    assert g.release(acked=2, protected=True, backup_fresh=True) == []   # in order: first waits for 3
    assert len(g.release(acked=3, protected=True, backup_fresh=True)) == 2
    assert not g.full() and g.released_bytes == 10


def test_peer_watch_judges_by_send_time():
    w = core.PeerWatch(timeout_ns=150 * MS)
    assert w.dead(now=10 * MS, started_ns=0, startup_grace_ns=5000 * MS) is False
    assert w.dead(now=6000 * MS, started_ns=0, startup_grace_ns=5000 * MS) is True
    w.heard(now=1000 * MS, peer_sent=1000 * MS)
    assert w.fresh(1100 * MS) and not w.dead(1100 * MS, 0, 0)
    assert w.dead(1150 * MS, 0, 0)
    # A message sent long ago (it sat in a queue while we were frozen) is not fresh.
    w2 = core.PeerWatch(timeout_ns=150 * MS)
    w2.heard(now=5000 * MS, peer_sent=1000 * MS)
    assert not w2.fresh(5000 * MS)


def test_peer_watch_before_any_clock_estimate_judges_by_arrival():
    """A peer whose clock is 3 s behind ours: its first heartbeats come before any round
    trip, so there is no offset estimate yet. Taking its send time at face value would
    make it look 3 s silent (a node once declared its live peer dead this way)."""
    skew = core.ClockSkew()
    w = core.PeerWatch(timeout_ns=150 * MS)
    now = 10_000 * MS
    assert skew.estimate_ns is None
    w.heard(now, peer_sent=now - 3000 * MS, skew_ns=skew.estimate_ns)
    assert w.fresh(now + 10 * MS)
    # Once a round trip says the peer is 3 s behind, send times count again.
    skew.sample(now + 20 * MS, peer_sent=now - 3000 * MS + 19 * MS, echo=now + 18 * MS, held=0)
    assert abs(skew.estimate_ns + 3000 * MS) < MS
    w.heard(now + 20 * MS, peer_sent=now - 3000 * MS + 19 * MS, skew_ns=skew.estimate_ns)
    assert w.fresh(now + 100 * MS)


def test_clock_skew_prefers_the_shortest_round_trip():
    s = core.ClockSkew()
    # Peer clock runs 1000 ns ahead. Round trips of 100 and 20 ns (peer held 10 ns).
    s.sample(now=10_100, peer_sent=10_050 + 1000, echo=10_000, held=0)
    s.sample(now=20_030, peer_sent=20_015 + 1000, echo=20_000, held=10)
    assert s.rtt_ns == 20
    assert s.offset_ns == 1000 - 5       # within half the round trip
    s.sample(now=5, peer_sent=5, echo=10, held=0)   # an echo from the future is ignored
    assert s.rtt_ns == 20


def test_lag_tracker():
    lag = core.LagTracker()
    for t, b in ((0, 0), (10, 100), (20, 200), (30, 300)):
        lag.primary_at(t * MS, b)
    assert lag.lag_ns(35 * MS, 300) == 0
    assert lag.lag_ns(35 * MS, 250) == 5 * MS      # the primary passed 250 at t=30
    assert lag.lag_ns(35 * MS, 150) == 15 * MS
    assert lag.lag_ns(35 * MS, 0) == 25 * MS


def test_go_live_offset_never_steps_back_and_slews():
    # Backup clock 500 ns behind the primary's: the offset grows by the skew.
    off, excess = core.go_live_offset(primary_offset_ns=-1000, skew_ns=500, host_now_ns=10_000, tsc_last=8_000)
    assert (off, excess) == (-500, 0) and 10_000 + off > 8_000
    # The estimate would put guest time behind what the guest saw: start just after it.
    off, excess = core.go_live_offset(primary_offset_ns=-1000, skew_ns=0, host_now_ns=10_000, tsc_last=9_500)
    assert 10_000 + off == 9_501 and excess == 501
    s = core.Slew(excess, now=0)
    taken = sum(s.absorb(t) for t in range(1600, 20000, 1600))
    assert taken == 501 and s.excess_ns == 0
    s2 = core.Slew(10_000, now=0)
    assert s2.absorb(1600) == 100                # at most 1/16 of the time that passed


@pytest.mark.parametrize("role,won,action", [("primary", True, "continue_alone"), ("primary", False, "halt"),
                                             ("backup", True, "go_live"), ("backup", False, "halt")])
def test_on_lost_contact(role, won, action):
    assert core.on_lost_contact(role, won) == action


def test_log_waits_for_the_next_stop_only_while_nothing_depends_on_it():
    ms = 1_000_000
    # Nothing held, the guest runs on, sent just now, little unsent: the next stop takes it.
    assert not core.send_log_now(1000, output_waiting=False, guest_waits=False, since_sent_ns=100_000)
    # Output waits on the backup's acknowledgement: send at once.
    assert core.send_log_now(1000, output_waiting=True, guest_waits=False, since_sent_ns=100_000)
    # The guest sleeps until something arrives: there may be no next stop for long.
    assert core.send_log_now(1000, output_waiting=False, guest_waits=True, since_sent_ns=100_000)
    # Held long enough, or grown large enough.
    assert core.send_log_now(1000, False, False, since_sent_ns=core.LOG_BATCH_NS)
    assert not core.send_log_now(1000, False, False, since_sent_ns=core.LOG_BATCH_NS - 1)
    assert core.send_log_now(core.LOG_BATCH_BYTES, False, False, since_sent_ns=0)
    assert core.send_log_now(10, False, False, since_sent_ns=5 * ms, batch_ns=2 * ms)


def test_core_does_no_io():
    names = imported_modules(core.__file__)
    assert not names & {"zmq", "socket", "time", "random", "os", "threading", "subprocess"}


def test_messages_round_trip_and_refuse_garbage():
    import random

    from logging_channel import messages as M
    m = M.decode(M.encode(M.LOG, "n12", 3, 17, [b"frames", 2, 123, -5]))
    assert (m.type, m.sender, m.view, m.seq, m.payload) == (M.LOG, "n12", 3, 17, [b"frames", 2, 123, -5])
    assert M.decode(M.encode(M.LOG, "n21", 3, 17, [b"frames", 2, 123, -5])).sender == "n21", "names cannot collide"
    good = M.encode(M.OUTPUT, "A", 1, 0, b"hello")
    rnd = random.Random(5)
    for _ in range(300):
        bad = bytearray(good)
        bad[rnd.randrange(len(bad))] ^= 1 << rnd.randrange(8)
        with pytest.raises(M.BadMessage):
            M.decode(bytes(bad))
    for junk in (b"", b"GET / HTTP/1.1\r\n\r\n", bytes(64)):
        with pytest.raises(M.BadMessage):
            M.decode(junk)
    with pytest.raises(M.BadMessage, match="wrong shape"):
        M.decode(M.encode(M.ACK, "A", 1, 0, "not a list"))


def test_go_live_without_the_primarys_offset_continues_the_guest_clock():
    """A backup that has the state but no log message since (so no word of the primary's
    offset) goes on just after the last guest time, not from the host clock's zero: that
    was a forward jump of the host's uptime (about 5900 s) at one failover."""
    host_now = 5_900 * 10**9
    off, excess = core.go_live_offset(primary_offset_ns=None, skew_ns=0, host_now_ns=host_now, tsc_last=2 * 10**9)
    assert host_now + off == 2 * 10**9 + 1 and excess == 0


def test_go_live_before_the_clocks_were_compared_continues_the_guest_clock():
    """No heartbeat round trip yet, so the skew between the hosts is unknown: taking it
    as 0 made guest time jump by the whole skew (3 s, under load). Guest time goes on
    just after the last value the guest saw."""
    host_now = 100 * 10**9
    off, excess = core.go_live_offset(primary_offset_ns=-50 * 10**9, skew_ns=None, host_now_ns=host_now,
                                      tsc_last=47 * 10**9)
    assert host_now + off == 47 * 10**9 + 1 and excess == 0
    off, _ = core.go_live_offset(primary_offset_ns=-50 * 10**9, skew_ns=3 * 10**9, host_now_ns=host_now,
                                 tsc_last=47 * 10**9)
    assert host_now + off == 53 * 10**9


def test_latency_histogram_percentiles_within_two_percent():
    h = core.Histogram()
    assert h.percentile(99) is None
    for us in range(1, 1001):
        h.add(us * 1000)
    for p, want in ((50, 500), (99, 990), (100, 1000)):
        got = h.percentile(p)
        assert want <= got <= want * 1.021, (p, got)


def test_flow_control_on_unacknowledged_bytes_ends_once_the_backup_has_everything():
    """A stop that finds more unacknowledged log than allowed makes the primary wait;
    the byte count came only with the next stop, which never came while it waited:
    the backup's acknowledgement of every record logged must end the wait."""
    from hypervisor.ft import protocol as P
    from logging_channel.messages import ACK
    t = P.Timing()
    c = P.NodeCore("A", P.PRIMARY, 1, "B", t, now=0)
    c.step(P.AtStop(10, 1000, unsent_bytes=0, unacked_bytes=t.unacked_bytes + 1), 1)
    assert c.must_wait(2)
    c.step(P.Recv(ACK, "B", 1, 5, [1000, 5, 0, 0]), 3)
    assert c.must_wait(4)                       # half of it: still over, as far as the core knows
    c.step(P.Recv(ACK, "B", 1, 10, [1000, 10, 0, 0]), 5)
    assert not c.must_wait(6)


def test_a_backup_named_primary_acknowledges_the_view_only_once_it_has_gone_live():
    """The coordinator makes the next view only after the primary acknowledged the
    current one. A backup named primary of view 2 acknowledged it at once, before its
    go-live transaction; etcd then made view 3 (the idle node added as backup), which
    changed the view key under that transaction: it lost, the new primary halted and the
    run had none (seen under load in test_etcd's quorum test)."""
    from hypervisor.ft import protocol as P
    c = P.NodeCore("C", P.BACKUP, 1, "A", P.Timing(), now=0, managed=True)
    c.step(P.ViewReply(1, "A", "C", 0), 1)
    assert c.acked_view == 1
    out = c.step(P.ViewReply(2, "C", None, 2), 3)
    assert any(isinstance(e, P.Failover) for e in out)
    assert c.acked_view == 1, "not before the go-live was won"
    out = c.step(P.Claimed(2, True), 4)
    assert any(isinstance(e, P.GoLive) for e in out)
    c.step(P.Recording(0, 0, "took over"), 5)
    assert c.role == P.PRIMARY and c.acked_view == 2


def test_kept_output_is_labelled_where_it_really_starts():
    """A re-send or a state transfer labels kept console bytes with their own offset,
    never with an earlier one: bytes already let go would shift what follows (a new
    primary's output once began with the guest's line 261 as if it were line 1)."""
    from hypervisor.console import Console
    c = Console()
    c.retain = True
    for _ in range(5):
        c.write(b"abcd")
    c.confirmed(8)
    assert c.unconfirmed_from(4) == (8, b"abcd" * 3)
    assert c.unconfirmed_from(12) == (12, b"abcd" * 2)
    assert c.unconfirmed_from(20) == (20, b"")
    assert c.broken() is None


def test_output_taken_while_not_kept_is_named():
    """Kept output must end where the guest's output does; a console that let bytes go
    unkept (the first primary of a managed run once did) says so."""
    from hypervisor.console import Console
    c = Console()
    c.write(b"line 1\n")
    c.retain = True
    c.write(b"line 2\n")
    assert c.broken() == "kept output runs from offset 0 to 7, but the guest has written 14 bytes"


def test_observer_says_when_output_waits_past_a_gap_nobody_fills():
    """Output past a gap that stays unfilled for seconds is a stall the observer names
    once (a new primary whose output began past what was delivered stalled silently)."""
    from hypervisor.ft.protocol import OUTPUT, GAP_SAY_NS, ObserverCore, Recv, Say, Tick, Write
    o = ObserverCore(["A", "B"])
    s = 1_000_000_000
    said = lambda out: [e.text for e in out if isinstance(e, Say)]  # noqa: E731
    assert any(isinstance(e, Write) for e in o.step(Recv(OUTPUT, "A", 1, 0, b"line 1\n"), 0))
    assert said(o.step(Recv(OUTPUT, "B", 2, 21, b"line 4\n"), 1 * s)) == []
    assert said(o.step(Tick(), 1 * s + GAP_SAY_NS - 1)) == []
    text = said(o.step(Tick(), 1 * s + GAP_SAY_NS))
    assert len(text) == 1 and "offset 21 on but none at offset 7" in text[0], text
    assert said(o.step(Tick(), 20 * s)) == []                   # once per gap
    out = o.step(Recv(OUTPUT, "B", 2, 7, b"line 2\nline 3\n"), 21 * s)
    assert [e.data for e in out if isinstance(e, Write)] == [b"line 2\nline 3\nline 4\n"]
    assert o.gap is None and said(o.step(Tick(), 40 * s)) == []


def test_observer_reports_a_failover_after_output_with_no_announcement():
    """An observer that took a primary's output before hearing its announcement (started
    late, then the primary was cut off) still reports the next primary as a failover."""
    from hypervisor.ft.protocol import HELLO, OUTPUT, PRIMARY, Announced, ObserverCore, Recv
    o = ObserverCore(["A", "B"])
    o.step(Recv(OUTPUT, "A", 1, 0, b"line 1\n"), 0)
    assert (o.view, o.primary) == (1, "A")
    out = o.step(Recv(HELLO, "B", 3, 0, ["B", PRIMARY, 1, "went live in view 3", 0, 0]), 1)
    assert [(e.node, e.view, e.new_primary) for e in out if isinstance(e, Announced)] == [("B", 3, True)]
    assert o.step(Recv(OUTPUT, "A", 1, 7, b"line 2\n"), 2) == [] and o.stale == 1     # the fence holds
