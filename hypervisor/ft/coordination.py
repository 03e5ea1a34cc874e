"""What a node asks of a consensus store (etcd) to change the view: pure decisions.

The store holds the run's state under a per-run prefix; this module turns what a node
read of it into the one transaction to attempt, as data. It makes no decision of its
own about views: it rebuilds the view service's core (views.py) from what was read
and lets it decide. Nothing here does I/O; ft/etcd.py is the shell that reads, sends
the transaction and reports the outcome.

Keys under the prefix P (values are JSON with a version field ``v``):

- ``P/view``: the current view ``{v, num, primary, backup, inc}``; ``inc`` maps the
  primary and backup to the incarnation they had when the view named them. It changes only by a
  transaction that compares its modification revision with the one the proposer read
  (``create_revision == 0`` for view 1): of two proposals made from the same reading,
  exactly one commits, so views form one chain and two deciders can never both
  advance the view.
- ``P/acked``: ``{v, num}``, the view the primary of ``P/view`` acknowledged (rule 2
  of views.py: the view moves on only after its primary knew it). Written by that
  primary in a transaction that compares ``P/view``'s revision, so a stale primary
  cannot acknowledge a view it is not primary of.
- ``P/member/NAME``: ``{v, addr, ready, acked, lease, inc}`` attached to the node's
  lease: the key exists while the node keeps its lease alive (liveness at the lease's
  granularity, seconds). ``ready``: a backup that reported itself up to date in view
  ``acked``. ``inc``: the node process's incarnation (its start time, as in the view
  service's pings): a member named by the view whose incarnation is newer than the one
  the view recorded for it has restarted and lost its state (rule 5 of views.py). The
  key's create revision orders the first members (rule 6: the first view names the
  earliest primary and the next one backup).
- ``P/dead/NAME``: ``{v, lease}``, written with a view that dropped NAME from its role:
  that incarnation of NAME counts as dead from then on, though its lease may live on
  for seconds (a killed process cannot revoke it). A node that starts again has a new
  lease and counts as alive.
- ``P/golive/NUM``: the node that went live as primary of view NUM; created by a
  transaction that also compares ``P/view``'s revision with the one that carried view
  NUM, so there is exactly one winner, and none once a newer view exists.
- ``P/history/NUM``: why view NUM was made and by whom, written in the transaction that
  made it (``ftvm status`` prints it; it matches the VIEW records of the log).

Failure detection stays on the logging channel: a node whose peer is silent there
(protocol.NodeCore.suspect) passes that peer as ``suspects``, and the view service's
core treats a suspect like a node whose pings stopped. A node whose lease expired is
absent from the members and counts as dead for everyone, which is how idle nodes, and
nodes nobody hears any more, drop out.
"""
from __future__ import annotations

import dataclasses
import json

from .views import View, ViewService

FORMAT = 1                      # the version of the values below; others are refused


class BadValue(ValueError):
    """A value under the run's prefix that is not one ftvm wrote (another format, or
    not JSON): the prefix belongs to something else."""


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    addr: str = ""
    ready: bool = False
    acked: int = 0
    lease: int = 0
    inc: int = 0                    # incarnation of the node process (0: not reported)
    created: int = 0                # create revision of its member key (order of arrival)


@dataclasses.dataclass(frozen=True)
class Reading:
    """One consistent read of the prefix (one range request at ``revision``)."""
    view: View | None               # None: no view yet
    view_rev: int                   # mod revision of P/view (0: absent)
    acked: int                      # the view number in P/acked (0: none)
    members: dict                   # name -> Member (the live ones)
    revision: int = 0
    dead: dict = dataclasses.field(default_factory=dict)    # name -> lease of its dead incarnation
    view_inc: dict = dataclasses.field(default_factory=dict)  # name -> incarnation the view named


@dataclasses.dataclass(frozen=True)
class Proposal:
    """Put ``view`` at P/view if P/view's mod revision is still ``expect_rev`` (0: if
    it does not exist), with its history entry, in one transaction."""
    expect_rev: int
    view: View
    why: str
    by: str
    failed: dict = dataclasses.field(default_factory=dict)  # name -> lease: dropped from a role
    inc: dict = dataclasses.field(default_factory=dict)     # name -> incarnation named by the view


# --- keys and values ----------------------------------------------------------------------------
def keys(prefix: str) -> dict:
    p = prefix.rstrip("/")
    return {"view": f"{p}/view", "acked": f"{p}/acked", "member": f"{p}/member/",
            "golive": f"{p}/golive/", "history": f"{p}/history/", "dead": f"{p}/dead/"}


def member_key(prefix, name):
    return keys(prefix)["member"] + name


def golive_key(prefix, num):
    return f"{keys(prefix)['golive']}{num:08d}"


def history_key(prefix, num):
    return f"{keys(prefix)['history']}{num:08d}"


def encode(obj: dict) -> str:
    return json.dumps({"v": FORMAT, **obj}, sort_keys=True, separators=(",", ":"))


def decode(raw, key="") -> dict:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadValue(f"{key}: not a value ftvm wrote (not JSON)") from None
    if not isinstance(obj, dict) or obj.get("v") != FORMAT:
        raise BadValue(f"{key}: format {obj.get('v') if isinstance(obj, dict) else '?'}, ftvm writes {FORMAT}")
    return obj


def view_value(v: View, inc=None) -> str:
    obj = {"num": v.num, "primary": v.primary, "backup": v.backup}
    if inc:
        obj["inc"] = {n: i for n, i in sorted(inc.items()) if n in (v.primary, v.backup)}
    return encode(obj)


def parse_view(raw, key="view") -> View:
    return parse_view_inc(raw, key)[0]


def parse_view_inc(raw, key="view"):
    o = decode(raw, key)
    if type(o.get("num")) is not int or o["num"] < 1:
        raise BadValue(f"{key}: no view number")
    inc = o.get("inc") or {}
    if not isinstance(inc, dict) or not all(type(i) is int for i in inc.values()):
        raise BadValue(f"{key}: incarnations are not numbers")
    return View(o["num"], o.get("primary"), o.get("backup")), dict(inc)


def parse_member(name, raw, created=0) -> Member:
    o = decode(raw, f"member/{name}")
    return Member(name, str(o.get("addr", "")), bool(o.get("ready", False)), int(o.get("acked", 0)),
                  int(o.get("lease", 0)), int(o.get("inc", 0)), created)


def reading_from(kvs, prefix, revision=0) -> Reading:
    """A Reading from (key, value, mod_revision[, create_revision]) tuples of one range
    over the prefix."""
    k = keys(prefix)
    view, view_rev, acked, members, dead, view_inc = None, 0, 0, {}, {}, {}
    for key, value, mod_rev, *rest in kvs:
        if key == k["view"]:
            (view, view_inc), view_rev = parse_view_inc(value, key), mod_rev
        elif key == k["acked"]:
            acked = int(decode(value, key).get("num", 0))
        elif key.startswith(k["member"]):
            name = key[len(k["member"]):]
            members[name] = parse_member(name, value, rest[0] if rest else mod_rev)
        elif key.startswith(k["dead"]):
            dead[key[len(k["dead"]):]] = int(decode(value, key).get("lease", 0))
    return Reading(view, view_rev, acked, members, revision, dead, view_inc)


# --- the decision ---------------------------------------------------------------------------------
def decide(r: Reading, me: str, suspects=frozenset(), waited_ns: int = 0, first_backup_wait_ns: int = 0
           ) -> Proposal | None:
    """The view change node ``me`` should propose after reading ``r``, or None.

    The view service's core decides, rebuilt from the reading: live members have just
    pinged (with their readiness), suspects and absent nodes have not pinged for ever,
    and the current primary has acknowledged the view if P/acked says so. A member
    named by the view with a newer incarnation than the view recorded pings as a
    restarted node does (view 0, its new incarnation: rule 5).

    No view yet (rule 6): ``first_backup_wait_ns`` > 0 names the earliest member
    primary and the next one backup as soon as two are there; the earliest proposes a
    view without backup only once it has itself waited that long (``waited_ns``: the
    time since its first ping, on its own clock)."""
    now = 1 << 40                   # any time: liveness is decided below, not by the clock
    if r.view is None:
        if me not in r.members:
            return None
        order = sorted((n for n in r.members if n not in suspects), key=lambda n: (r.members[n].created, n))
        vs = ViewService(ping_interval_ns=1 << 50, dead_pings=1, first_backup_wait_ns=first_backup_wait_ns)
        if not first_backup_wait_ns or not order:
            vs.ping(me, 0, now)
        else:
            first = order[0]
            vs.last_ping[first] = now
            vs.first = (first, now - (waited_ns if first == me else 0))
            if len(order) > 1:
                vs.ping(order[1], 0, now)
            else:
                vs.tick(now)
        if vs.view.num == 0:
            return None
        _t, new, why, _since = vs.history[-1]
        return Proposal(0, new, why, me, inc=_named_inc(r, new))
    # A suspicion is about the peer of the suspecting node's view: it counts only
    # between the primary and backup of this view (rule 7 of views.py says the same of
    # the view service's `suspect`). A stale primary of an older view that still hears
    # nothing from its old backup must not fail the node that has since replaced it.
    pair = {r.view.primary, r.view.backup} - {None}
    suspects = frozenset(suspects) & (pair - {me}) if me in pair else frozenset()
    vs = ViewService(ping_interval_ns=1, dead_pings=1)
    vs.view = r.view
    vs.formed = r.view.num == 1 and r.view.backup is not None      # rule 6's view 1
    # The primary acknowledged the view if it wrote so, or if the view's backup is up
    # to date in it: its state came from that primary, in that view (snapshots are
    # fenced by view), so the primary knew it. Without the second half, a primary
    # killed between starting the transfer and its next ping would leave the view stuck.
    b = r.members.get(r.view.backup)
    restarted = {n for n in (r.view.primary, r.view.backup)
                 if n in r.members and n in r.view_inc and r.members[n].inc > r.view_inc[n]}
    vs.acked = r.acked >= r.view.num or (b is not None and b.ready and b.acked == r.view.num
                                         and r.view.backup not in restarted)
    for name, m in r.members.items():
        if name in suspects or r.dead.get(name, -1) == m.lease:
            continue
        vs.last_ping[name] = now
        # A backup counts as up to date only for the view it acknowledged.
        vs.ready[name] = m.ready and m.acked == r.view.num and name not in restarted
        vs.addr[name] = m.addr
    for name in suspects:
        vs.last_ping[name] = 0      # silent on the channel: dead, whatever its lease says
    for name in sorted(restarted):
        if name in vs.last_ping and vs.last_ping[name]:
            vs.incarnation[name] = r.view_inc[name]
            vs.ping(name, 0, now, incarnation=r.members[name].inc)     # a restart: its state is gone
    vs.tick(now)
    if vs.view == r.view:
        return None
    _t, new, why, _since = vs.history[-1]
    dropped = {r.view.primary, r.view.backup} - {new.primary, new.backup, None}
    failed = {n: r.members[n].lease for n in dropped if n in r.members}
    return Proposal(r.view_rev, new, why, me, failed, _named_inc(r, new))


def _named_inc(r: Reading, new: View) -> dict:
    """The incarnation each node of ``new`` is named in: the one the current view
    recorded if it named it too, else the member's."""
    inc = {}
    for n in (new.primary, new.backup):
        if n is None:
            continue
        if r.view is not None and n in (r.view.primary, r.view.backup) and n in r.view_inc:
            inc[n] = r.view_inc[n]
        elif n in r.members and r.members[n].inc:
            inc[n] = r.members[n].inc
    return inc


def should_ack(r: Reading, me: str) -> bool:
    """Whether ``me`` (primary of the view read, and knowing it) should write P/acked."""
    return r.view is not None and r.view.primary == me and r.acked < r.view.num


# --- transactions as data (etcd's /v3/kv/txn body, keys and values still text) -----------------------
def txn_propose(prefix, p: Proposal, unix_s: float) -> dict:
    k = keys(prefix)
    cmp = ({"target": "CREATE", "key": k["view"], "create_revision": 0} if p.expect_rev == 0 else
           {"target": "MOD", "key": k["view"], "mod_revision": p.expect_rev})
    hist = encode({"num": p.view.num, "primary": p.view.primary, "backup": p.view.backup, "why": p.why,
                   "by": p.by, "unix": round(unix_s, 3)})
    return {"compare": [cmp],
            "success": [_put(k["view"], view_value(p.view, p.inc)), _put(history_key(prefix, p.view.num), hist)]
            + [_put(k["dead"] + n, encode({"lease": lease})) for n, lease in sorted(p.failed.items())],
            "failure": []}


def txn_ack(prefix, view_rev, num) -> dict:
    k = keys(prefix)
    return {"compare": [{"target": "MOD", "key": k["view"], "mod_revision": view_rev}],
            "success": [_put(k["acked"], encode({"num": num}))], "failure": []}


def txn_golive(prefix, view_rev, num, name, unix_s: float) -> dict:
    """Go-live for view ``num`` (which P/view holds at ``view_rev``): exactly one winner."""
    k = keys(prefix)
    g = golive_key(prefix, num)
    return {"compare": [{"target": "MOD", "key": k["view"], "mod_revision": view_rev},
                        {"target": "CREATE", "key": g, "create_revision": 0}],
            "success": [_put(g, encode({"node": name, "unix": round(unix_s, 3)}))], "failure": []}


def _put(key, value, lease=None):
    req = {"key": key, "value": value}
    if lease:
        req["lease"] = lease
    return {"request_put": req}
