"""ZeroMQ shell: one process's sockets, owned by one I/O thread.

Every process (node or observer) binds one PULL socket, its inbox, where everybody
sends to it, and keeps one PUSH socket per peer it sends to. Only the I/O thread
touches sockets: other threads hand it outgoing messages through an inproc pipe, so a
send from the emulation thread costs a hop of a few microseconds and never blocks.
Incoming messages are checked (logging_channel.messages); garbage is counted and
dropped.

Authentication: with a key (the file named by FTVM_CHANNEL_KEY_FILE; `ftvm run` makes
one per run, `ftvm node` and `ftvm observe` take --key-file), every message carries a
16-byte keyed BLAKE2b tag over its bytes, and a message whose tag does not verify is
garbage. A sender that is not a member of the run is refused by the shells even so. Sends never block either: a peer that is gone just does not get the message,
and the protocol above (acknowledgements, retransmission, heartbeats) copes.
"""
from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import math
import os
import random
import socket
import threading
import time

import zmq

from logging_channel import messages as M

from . import faults, priority
from ..profiling import thread_profile

_ids = itertools.count()


PORT_LOW = 10000             # free_tcp_port picks from PORT_LOW up to the ephemeral range


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_tcp_port(host="127.0.0.1") -> int:
    """A port that is free now, for a process started next to bind. Chosen below the
    kernel's ephemeral range: a port the kernel handed out for bind(0) is free again
    once we close it, and the kernel may hand it to anyone's next bind(0) or connect
    before our node binds it (a backup died of EADDRINUSE that way on a busy machine, and
    the run went on unprotected). Outside that range only another caller of this
    function can take it, one chance in thousands."""
    rnd = random.SystemRandom()
    high = _ephemeral_low()
    for _ in range(64 if high - PORT_LOW > 1000 else 0):
        port = rnd.randrange(PORT_LOW, high)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


TAG_BYTES = 16
KEY_ENV = "FTVM_CHANNEL_KEY_FILE"


class ChannelKey:
    """The run's shared secret: tags outgoing messages, checks incoming ones."""

    def __init__(self, key: bytes):
        if not 16 <= len(key) <= 64:
            raise ValueError(f"a channel key has 16 to 64 bytes, this one {len(key)}")
        self.key = key

    @classmethod
    def from_env(cls):
        path = os.environ.get(KEY_ENV)
        if not path:
            return None
        with open(path, "rb") as f:
            return cls(f.read().strip())

    @staticmethod
    def make(path: str):
        """A new random key in ``path`` (readable by its owner only)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32).hex().encode())
        return path

    def seal(self, data: bytes) -> bytes:
        return data + hashlib.blake2b(data, key=self.key, digest_size=TAG_BYTES).digest()

    def open(self, data: bytes):
        """The message without its tag, or None if the tag does not verify."""
        if len(data) < TAG_BYTES:
            return None
        body, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
        good = hashlib.blake2b(body, key=self.key, digest_size=TAG_BYTES).digest()
        return body if hmac.compare_digest(tag, good) else None


class Endpoint:
    def __init__(self, listen: str, on_message, on_tick=None, tick_s: float = 0.01, name: str = "node"):
        self.name = name                  # for profiles (hypervisor/profiling.py)
        self.on_message = on_message      # called on the I/O thread with a Message
        self.on_tick = on_tick or (lambda: None)
        self.tick_s = tick_s
        self.garbage = 0                  # messages that failed their checks
        self.dropped = 0                  # sends that found no room
        self.sent = [0] * 16              # messages sent, by type (logging_channel.messages)
        self.received = [0] * 16          # messages taken in, by type
        # libzmq's own I/O thread starts with the first socket and inherits this
        # thread's scheduling: raise it for that moment (priority.py).
        got = []
        with priority.threads_started_here_raised(got):
            self.ctx = zmq.Context()
            self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.setsockopt(zmq.MAXMSGSIZE, M.PAYLOAD_MAX + M.SIZE)
        self.inbox.setsockopt(zmq.RCVHWM, 100000)
        self.inbox.bind(listen)
        self.address = self.inbox.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.zmq_sched = got[0] if got else None   # libzmq's I/O thread (priority.py)
        self._wake_addr = f"inproc://ftvm-wake-{next(_ids)}"
        self._wake = self.ctx.socket(zmq.PULL)
        self._wake.bind(self._wake_addr)
        self._local = threading.local()
        self._peers = {}                  # name -> PUSH socket (I/O thread only)
        self._peer_addrs = {}
        self.failure = None               # an exception raised by a handler, if any
        self.io_sched = None              # what the I/O thread got from the OS (priority.py)
        self.key = ChannelKey.from_env()
        self.faults = faults.channel_faults_from_env()     # tests only: a bad network
        self._io_thread = threading.Thread(target=self._loop, name="ftvm-io", daemon=True)

    def start(self):
        self._io_thread.start()

    def connect(self, name: str, address: str, immediate: bool = True):
        """Send to ``name`` at ``address`` from now on. immediate: drop what is sent
        while there is no connection (the protocol retransmits); otherwise queue it."""
        self._peer_addrs[name] = address
        self._pipe().send_multipart([b"C" if immediate else b"c", name.encode(), address.encode()])

    def send(self, name: str, data: bytes):
        self.sent[data[1] & 15] += 1
        if self.key is not None:
            data = self.key.seal(data)
        self._send_sealed(name, data)

    def _send_sealed(self, name, data):
        if threading.current_thread() is self._io_thread:
            self._send_now(name, data)
        else:
            self._pipe().send_multipart([b"S", name.encode(), data])

    def send_direct(self, name: str, data: bytes):
        """Send from the calling thread on a socket of its own, skipping the hop through
        the I/O thread (for the latency-critical log stream). Order against messages
        sent through ``send`` is not kept; the protocol's sequence numbers cope."""
        if self.faults is not None or threading.current_thread() is self._io_thread:
            return self.send(name, data)
        self.sent[data[1] & 15] += 1
        if self.key is not None:
            data = self.key.seal(data)
        socks = getattr(self._local, "direct", None)
        if socks is None:
            socks = self._local.direct = {}
        s = socks.get(name)
        if s is None:
            addr = self._peer_addrs.get(name)
            if addr is None:
                return self._send_sealed(name, data)
            s = self.ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.LINGER, 200)
            s.setsockopt(zmq.SNDHWM, 10000)
            s.setsockopt(zmq.RECONNECT_IVL, 20)
            s.connect(addr)
            socks[name] = s
        try:
            s.send(data, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def close(self, linger_s: float = 0.2):
        """Stop the I/O thread after giving queued sends ``linger_s`` to leave, then
        close every socket (a context with open sockets would block the process's exit)."""
        if self._io_thread.is_alive():
            try:
                self._pipe().send_multipart([b"Q", str(linger_s).encode(), b""])
            except zmq.ZMQError:
                pass
            self._io_thread.join(timeout=2 + linger_s)
        self.ctx.destroy(linger=0)

    # --- I/O thread ------------------------------------------------------------------
    def _pipe(self):
        s = getattr(self._local, "sock", None)
        if s is None:
            s = self.ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.LINGER, 1000)
            s.connect(self._wake_addr)
            self._local.sock = s
        return s

    def _send_now(self, name, data):
        if self.faults is not None and name != "observer":
            now = time.monotonic()
            for due, n, d in self.faults.plan(name, data, now):
                heapq.heappush(self.faults.delayed, (due, next(self.faults._n), n, d))
            self._flush_delayed(now)
            return
        self._send_raw(name, data)

    def _flush_delayed(self, now):
        q = self.faults.delayed
        while q and q[0][0] <= now:
            _, _, n, d = heapq.heappop(q)
            self._send_raw(n, d)

    def _send_raw(self, name, data):
        sock = self._peers.get(name)
        if sock is None:
            self.dropped += 1
            return
        try:
            sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def _connect_now(self, name, address, immediate=True):
        old = self._peers.pop(name, None)
        if old is not None:
            old.close(0)
        s = self.ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 200)
        s.setsockopt(zmq.SNDHWM, 10000)
        s.setsockopt(zmq.IMMEDIATE, 1 if immediate else 0)
        s.setsockopt(zmq.RECONNECT_IVL, 20)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 200)
        s.connect(address)
        self._peers[name] = s

    def _guarded(self, fn, *args):
        try:
            fn(*args)
        except Exception as e:    # a bug in a handler: keep the first, let the owner report it
            if self.failure is None:
                self.failure = e

    def _loop(self):
        with thread_profile(f"io-{self.name}"):
            self._serve()

    def _serve(self):
        # Messages must not wait for a busy emulation thread to be preempted (priority.py).
        self.io_sched = priority.raise_python_thread()
        poller = zmq.Poller()
        poller.register(self.inbox, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        next_tick = time.monotonic() + self.tick_s
        quit_at = None
        while True:
            wake_at = next_tick
            if self.faults is not None and self.faults.delayed:
                wake_at = min(wake_at, self.faults.delayed[0][0])
            # Rounded up: pyzmq truncates a float timeout, and a timeout of 0 for the last
            # millisecond before every tick made this thread spin (5% of a core at a 20 ms tick).
            timeout_ms = max(0, math.ceil((wake_at - time.monotonic()) * 1000))
            events = dict(poller.poll(timeout_ms))
            if self._wake in events:
                while True:
                    try:
                        op, a, b = self._wake.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if op == b"S":
                        self._send_now(a.decode(), b)
                    elif op in (b"C", b"c"):
                        self._connect_now(a.decode(), b.decode(), op == b"C")
                    elif op == b"Q":
                        quit_at = time.monotonic() + float(a)
            if self.inbox in events:
                for _ in range(1000):
                    try:
                        data = self.inbox.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if self.key is not None:
                        data = self.key.open(data)
                        if data is None:
                            self.garbage += 1       # not tagged with the run's key
                            continue
                    try:
                        msg = M.decode(data)
                    except M.BadMessage:
                        self.garbage += 1
                        continue
                    self.received[msg.type & 15] += 1
                    self._guarded(self.on_message, msg)
            now = time.monotonic()
            if self.faults is not None:
                self._flush_delayed(now)
            if now >= next_tick:
                next_tick = now + self.tick_s
                self._guarded(self.on_tick)
            if quit_at is not None and now >= quit_at:
                break
        for s in self._peers.values():
            s.close()
        self.inbox.close(0)
        self._wake.close(0)
