"""ZeroMQ shell: one process's sockets, owned by one I/O thread.

Every process (node or observer) binds one PULL socket, its inbox, where everybody
sends to it, and keeps one PUSH socket per peer it sends to. Only the I/O thread
touches sockets: other threads hand it outgoing messages through an inproc pipe, so a
send from the emulation thread costs a hop of a few microseconds and never blocks.
Incoming messages are checked (logging_channel.messages); garbage is counted and
dropped. Sends never block either: a peer that is gone just does not get the message,
and the protocol above (acknowledgements, retransmission, heartbeats) copes.
"""
from __future__ import annotations

import itertools
import socket
import threading
import time

import zmq

from logging_channel import messages as M

_ids = itertools.count()


def free_tcp_port(host="127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Endpoint:
    def __init__(self, listen: str, on_message, on_tick=None, tick_s: float = 0.01):
        self.on_message = on_message      # called on the I/O thread with a Message
        self.on_tick = on_tick or (lambda: None)
        self.tick_s = tick_s
        self.garbage = 0                  # messages that failed their checks
        self.dropped = 0                  # sends that found no room
        self.ctx = zmq.Context()
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.setsockopt(zmq.MAXMSGSIZE, M.PAYLOAD_MAX + M.SIZE)
        self.inbox.setsockopt(zmq.RCVHWM, 100000)
        self.inbox.bind(listen)
        self.address = self.inbox.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._wake_addr = f"inproc://ftvm-wake-{next(_ids)}"
        self._wake = self.ctx.socket(zmq.PULL)
        self._wake.bind(self._wake_addr)
        self._local = threading.local()
        self._peers = {}                  # name -> PUSH socket (I/O thread only)
        self._peer_addrs = {}
        self.failure = None               # an exception raised by a handler, if any
        self._io_thread = threading.Thread(target=self._loop, name="ftvm-io", daemon=True)

    def start(self):
        self._io_thread.start()

    def connect(self, name: str, address: str, immediate: bool = True):
        """Send to ``name`` at ``address`` from now on. immediate: drop what is sent
        while there is no connection (the protocol retransmits); otherwise queue it."""
        self._pipe().send_multipart([b"C" if immediate else b"c", name.encode(), address.encode()])

    def send(self, name: str, data: bytes):
        if threading.current_thread() is self._io_thread:
            self._send_now(name, data)
        else:
            self._pipe().send_multipart([b"S", name.encode(), data])

    def close(self, linger_s: float = 0.2):
        """Stop the I/O thread after giving queued sends ``linger_s`` to leave."""
        try:
            self._pipe().send_multipart([b"Q", str(linger_s).encode(), b""])
        except zmq.ZMQError:
            pass
        self._io_thread.join(timeout=2 + linger_s)

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
        self._peer_addrs[name] = address

    def _guarded(self, fn, *args):
        try:
            fn(*args)
        except Exception as e:    # a bug in a handler: keep the first, let the owner report it
            if self.failure is None:
                self.failure = e

    def _loop(self):
        poller = zmq.Poller()
        poller.register(self.inbox, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        next_tick = time.monotonic() + self.tick_s
        quit_at = None
        while True:
            timeout_ms = max(0, (next_tick - time.monotonic()) * 1000)
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
                    try:
                        msg = M.decode(data)
                    except M.BadMessage:
                        self.garbage += 1
                        continue
                    self._guarded(self.on_message, msg)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + self.tick_s
                self._guarded(self.on_tick)
            if quit_at is not None and now >= quit_at:
                break
        for s in self._peers.values():
            s.close()
        self.inbox.close(0)
        self._wake.close(0)
