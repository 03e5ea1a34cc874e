"""The etcd coordinator: a thin shell around coordination.py (--coordinator etcd://...).

A node reaches etcd only through ``EtcdViewClient``, which has the view service
client's interface (``ping(name, viewnum, ready, addr) -> (num, primary, backup,
addrs)``, None when etcd did not answer) and the arbiter's (``claim(view, node)``,
``owner(view)``), so managed.py's logic is the same for both coordinators.

Each ping: keep the node's lease alive, write its member key if what it reports
changed, read the run's prefix in one linearizable range request, acknowledge the view
if this node is its primary, and attempt the transaction coordination.decide returns.
Every node can decide: proposals are compare-and-swap transactions on the view key's
revision, so of concurrent proposals exactly one commits, and there is no decider
process whose death would need a takeover.

Without quorum every request fails within the client timeout (``TIMEOUT_S``); ping
returns None, nothing changes, and the node tries again on its next ping.
"""
from __future__ import annotations

import base64
import re
import threading
import time

from ..errors import CoordinatorFailed
from . import coordination as C

TIMEOUT_S = 0.5                 # one request to one member; a member without quorum fails within it
LEASE_TTL_S = 4                 # a dead node's member key disappears this long after its last keep-alive
KEEPALIVE_S = 1.0
DEFAULT_PREFIX = "/ftvm/default"
_ENDPOINT = re.compile(r"^([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(\d{1,5})$")


class BadAddress(ValueError):
    """--coordinator is not etcd://HOST:PORT[,HOST:PORT...][/PREFIX]."""


class Unavailable(Exception):
    """No endpoint answered this request (down, partitioned, or without quorum)."""


def parse_url(url: str):
    """'etcd://h1:p1,h2:p2/prefix' -> ([(h1, p1), (h2, p2)], '/prefix')."""
    if not url.startswith("etcd://"):
        raise BadAddress(f"{url!r}: a coordinator is etcd://HOST:PORT[,HOST:PORT...][/PREFIX] or etcd-local")
    rest = url[len("etcd://"):]
    hosts, slash, prefix = rest.partition("/")
    eps = []
    for part in hosts.split(","):
        m = _ENDPOINT.match(part.strip())
        if not m or not 0 < int(m.group(2)) < 65536:
            raise BadAddress(f"{url!r}: {part!r} is not HOST:PORT")
        eps.append((m.group(1).strip("[]"), int(m.group(2))))
    prefix = ("/" + prefix.strip("/")) if slash and prefix.strip("/") else DEFAULT_PREFIX
    return eps, prefix


def _b64(s) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _unb64(s) -> str:
    return base64.b64decode(s).decode()


def _range_end(prefix: str) -> str:
    b = bytearray(prefix.encode())
    b[-1] += 1
    return bytes(b).decode()


def encode_txn(txn: dict) -> dict:
    """coordination's transactions carry text keys and values; etcd's JSON wants base64."""
    def conv(d):
        return {k: (_b64(v) if k in ("key", "value", "range_end") else v) for k, v in d.items()}
    out = {"compare": [conv(c) for c in txn["compare"]]}
    for branch in ("success", "failure"):
        out[branch] = [{op: conv(req) for op, req in r.items()} for r in txn.get(branch, [])]
    return out


class Store:
    """Requests to one of the cluster's endpoints; on a failure, the next endpoint.
    One per thread (the HTTP session is not shared)."""

    def __init__(self, endpoints, timeout_s=TIMEOUT_S):
        import etcd3gw
        from etcd3gw import exceptions as ex
        self._ex = ex
        self.clients = [etcd3gw.Etcd3Client(host=h, port=p, timeout=timeout_s, api_path="/v3/") for h, p in endpoints]
        self.i = 0
        self.ops = 0                    # requests that reached etcd (for the bench)

    def call(self, path, body):
        last = None
        for k in range(len(self.clients)):
            c = self.clients[(self.i + k) % len(self.clients)]
            try:
                out = c.post(c.get_url(path), json=body)
                self.i = (self.i + k) % len(self.clients)
                self.ops += 1
                return out
            except (self._ex.Etcd3Exception, OSError, ValueError) as e:
                last = e
        self.i = (self.i + 1) % len(self.clients)
        raise Unavailable(_one_line(last))

    def range_prefix(self, prefix):
        r = self.call("/kv/range", {"key": _b64(prefix), "range_end": _b64(_range_end(prefix))})
        rev = int(r.get("header", {}).get("revision", 0))
        kvs = [(_unb64(kv["key"]), _unb64(kv.get("value", "")), int(kv.get("mod_revision", 0)),
                int(kv.get("create_revision", 0))) for kv in r.get("kvs", [])]
        return kvs, rev

    def txn(self, txn):
        r = self.call("/kv/txn", encode_txn(txn))
        return bool(r.get("succeeded", False)), int(r.get("header", {}).get("revision", 0))

    def put(self, key, value, lease=None):
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        self.call("/kv/put", body)

    def grant(self, ttl_s):
        return int(self.call("/lease/grant", {"TTL": ttl_s, "ID": 0})["ID"])

    def keepalive(self, lease):
        r = self.call("/lease/keepalive", {"ID": lease})
        return int(r.get("result", {}).get("TTL", -1))

    def revoke(self, lease):
        self.call("/kv/lease/revoke", {"ID": lease})


def _one_line(e):
    if e is None:
        return "no endpoint"
    text = " ".join(str(x) for x in (getattr(e, "detail_text", None), *e.args) if x) or str(e)
    if "Connection refused" in text:
        return "connection refused"
    if "NameResolutionError" in text or "Name or service not known" in text:
        return "host name does not resolve"
    if "timed out" in text.lower() or "timeout" in text.lower():
        return "timed out"
    return text.splitlines()[0][:160] if text else type(e).__name__


def check_reachable(url: str, wait_s: float = 3.0):
    """At start: some endpoint answers as etcd within wait_s, or CoordinatorFailed with
    one line saying why. Returns (endpoints, prefix)."""
    try:
        eps, prefix = parse_url(url)
    except BadAddress as e:
        raise CoordinatorFailed(str(e)) from None
    try:
        import etcd3gw  # noqa: F401
    except ImportError:
        raise CoordinatorFailed("the etcd client is not installed (pip install etcd3gw, or make setup)") from None
    s = Store(eps)
    deadline = time.monotonic() + wait_s
    why = ""
    while True:
        try:
            st = s.call("/maintenance/status", {})
            if "version" not in st:
                raise CoordinatorFailed(f"{url}: answers, but not as etcd")
            kvs, _rev = s.range_prefix(prefix + "/")
            C.reading_from(kvs, prefix)      # refuse a prefix holding values ftvm did not write
            return eps, prefix
        except Unavailable as e:
            why = str(e)
        except C.BadValue as e:
            raise CoordinatorFailed(f"{url}: {e}") from None
        if time.monotonic() > deadline:
            raise CoordinatorFailed(f"etcd at {','.join(f'{h}:{p}' for h, p in eps)} unreachable ({why})")
        time.sleep(0.1)                 # retry interval while the cluster comes up


class EtcdViewClient:
    """One node's view of the run in etcd. ``ping`` runs on the node's coordinator
    thread; ``claim`` on its main thread (each thread has its own Store)."""

    def __init__(self, url: str, name: str, suspects=lambda: frozenset(), say=None, store=None,
                 clock=time.monotonic, wall=time.time, incarnation=None, first_backup_wait_ns=0):
        """``store``, ``clock`` and ``wall``: the simulation's (sim.py) in place of etcd
        and the process's clocks. ``incarnation``: the node process's (its start time;
        a restart has a larger one). ``first_backup_wait_ns``: rule 6 of views.py (the
        first view waits that long for a second node)."""
        self.eps, self.prefix = parse_url(url)
        self.fixed_store = store
        self.clock = clock
        self.wall = wall
        self.name = name
        self.suspects = suspects
        self.say = say or (lambda m: None)
        self.local = threading.local()
        self.stores = []
        self.lock = threading.Lock()
        self.view_rev = {}              # view number -> mod revision of P/view that carried it
        self.lease = None
        self.lease_at = 0.0
        self.written = None             # the member value etcd has
        self.proposed = 0               # proposals that committed (for status)
        self.unavailable = 0            # pings etcd did not answer (no quorum, unreachable)
        self.last_reading = None
        self.incarnation = time.time_ns() if incarnation is None else incarnation
        self.first_backup_wait_ns = first_backup_wait_ns
        self.first_ping_at = None       # clock() of this node's first ping (rule 6's wait)

    def store(self) -> Store:
        if self.fixed_store is not None:
            return self.fixed_store
        s = getattr(self.local, "store", None)
        if s is None:
            s = self.local.store = Store(self.eps)
            self.stores.append(s)
        return s

    def ops(self):
        """Requests this node made to etcd so far (every thread)."""
        return sum(s.ops for s in list(self.stores))

    # --- the view service client's interface ---------------------------------------------------
    def ping(self, name, viewnum, ready, addr, incarnation=None, suspect=None):
        """``incarnation`` and ``suspect`` as the view service's client takes them: the
        incarnation is this client's own (given at construction), and suspects come from
        the channel (``suspects``)."""
        try:
            return self._ping(viewnum, ready, addr)
        except Unavailable:
            self.unavailable += 1
            return None

    def _ping(self, viewnum, ready, addr):
        r, p = self.read_and_decide(viewnum, ready, addr)
        return self.propose(r, p)

    def read_and_decide(self, viewnum, ready, addr):
        """The first half of a ping: report, read, acknowledge, decide. (The simulation
        lets time pass between the halves, as the network does between requests.)"""
        s = self.store()
        if self.first_ping_at is None:
            self.first_ping_at = self.clock()
        self._keep_lease(s)
        value = C.encode({"addr": addr, "ready": bool(ready), "acked": viewnum, "lease": self.lease,
                          "inc": self.incarnation})
        if value != self.written:
            try:
                s.put(C.member_key(self.prefix, self.name), value, self.lease)
            except Unavailable as e:
                if "lease" in str(e):
                    self.lease = None   # it expired (a long pause): a new one at the next ping
                raise
            self.written = value
        kvs, rev = s.range_prefix(self.prefix + "/")
        try:
            r = C.reading_from(kvs, self.prefix, rev)
        except C.BadValue as e:
            self.say(f"etcd: {e}; ignored")
            raise Unavailable(str(e)) from None
        self._note(r)
        if C.should_ack(r, self.name) and viewnum == r.view.num:
            s.txn(C.txn_ack(self.prefix, r.view_rev, r.view.num))
        waited_ns = int((self.clock() - self.first_ping_at) * 1e9)
        return r, C.decide(r, self.name, frozenset(self.suspects()), waited_ns, self.first_backup_wait_ns)

    def propose(self, r, p):
        """The second half: attempt the proposal, if any; the view as it now stands."""
        s = self.store()
        if p is not None:
            won, new_rev = s.txn(C.txn_propose(self.prefix, p, self.wall()))
            if won:
                self.proposed += 1
                self.say(f"etcd: {p.view} ({p.why})")
                r = C.Reading(p.view, new_rev, r.acked, r.members, new_rev, r.dead, p.inc)
                self._note(r)
        v = r.view
        addrs = {n: m.addr for n, m in r.members.items() if m.addr}
        if v is None:
            return 0, None, None, addrs
        return v.num, v.primary, v.backup, addrs

    def _note(self, r):
        self.last_reading = r
        if r.view is not None:
            with self.lock:
                self.view_rev[r.view.num] = r.view_rev

    def _keep_lease(self, s):
        now = self.clock()
        if self.lease is not None and now - self.lease_at < KEEPALIVE_S:
            return
        if self.lease is not None and s.keepalive(self.lease) > 0:
            self.lease_at = now
            return
        self.lease = s.grant(LEASE_TTL_S)      # first time, or the old lease expired
        self.lease_at = now
        self.written = None                    # the member key went with the old lease

    # --- the arbiter's interface (go-live) -----------------------------------------------------
    def claim(self, view: int, node: str) -> bool:
        """Go-live for ``view``: True if this node won it. Waits while etcd is
        unavailable (a failover never happens without quorum)."""
        while True:
            won = self.try_claim(view, node)
            if won is not None:
                return won
            time.sleep(0.05)            # retry interval: etcd has no quorum or is unreachable

    def try_claim(self, view: int, node: str):
        """One attempt: True (won), False (lost), None (etcd unavailable)."""
        with self.lock:
            rev = self.view_rev.get(view)
        if rev is None:
            return False                # never saw this view as current: not ours to claim
        try:
            won, _ = self.store().txn(C.txn_golive(self.prefix, rev, view, node, self.wall()))
            return won
        except Unavailable:
            return None

    def owner(self, view: int):
        try:
            kvs, _ = self.store().range_prefix(C.golive_key(self.prefix, view))
        except Unavailable:
            return None
        for _k, v, *_r in kvs:
            try:
                return C.decode(v).get("node")
            except C.BadValue:
                return None
        return None

    def close(self):
        if self.lease is not None:
            try:
                self.store().revoke(self.lease)
            except Unavailable:
                pass


# --- ftvm status ---------------------------------------------------------------------------------------
def describe(url: str):
    """Members (endpoint, id, leader, revision, reachable), the view and the history
    under the prefix, for `ftvm status`."""
    eps, prefix = parse_url(url)
    out = {"url": url, "prefix": prefix, "members": [], "view": None, "history": [], "revision": None}
    leader_ids = set()
    for h, p in eps:
        s = Store([(h, p)])
        row = {"endpoint": f"{h}:{p}", "reachable": False}
        try:
            st = s.call("/maintenance/status", {})
            hdr = st.get("header", {})
            row.update(reachable=True, id=str(hdr.get("member_id", "")), revision=int(hdr.get("revision", 0)),
                       version=st.get("version"), leader=str(st.get("leader", "")), raft_term=int(hdr.get("raft_term", 0)))
            leader_ids.add(row["leader"])
        except Unavailable as e:
            row["error"] = str(e)
        out["members"].append(row)
    for row in out["members"]:
        row["is_leader"] = row.get("reachable", False) and row.get("id") in leader_ids
    s = Store(eps)
    try:
        kvs, rev = s.range_prefix(prefix + "/")
        out["revision"] = rev
        r = C.reading_from(kvs, prefix, rev)
        if r.view is not None:
            out["view"] = [r.view.num, r.view.primary, r.view.backup]
        out["acked"] = r.acked
        out["nodes"] = {n: {"addr": m.addr, "ready": m.ready, "acked": m.acked} for n, m in r.members.items()}
        k = C.keys(prefix)
        for key, value, *_mr in sorted(kvs):
            if key.startswith(k["history"]):
                out["history"].append(C.decode(value, key))
            elif key.startswith(k["golive"]):
                out.setdefault("golive", {})[int(key[len(k["golive"]):])] = C.decode(value, key).get("node")
    except (Unavailable, C.BadValue) as e:
        out["error"] = str(e)
    return out
