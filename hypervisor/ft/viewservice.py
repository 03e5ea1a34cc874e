"""The view service as a process: a thin ZeroMQ shell (ROUTER socket) around core.py.

Request (msgpack): ["ping", name, viewnum, ready, addr, incarnation, suspect] (the last
two may be left out: incarnation is the node process's start time in ns, suspect the
backup a primary cannot hear, or None); reply: [viewnum, primary, backup, {name: addr}].
A request that fails its checks gets ["error", reason].
"""
from __future__ import annotations

import sys
import time

import msgpack
import zmq

from . import priority
from .views import ViewService


REQUESTS_PER_TICK_MAX = 256    # requests taken between two ticks (a bound, not a batch size)


def serve(listen: str, ping_interval_ms: int = 100, dead_pings: int = 5, say=None, stop=None, state_file=None,
          first_backup_wait_ms: int = 0):
    say = say or (lambda m: print(f"ftvm viewservice: {m}", file=sys.stderr, flush=True))
    vs = ViewService(ping_interval_ms * 1_000_000, dead_pings, first_backup_wait_ms * 1_000_000)
    # A service descheduled under load judges nodes dead on pings it has not read: ask
    # to run as soon as one arrives (priority.py), for libzmq's thread too.
    priority.raise_this_thread(inherited=True)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 1 << 16)
    sock.bind(listen)
    say(f"serving on {sock.getsockopt(zmq.LAST_ENDPOINT).decode()} (ping interval {ping_interval_ms} ms, "
        f"dead after {dead_pings} missed)")
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    last = vs.view
    bad = 0
    try:
        while stop is None or not stop():
            events = dict(poller.poll(ping_interval_ms / 2))
            now = time.monotonic_ns()
            # Every request already queued is handled before the tick judges anyone: a
            # service descheduled under load wakes up to a ping from each node, and
            # taking one and then ticking declared the others dead on pings that were
            # waiting in its own queue (live backups failed, views 4 to 6 in one run).
            for _ in range(REQUESTS_PER_TICK_MAX if sock in events else 0):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                reply = _handle(vs, frames[-1], now)
                if reply is None:
                    bad += 1
                    reply = ["error", "malformed request"]
                sock.send_multipart([frames[0], b"", msgpack.packb(reply, use_bin_type=True)])
            vs.tick(now)
            if vs.view != last:
                h = vs.history[-1]
                extra = "" if h[3] is None else f", {h[3] / 1e6:.0f} ms after the first missed ping"
                say(f"{vs.view} (was {last}; {h[2]}{extra})")
                last = vs.view
                if state_file:
                    _write_state(state_file, vs)
    finally:
        sock.close(0)
        ctx.term()


def _write_state(path, vs):
    import json
    import os
    t0 = time.monotonic_ns()
    wall = time.time()
    st = {"view": [vs.view.num, vs.view.primary, vs.view.backup],
          "history": [{"num": v.num, "primary": v.primary, "backup": v.backup, "why": why,
                       "unix": wall - (t0 - t) / 1e9,
                       "after_missed_ping_ms": None if since is None else since / 1e6}
                      for t, v, why, since in vs.history]}
    with open(path + ".tmp", "w") as f:
        json.dump(st, f)
    os.replace(path + ".tmp", path)


def _handle(vs, data, now):
    try:
        req = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return None
    if not (isinstance(req, list) and len(req) in (5, 7) and req[0] == "ping" and isinstance(req[1], str)
            and type(req[2]) is int and isinstance(req[3], bool) and isinstance(req[4], str)):
        return None
    incarnation = suspect = None
    if len(req) == 7:
        incarnation, suspect = req[5], req[6]
        if type(incarnation) is not int or not (suspect is None or isinstance(suspect, str)):
            return None
    v = vs.ping(req[1], req[2], now, ready=req[3], addr=req[4], incarnation=incarnation, suspect=suspect)
    return [v.num, v.primary, v.backup, dict(vs.addr)]


class ViewClient:
    """A node's side: ping, get the view. One socket, used by one thread."""

    def __init__(self, address: str, timeout_ms: int = 200):
        self.address = address
        self.timeout_ms = timeout_ms
        self.ctx = zmq.Context.instance()
        self._open()

    def _open(self):
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
        self.sock.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        self.sock.connect(self.address)

    def ping(self, name, viewnum, ready, addr, incarnation=None, suspect=None):
        """(viewnum, primary, backup, addrs), or None if the service did not answer."""
        req = ["ping", name, viewnum, ready, addr]
        if incarnation is not None:
            req += [incarnation, suspect]
        try:
            self.sock.send(msgpack.packb(req, use_bin_type=True))
            rep = msgpack.unpackb(self.sock.recv(), raw=False, strict_map_key=True)
        except zmq.ZMQError:
            self.sock.close(0)       # a REQ socket that missed its reply is stuck: start over
            self._open()
            return None
        if not (isinstance(rep, list) and len(rep) == 4 and type(rep[0]) is int):
            return None
        return rep[0], rep[1], rep[2], rep[3]

    def close(self):
        self.sock.close(0)
