"""etcd's behaviour for the simulation (sim.py): a key-value store with revisions,
compare-and-swap transactions, leases that expire on the simulated clock, and a lost
quorum (every request fails while it lasts, as a linearizable request to a cluster
without a leader does). It has ft/etcd.py's Store interface, so the simulation runs
the real etcd shell's logic (EtcdViewClient) against it. Pure: time is read from the
callable it is given.
"""
from __future__ import annotations

from .etcd import Unavailable

NS = 1_000_000_000


class SimStore:
    def __init__(self, now):
        self.now = now                  # () -> simulated ns
        self.rev = 1
        self.kv = {}                    # key -> [value, create_rev, mod_rev, lease]
        self.leases = {}                # id -> (expires at ns, ttl s)
        self.next_lease = 100
        self.quorum = True
        self.cut = set()                # clients cut off from every member (by name)
        self.ops = 0
        self.changes = []               # (revision, key, value) of every committed put

    # --- faults -------------------------------------------------------------------------------
    def _check(self):
        if not self.quorum:
            raise Unavailable("no quorum")
        self.ops += 1
        self._expire()

    def _expire(self):
        t = self.now()
        gone = [lid for lid, (exp, _) in self.leases.items() if exp <= t]
        for lid in gone:
            del self.leases[lid]
            dead = [k for k, e in self.kv.items() if e[3] == lid]
            if dead:
                self.rev += 1
                for k in dead:
                    del self.kv[k]

    # --- the Store interface --------------------------------------------------------------------
    def range_prefix(self, prefix):
        self._check()
        kvs = [(k, e[0], e[2], e[1]) for k, e in sorted(self.kv.items()) if k.startswith(prefix)]
        return kvs, self.rev

    def txn(self, txn):
        self._check()
        ok = all(self._compare(c) for c in txn["compare"])
        reqs = txn["success"] if ok else txn.get("failure", [])
        if reqs:
            self.rev += 1
            for r in reqs:
                put = r["request_put"]
                self._put(put["key"], put["value"], put.get("lease"))
        return ok, self.rev

    def _compare(self, c):
        e = self.kv.get(c["key"])
        if c["target"] == "CREATE":
            return (e[1] if e else 0) == c["create_revision"]
        if c["target"] == "MOD":
            return (e[2] if e else 0) == c["mod_revision"]
        raise AssertionError(c)

    def _put(self, key, value, lease=None):
        if lease is not None and lease not in self.leases:
            raise Unavailable("requested lease not found")
        e = self.kv.get(key)
        self.kv[key] = [value, e[1] if e else self.rev, self.rev, lease]
        self.changes.append((self.rev, key, value))

    def put(self, key, value, lease=None):
        self._check()
        self.rev += 1
        self._put(key, value, lease)

    def grant(self, ttl_s):
        self._check()
        self.next_lease += 1
        self.leases[self.next_lease] = (self.now() + ttl_s * NS, ttl_s)
        return self.next_lease

    def keepalive(self, lease):
        self._check()
        if lease not in self.leases:
            return -1
        ttl = self.leases[lease][1]
        self.leases[lease] = (self.now() + ttl * NS, ttl)
        return ttl

    def revoke(self, lease):
        self._check()
        self.leases[lease] = (0, 0)
        self._expire()

    def lost_quorum(self):
        """A new leader extends every lease (etcd does so on election): no lease expires
        because of the time without quorum."""
        self.quorum = False

    def regained_quorum(self, extend_ns):
        self.quorum = True
        for lid, (exp, ttl) in list(self.leases.items()):
            self.leases[lid] = (exp + extend_ns, ttl)
