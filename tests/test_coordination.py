"""The pure decisions behind the etcd coordinator (hypervisor/ft/coordination.py):
what a node proposes after reading the run's prefix, as transactions (data)."""

import pytest

from conftest import imported_modules
from hypervisor.ft import coordination as C
from hypervisor.ft.views import View

PFX = "/ftvm/t"


def reading(view=None, rev=0, acked=0, dead=None, view_inc=None, **members):
    ms = {n: C.Member(n, f"tcp://{n}", *m) if isinstance(m, tuple) else C.Member(n, f"tcp://{n}")
          for n, m in members.items()}
    return C.Reading(view, rev, acked, ms, 100, dead or {}, view_inc or {})


def test_first_node_proposes_view_one_only_if_no_view_exists():
    p = C.decide(reading(A=()), "A")
    assert p.view == View(1, "A", None) and p.expect_rev == 0
    txn = C.txn_propose(PFX, p, 0.0)
    assert txn["compare"] == [{"target": "CREATE", "key": PFX + "/view", "create_revision": 0}]
    assert C.decide(reading(), "A") is None, "a node that has not registered proposes nothing"


def test_idle_node_becomes_backup_only_after_the_primary_acknowledged():
    v = View(1, "A", None)
    assert C.decide(reading(v, 5, acked=0, A=(), B=()), "B") is None
    p = C.decide(reading(v, 5, acked=1, A=(), B=()), "B")
    assert p.view == View(2, "A", "B") and p.expect_rev == 5
    assert C.txn_propose(PFX, p, 0.0)["compare"] == [{"target": "MOD", "key": PFX + "/view", "mod_revision": 5}]


def test_suspected_primary_is_replaced_by_a_ready_backup_only():
    v = View(2, "A", "B")
    live = dict(A=(), B=(True, 2), C=())
    p = C.decide(reading(v, 7, acked=2, **live), "B", suspects={"A"})
    assert p.view == View(3, "B", "C") and p.failed == {"A": 0}
    assert C.decide(reading(v, 7, acked=2, **live), "B") is None, "no suspicion, live lease: nothing to do"
    not_ready = dict(A=(), B=(True, 1), C=())          # ready, but for another view
    assert C.decide(reading(v, 7, acked=2, **not_ready), "B", suspects={"A"}) is None


def test_an_expired_lease_counts_as_dead():
    v = View(2, "A", "B")
    p = C.decide(reading(v, 7, acked=2, B=(True, 2), C=()), "C")
    assert p.view == View(3, "B", "C")


def test_a_dead_incarnation_is_not_named_backup_until_it_has_a_new_lease():
    v = View(3, "C", None)
    dead = {"A": 11}
    assert C.decide(reading(v, 9, acked=3, dead=dead, A=(False, 0, 11), C=()), "C") is None
    p = C.decide(reading(v, 9, acked=3, dead=dead, A=(False, 0, 12), C=()), "C")
    assert p.view == View(4, "C", "A")


def test_primary_suspecting_its_backup_drops_it():
    v = View(2, "A", "B")
    p = C.decide(reading(v, 7, acked=2, A=(), B=(True, 2, 4), C=()), "A", suspects={"B"})
    assert p.view == View(3, "A", "C") and p.failed == {"B": 4}
    txn = C.txn_propose(PFX, p, 1.5)
    puts = [r["request_put"]["key"] for r in txn["success"]]
    assert puts == [PFX + "/view", PFX + "/history/00000003", PFX + "/dead/B"]


def test_golive_has_one_winner_and_none_once_a_newer_view_exists():
    txn = C.txn_golive(PFX, 12, 3, "B", 0.0)
    assert {"target": "MOD", "key": PFX + "/view", "mod_revision": 12} in txn["compare"]
    assert {"target": "CREATE", "key": PFX + "/golive/00000003", "create_revision": 0} in txn["compare"]


def test_values_of_another_format_are_refused():
    with pytest.raises(C.BadValue):
        C.reading_from([(PFX + "/view", '{"v": 99, "num": 1}', 3)], PFX)
    with pytest.raises(C.BadValue):
        C.reading_from([(PFX + "/view", "not json", 3)], PFX)
    r = C.reading_from([(PFX + "/view", C.view_value(View(2, "A", "B")), 3),
                        (PFX + "/member/A", C.encode({"addr": "x", "lease": 5}), 4)], PFX)
    assert r.view == View(2, "A", "B") and r.view_rev == 3 and r.members["A"].lease == 5


def test_the_core_does_no_io():
    names = imported_modules(C.__file__)
    assert not names & {"socket", "time", "threading", "random", "zmq", "requests", "etcd3gw", "os"}, names


def test_a_ready_backup_stands_for_the_primarys_acknowledgement():
    """The primary died before writing P/acked, but its backup is up to date in the
    view: its state came from that primary in that view, so the view may move on."""
    v = View(2, "A", "C")
    p = C.decide(reading(v, 7, acked=1, B=(), C=(True, 2)), "C", suspects={"A"})
    assert p is not None and p.view == View(3, "C", "B")
    assert C.decide(reading(v, 7, acked=1, B=(), C=(False, 2)), "C", suspects={"A"}) is None


def test_a_member_named_by_the_view_with_a_newer_incarnation_has_restarted():
    """Rule 5 with incarnations: the view records the incarnation it named each node
    in; a member key of the same name with a newer one is a new process without state."""
    v = View(2, "A", "B")
    named = {"A": 10, "B": 20}
    same = dict(A=(False, 2, 1, 10), B=(True, 2, 2, 20), C=(False, 0, 3, 30))
    assert C.decide(reading(v, 7, acked=2, view_inc=named, **same), "C") is None
    backup_restarted = dict(same, B=(False, 0, 4, 21))
    p = C.decide(reading(v, 7, acked=2, view_inc=named, **backup_restarted), "B")
    assert p is not None and p.view == View(3, "A", "C") and p.inc == {"A": 10, "C": 30}, p
    primary_restarted = dict(same, A=(False, 0, 5, 11))
    p = C.decide(reading(v, 7, acked=2, view_inc=named, **primary_restarted), "A")
    assert p is not None and p.view == View(3, "B", "C"), p
    late = dict(same, B=(True, 2, 2, 19))       # an older incarnation: a late write, not a restart
    assert C.decide(reading(v, 7, acked=2, view_inc=named, **late), "C") is None
    txn = C.txn_propose(PFX, p, 0.0)
    value = txn["success"][0]["request_put"]["value"]
    assert C.parse_view_inc(value) == (View(3, "B", "C"), {"B": 20, "C": 30})


def test_the_first_view_waits_for_a_second_member_and_names_it_backup():
    """Rule 6 on etcd: the earliest member (create revision) is primary, the next its backup."""
    wait = 5_000_000_000
    one = {"B": C.Member("B", "b", inc=1, created=4)}
    assert C.decide(C.Reading(None, 0, 0, one), "B", waited_ns=10**9, first_backup_wait_ns=wait) is None
    p = C.decide(C.Reading(None, 0, 0, one), "B", waited_ns=wait, first_backup_wait_ns=wait)
    assert p.view == View(1, "B", None) and p.expect_rev == 0
    two = dict(one, A=C.Member("A", "a", inc=2, created=6))
    p = C.decide(C.Reading(None, 0, 0, two), "A", waited_ns=0, first_backup_wait_ns=wait)
    assert p.view == View(1, "B", "A") and p.inc == {"B": 1, "A": 2}, p
    assert C.decide(C.Reading(None, 0, 0, two), "A").view == View(1, "A", None), "no wait: the first node alone"


def test_the_view_one_backup_replaces_a_primary_that_never_acknowledged():
    v = View(1, "A", "B")
    p = C.decide(reading(v, 3, acked=0, B=(True, 1), C=()), "B", suspects={"A"})
    assert p is not None and p.view == View(2, "B", "C"), p


def test_a_suspicion_counts_only_between_the_primary_and_backup_of_the_view():
    """Found by the partition tests: the primary of view 1, stalled while its backup A
    took over, suspected A (silent to it since) and failed A, primary of view 2."""
    v = View(2, "A", "B")
    live = dict(A=(False, 2), B=(True, 2), C=())
    assert C.decide(reading(v, 7, acked=2, **live), "C", suspects={"A"}) is None
    assert C.decide(reading(v, 7, acked=2, **live), "B", suspects={"A"}).view == View(3, "B", "C")
    assert C.decide(reading(v, 7, acked=2, **live), "B", suspects={"C"}) is None
