"""The TCP front end: the network in front of the nodes (`--listen HOST:PORT`).

It plays the part of the network switch of a real deployment. It is one process (the
observer in `ftvm run`, the recorder itself in `ftvm record`) that clients connect
to. Each connection gets an id that is never reused; its opening, its bytes, its
closing and a reset become events for the guest's network device, handed to
``on_events([(conn, type, data)])``. The guest's answers come back as the network
output stream (frames, see sources/net.py) through ``deliver(offset, data)``, which
takes each byte exactly once however often it is sent (a new primary re-sends what
was not confirmed), so clients see neither a repeated nor a lost reply across a
failover: only a pause.

One thread runs a selector over the listening socket and all connections; sends from
other threads go straight to the socket when it has room and are queued otherwise.
"""
from __future__ import annotations

import errno
import os
import selectors
import socket
import threading

from . import abi
from .errors import FtvmError
from .profiling import thread_profile
from .sources.net import parse_frames

RECV = 65536
CONN_OUT_MAX = 64 << 20      # reply bytes queued for one client that does not read


class ListenError(FtvmError):
    exit_status = 2


def parse_addr(text: str):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ListenError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:6379")
    return host or "127.0.0.1", int(port)


class _Conn:
    __slots__ = ("id", "sock", "out", "closing", "reading")

    def __init__(self, cid, sock):
        self.id, self.sock = cid, sock
        self.out = bytearray()
        self.closing = False
        self.reading = True


class FrontEnd:
    def __init__(self, addr: str, on_events, say=None):
        self.host, self.port = parse_addr(addr)
        self.on_events = on_events
        self.say = say or (lambda m: None)
        try:
            self.lsock = socket.create_server((self.host, self.port), reuse_port=False, backlog=512)
        except OSError as e:
            raise ListenError(f"--listen {addr}: cannot listen there: {e.strerror or e}") from None
        self.port = self.lsock.getsockname()[1]
        self.lsock.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.lsock, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.lock = threading.Lock()
        self.conns = {}
        self.next_id = 1
        self.delivered = 0           # network output stream bytes taken (exactly once)
        self._parse = bytearray()
        self.closed = False
        self.stats = {"connections": 0, "bytes_in": 0, "bytes_out": 0, "resets": 0, "dropped_frames": 0}
        self.thread = threading.Thread(target=self._run, name="ftvm-frontend", daemon=True)

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    def start(self):
        self.thread.start()
        return self

    def close(self):
        with self.lock:
            self.closed = True
        self._wake()
        self.thread.join(timeout=2)
        for c in list(self.conns.values()):
            try:
                c.sock.close()
            except OSError:
                pass
        self.lsock.close()

    def _wake(self):
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    # --- output: the network stream from the guest ------------------------------------
    def deliver(self, offset: int, data: bytes) -> int:
        """Take stream bytes [offset, offset+len); bytes already taken are skipped, a
        gap is refused (returns the offset wanted). Returns the new delivered offset."""
        with self.lock:
            end = offset + len(data)
            if end <= self.delivered or offset > self.delivered:
                return self.delivered
            fresh = data[self.delivered - offset:]
            self.delivered = end
            self._parse += fresh
            for conn, type_, payload in parse_frames(self._parse):
                c = self.conns.get(conn)
                if c is None or c.closing:
                    self.stats["dropped_frames"] += 1
                    continue
                if type_ == abi.NET_DATA:
                    self.stats["bytes_out"] += len(payload)
                    c.out += payload
                    if len(c.out) > CONN_OUT_MAX:
                        self._drop(c, reset=True)
                        continue
                elif type_ == abi.NET_CLOSE:
                    c.closing = True
                self._flush(c)
            return self.delivered

    def _flush(self, c):
        """Send what is queued for ``c`` (lock held); close it when asked and empty."""
        while c.out:
            try:
                n = c.sock.send(c.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                c.out.clear()
                break
            del c.out[:n]
        if c.out:
            self._watch(c, write=True)
        elif c.closing:
            self._drop(c)
        else:
            self._watch(c, write=False)

    def _watch(self, c, write):
        ev = (selectors.EVENT_READ if c.reading else 0) | (selectors.EVENT_WRITE if write else 0)
        try:
            if ev:
                self.sel.modify(c.sock, ev, c)
            else:
                self.sel.unregister(c.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _drop(self, c, reset=False):
        self.conns.pop(c.id, None)
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            if reset:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            else:
                c.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        c.sock.close()

    # --- the selector thread --------------------------------------------------------
    def _run(self):
        with thread_profile("frontend"):
            self._serve()

    def _serve(self):
        while True:
            events = []
            try:
                ready = self.sel.select(0.5)
            except OSError:
                ready = []
            if self._handle(ready, events):
                return
            # Take whatever else became ready meanwhile, so that a burst of requests
            # (a client library answering many replies at once) goes on as one batch:
            # one message to the primary and one stop, not one per connection.
            for _ in range(16):
                if not events:
                    break
                try:
                    ready = self.sel.select(0)
                except OSError:
                    ready = []
                if not ready:
                    break
                if self._handle(ready, events):
                    return
            if events:
                self.on_events(events)

    def _handle(self, ready, events):
        """Serve what the selector found ready; True once the front end is closed."""
        with self.lock:
            if self.closed:
                return True
            for key, mask in ready:
                if key.data == "wake":
                    try:
                        os.read(self._wake_r, 4096)
                    except OSError:
                        pass
                elif key.data is None:
                    self._accept(events)
                else:
                    c = key.data
                    if mask & selectors.EVENT_WRITE:
                        self._flush(c)
                    if mask & selectors.EVENT_READ and c.id in self.conns:
                        self._read(c, events)
        return False

    def _accept(self, events):
        for _ in range(64):
            try:
                sock, addr = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    self.say("front end: out of file descriptors; a client waits")
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = _Conn(self.next_id, sock)
            self.next_id += 1
            self.conns[c.id] = c
            self.sel.register(sock, selectors.EVENT_READ, c)
            self.stats["connections"] += 1
            # The client's address rides in the open event (a Linux guest's getpeername).
            events.append((c.id, abi.NET_OPEN, f"{addr[0]}:{addr[1]}".encode()))

    def _read(self, c, events):
        try:
            data = c.sock.recv(RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.stats["resets"] += 1
            events.append((c.id, abi.NET_RESET, b""))
            self._drop(c)
            return
        if data:
            self.stats["bytes_in"] += len(data)
            events.append((c.id, abi.NET_DATA, data))
            return
        # The client finished sending; it may still read our answers.
        events.append((c.id, abi.NET_CLOSE, b""))
        c.reading = False
        self._watch(c, write=bool(c.out))
