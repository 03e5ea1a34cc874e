"""The network family: TCP server sockets over ftvm's front end, and readiness
(epoll, poll, select, eventfd, timerfd).

Client connections do not reach the guest through a host socket. The front end
(`--listen HOST:PORT`: in-process for `ftvm record`, the observer for `ftvm run`)
accepts them and turns each into NET events (open, data, close, reset), which are
inputs logged at the execution point where they arrive, exactly as for ftvm-ABI
guests. Here they feed the guest's sockets: an open goes to the backlog of the socket
listening on the forwarded port, data to its connection's receive buffer. What the
guest writes to a connection becomes a frame of the network output stream, released
under the Output Rule and delivered by the front end exactly once, in order, across
failovers. All socket state is guest state: replay rebuilds it from the NET records.
"""
from __future__ import annotations

import collections
import errno
import socket
import struct

from ..sources.net import FRAME, NetDevice
from .. import abi
from .files import File
from .fs import O_NONBLOCK, GuestErr, pack_stat
from .kernel import Blocked
from .table import syscall

AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
SOCK_STREAM, SOCK_DGRAM = 1, 2
SOCK_NONBLOCK, SOCK_CLOEXEC = 0o4000, 0o2000000
SOL_SOCKET, IPPROTO_TCP = 1, 6
SO_TYPE, SO_ERROR, SO_SNDBUF, SO_RCVBUF, SO_REUSEADDR, SO_KEEPALIVE = 3, 4, 7, 8, 2, 9
EPOLLIN, EPOLLPRI, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLRDHUP = 0x1, 0x2, 0x4, 0x8, 0x10, 0x2000
EPOLLONESHOT, EPOLLET = 1 << 30, 1 << 31
EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD = 1, 2, 3
POLLIN, POLLPRI, POLLOUT, POLLERR, POLLHUP, POLLNVAL, POLLRDHUP = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x2000
MSG_PEEK, MSG_DONTWAIT, MSG_NOSIGNAL = 0x2, 0x40, 0x4000
SEND_MAX = 16 << 20
RECV_MAX = 64 << 20


class LinuxNet(NetDevice):
    """The machine's network device for a Linux guest: NET events go straight to the
    personality's sockets (at the stop where they are logged or replayed)."""

    def __init__(self, vcpu, out):
        super().__init__(vcpu, out)
        self.kernel = None

    def append(self, conn, type_, data):
        self.events += 1
        self.kernel.sockets.deliver(conn, type_, data)


def sockaddr_in(host, port):
    return struct.pack("<H", AF_INET) + struct.pack(">H", port) + socket.inet_aton(host) + bytes(8)


class Sockets:
    """The connection table: guest state, fed by NET events."""

    def __init__(self, kernel):
        self.k = kernel
        self.forwarded_port = kernel.spec_listen_port
        self.listeners = []           # ListenSocket, in listen() order
        self.conns = {}               # conn id -> ConnSocket (accepted) or None (waiting in a backlog)
        self.unclaimed = collections.deque()   # conn ids that arrived before anyone listened
        self.early = {}               # conn id -> [data..., ] before the guest accepted it
        self.peers = {}               # conn id -> (host, port)

    def deliver(self, conn, type_, data):
        if type_ == abi.NET_OPEN:
            host, port = "127.0.0.1", 0
            if data:
                h, _, p = data.decode("ascii", "replace").rpartition(":")
                host, port = h or host, int(p or 0)
            self.peers[conn] = (host, port)
            self.early[conn] = ConnState()
            ls = self._listener()
            if ls is None:
                self.unclaimed.append(conn)
            else:
                ls.backlog.append(conn)
                ls.gen += 1
            return
        st = self.conn_state(conn)
        if st is None:
            return                    # a connection the guest already closed
        if type_ == abi.NET_DATA:
            st.buf += data
        elif type_ == abi.NET_CLOSE:
            st.eof = True
        elif type_ == abi.NET_RESET:
            st.reset = True
        st.gen += 1

    def conn_state(self, conn):
        s = self.conns.get(conn)
        if s is not None:
            return s.st
        return self.early.get(conn)

    def _listener(self):
        return self.listeners[0] if self.listeners else None

    def listening(self, ls):
        self.listeners.append(ls)
        while self.unclaimed:
            ls.backlog.append(self.unclaimed.popleft())
        ls.gen += 1


class ConnState:
    __slots__ = ("buf", "eof", "reset", "gen")

    def __init__(self):
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.gen = 0


class Socket(File):
    kind = "socket"
    seekable = False

    def __init__(self, family, type_, flags):
        super().__init__("socket:", 2 | (flags & O_NONBLOCK))
        self.family, self.type = family, type_
        self.bound = None
        self.opts = {}
        self.gen = 0

    def stat(self, k):
        return pack_stat(0x8, 0x5000 + id(self) % 1000, 0o140777, 1, 1000, 1000, 0, 0, 4096, 0, 0, 0, 0)

    def poll(self, k):
        return 0

    def read(self, k, n):
        raise GuestErr(errno.ENOTCONN)

    def write(self, k, data):
        raise GuestErr(errno.ENOTCONN)


class ListenSocket(Socket):
    def __init__(self, family, type_, flags):
        super().__init__(family, type_, flags)
        self.backlog = collections.deque()
        self.listening = False

    def poll(self, k):
        return EPOLLIN if self.backlog else 0


class ConnSocket(Socket):
    def __init__(self, conn, st, local, flags):
        super().__init__(AF_INET, SOCK_STREAM, flags)
        self.conn, self.st, self.bound = conn, st, local
        self.shut_wr = False
        self.closed_out = False

    @property
    def gen(self):
        return self.st.gen

    @gen.setter
    def gen(self, v):
        pass

    def poll(self, k):
        st = self.st
        m = 0
        if st.buf or st.eof or st.reset:
            m |= EPOLLIN
        if st.eof:
            m |= EPOLLRDHUP
        if st.reset:
            m |= EPOLLERR | EPOLLHUP
        elif not self.shut_wr:
            m |= EPOLLOUT
        return m

    def recv(self, k, n, peek=False, nonblock=False):
        st = self.st
        if st.buf:
            data = bytes(st.buf[:min(n, RECV_MAX)])
            if not peek:
                del st.buf[:len(data)]
            return data
        if st.reset:
            raise GuestErr(errno.ECONNRESET)
        if st.eof:
            return b""
        if nonblock or self.flags & O_NONBLOCK:
            raise GuestErr(errno.EAGAIN)
        raise Blocked("recv", ready=lambda: bool(st.buf) or st.eof or st.reset)

    def read(self, k, n):
        return self.recv(k, n)

    def write(self, k, data):
        if self.st.reset:
            raise GuestErr(errno.EPIPE)
        if self.shut_wr:
            raise GuestErr(errno.EPIPE)
        if data:
            k.m.netout.append(FRAME.pack(self.conn & 0xFFFFFFFF, abi.NET_DATA, len(data)) + data)
        return len(data)

    def shutdown_out(self, k):
        if not self.closed_out:
            self.closed_out = True
            k.m.netout.append(FRAME.pack(self.conn & 0xFFFFFFFF, abi.NET_CLOSE, 0))

    def close(self, k):
        self.shutdown_out(k)
        k.sockets.conns.pop(self.conn, None)
        k.sockets.early.pop(self.conn, None)


class EventFd(File):
    kind = "eventfd"
    seekable = False

    def __init__(self, value, flags):
        super().__init__("anon_inode:[eventfd]", 2 | (flags & O_NONBLOCK))
        self.value = value
        self.semaphore = bool(flags & 1)
        self.gen = 0

    def poll(self, k):
        return (EPOLLIN if self.value else 0) | (EPOLLOUT if self.value < 0xFFFFFFFFFFFFFFFE else 0)

    def read(self, k, n):
        if n < 8:
            raise GuestErr(errno.EINVAL)
        if not self.value:
            if self.flags & O_NONBLOCK:
                raise GuestErr(errno.EAGAIN)
            raise Blocked("eventfd", ready=lambda: self.value > 0)
        v = 1 if self.semaphore else self.value
        self.value -= v
        self.gen += 1
        return struct.pack("<Q", v)

    def write(self, k, data):
        if len(data) < 8:
            raise GuestErr(errno.EINVAL)
        v = struct.unpack("<Q", data[:8])[0]
        if v == 0xFFFFFFFFFFFFFFFF:
            raise GuestErr(errno.EINVAL)
        self.value += v
        self.gen += 1
        return 8

    def stat(self, k):
        return pack_stat(0xE, 0x6000, 0o600, 1, 1000, 1000, 0, 0, 4096, 0, 0, 0, 0)


class TimerFd(File):
    """A timer in guest time. Its expiry is a question about the time, so reading it
    (or polling it) reads the clock: a logged input."""
    kind = "timerfd"
    seekable = False

    def __init__(self, clock, flags):
        super().__init__("anon_inode:[timerfd]", (flags & O_NONBLOCK))
        self.clock = clock
        self.next_ns = 0          # absolute guest time (monotonic), 0: disarmed
        self.interval_ns = 0
        self.gen = 0

    def expirations(self, k):
        if not self.next_ns:
            return 0
        from .calls_time import now
        t = now(k)
        if t < self.next_ns:
            return 0
        if not self.interval_ns:
            return 1
        return 1 + (t - self.next_ns) // self.interval_ns

    def poll(self, k):
        return EPOLLIN if self.expirations(k) else 0

    def read(self, k, n):
        if n < 8:
            raise GuestErr(errno.EINVAL)
        count = self.expirations(k)
        if not count:
            if self.flags & O_NONBLOCK:
                raise GuestErr(errno.EAGAIN)
            raise Blocked("timerfd", until_ns=self.next_ns or None, forever=not self.next_ns)
        if self.interval_ns:
            self.next_ns += count * self.interval_ns
        else:
            self.next_ns = 0
        self.gen += 1
        return struct.pack("<Q", count)

    def deadline(self):
        return self.next_ns or None

    def stat(self, k):
        return pack_stat(0xE, 0x6001, 0o600, 1, 1000, 1000, 0, 0, 4096, 0, 0, 0, 0)


class Epoll(File):
    kind = "epoll"
    seekable = False

    def __init__(self, flags):
        super().__init__("anon_inode:[eventpoll]", 0)
        self.interest = {}        # fd -> [file, events, data, last gen reported]

    def stat(self, k):
        return pack_stat(0xE, 0x6002, 0o600, 1, 1000, 1000, 0, 0, 4096, 0, 0, 0, 0)

    def poll(self, k):
        return 0


# --- helpers -----------------------------------------------------------------------------

def poll_mask(k, f):
    """What ``f`` is ready for now, as epoll bits (files that are always ready: in|out)."""
    p = getattr(f, "poll", None)
    if p is not None:
        return p(k)
    if f.kind == "stdin":
        inp = k.m.input
        return EPOLLIN if (inp.fifo or inp.eof) else 0
    if f.kind == "pipe":
        pipe = f.pipe
        if f.reading:
            return (EPOLLIN if pipe.buf else 0) | (EPOLLHUP if pipe.writers == 0 else 0)
        return (EPOLLOUT if len(pipe.buf) < f.CAPACITY else 0) | (EPOLLERR if pipe.readers == 0 else 0)
    return EPOLLIN | EPOLLOUT


def file_gen(f):
    g = getattr(f, "gen", None)
    if g is not None:
        return g
    if f.kind == "pipe":
        return len(f.pipe.buf) + 7919 * f.pipe.writers
    if f.kind == "stdin":
        return -1
    return 0


def time_deadline(files):
    ds = [f.deadline() for f in files if isinstance(f, TimerFd) and f.deadline()]
    return min(ds) if ds else None


def _peek_ready(k, files_masks):
    """Record side: is anything ready, without reading the clock (timers wake the
    thread through their deadline instead)."""
    for f, mask in files_masks:
        if isinstance(f, TimerFd):
            continue
        if poll_mask(k, f) & (mask | EPOLLERR | EPOLLHUP):
            return True
    return False


def _timeout_deadline(k, timeout_ms):
    """A relative timeout in ms (negative: none): the absolute deadline in guest time."""
    from .calls_time import now
    if timeout_ms < 0:
        return None
    return now(k) + timeout_ms * 1_000_000


def _wait(k, what, ready_now, deadline, files_masks):
    """The thread's wait for readiness: first attempt works out the deadline; a retry
    returns True once it passed (a logged clock read) or blocks again."""
    from .calls_time import now
    t = k.threads.cur
    if t.sleep_deadline is not None:
        if now(k) >= t.sleep_deadline:
            t.sleep_deadline = None
            return True
        deadline = t.sleep_deadline
    elif deadline is not None:
        t.sleep_deadline = deadline
    tdl = time_deadline([f for f, _ in files_masks])
    until = min(x for x in (deadline, tdl) if x is not None) if (deadline or tdl) else None
    raise Blocked(what, until_ns=until, ready=lambda: _peek_ready(k, files_masks))


def _s32(v):
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


# --- sockets ------------------------------------------------------------------------------

@syscall("socket", "int", "hex", "int", family="net",
         note="TCP (AF_INET, SOCK_STREAM) only: servers reached through the front end")
def sys_socket(k, family, type_, proto):
    base = type_ & 0xF
    if family != AF_INET:
        raise GuestErr(errno.EAFNOSUPPORT)
    if base != SOCK_STREAM:
        raise GuestErr(errno.EPROTONOSUPPORT)
    s = ListenSocket(family, base, O_NONBLOCK if type_ & SOCK_NONBLOCK else 0)
    return k.files.install(s, cloexec=bool(type_ & SOCK_CLOEXEC))


def _sock(k, fd):
    f = k.files.get(fd)
    if not isinstance(f, Socket):
        raise GuestErr(errno.ENOTSOCK)
    return f


@syscall("bind", "fd", "ptr", "int", family="net",
         note="only the port the front end forwards (--listen); others get EADDRNOTAVAIL")
def sys_bind(k, fd, addr, length):
    s = _sock(k, fd)
    raw = k.read_mem(addr, min(length, 16))
    if len(raw) < 8 or struct.unpack_from("<H", raw)[0] != AF_INET:
        raise GuestErr(errno.EINVAL)
    port = struct.unpack_from(">H", raw, 2)[0]
    host = socket.inet_ntoa(raw[4:8])
    fwd = k.sockets.forwarded_port
    if fwd is None or port != fwd:
        k.note_once(("bind", port), f"the program binds port {port}, which no front end forwards"
                    + (f" (--listen forwards {fwd})" if fwd else " (give --listen HOST:PORT)")
                    + "; it gets EADDRNOTAVAIL")
        raise GuestErr(errno.EADDRNOTAVAIL)
    s.bound = (host, port)
    return 0


@syscall("listen", "fd", "int", family="net")
def sys_listen(k, fd, backlog):
    s = _sock(k, fd)
    if not isinstance(s, ListenSocket) or s.bound is None:
        raise GuestErr(errno.EINVAL)
    if not s.listening:
        s.listening = True
        k.sockets.listening(s)
    return 0


def _accept(k, fd, addr, addrlen, flags):
    s = _sock(k, fd)
    if not isinstance(s, ListenSocket) or not s.listening:
        raise GuestErr(errno.EINVAL)
    if not s.backlog:
        if s.flags & O_NONBLOCK:
            raise GuestErr(errno.EAGAIN)
        raise Blocked("accept", ready=lambda: bool(s.backlog))
    conn = s.backlog.popleft()
    socks = k.sockets
    st = socks.early.pop(conn, None) or ConnState()
    c = ConnSocket(conn, st, s.bound, O_NONBLOCK if flags & SOCK_NONBLOCK else 0)
    socks.conns[conn] = c
    if addr:
        _write_addr(k, addr, addrlen, sockaddr_in(*socks.peers.get(conn, ("127.0.0.1", 0))))
    return k.files.install(c, cloexec=bool(flags & SOCK_CLOEXEC))


def _write_addr(k, addr, addrlen, data):
    if not addrlen:
        return
    have = struct.unpack("<I", k.read_mem(addrlen, 4))[0]
    k.write_mem(addr, data[:have])
    k.write_mem(addrlen, struct.pack("<I", len(data)))


@syscall("accept4", "fd", "ptr", "ptr", "hex", family="net")
def sys_accept4(k, fd, addr, addrlen, flags):
    return _accept(k, fd, addr, addrlen, flags)


@syscall("accept", "fd", "ptr", "ptr", family="net")
def sys_accept(k, fd, addr, addrlen):
    return _accept(k, fd, addr, addrlen, 0)


@syscall("connect", "fd", "ptr", "int", family="net", note="no outgoing connections: ENETUNREACH")
def sys_connect(k, fd, addr, length):
    k.files.get(fd)
    k.note_once("connect", "the program connects out, which ftvm does not support; it gets ENETUNREACH")
    raise GuestErr(errno.ENETUNREACH)


@syscall("getsockname", "fd", "ptr", "ptr", family="net")
def sys_getsockname(k, fd, addr, addrlen):
    s = _sock(k, fd)
    host, port = s.bound or ("0.0.0.0", 0)
    _write_addr(k, addr, addrlen, sockaddr_in(host, port))
    return 0


@syscall("getpeername", "fd", "ptr", "ptr", family="net")
def sys_getpeername(k, fd, addr, addrlen):
    s = _sock(k, fd)
    if not isinstance(s, ConnSocket):
        raise GuestErr(errno.ENOTCONN)
    _write_addr(k, addr, addrlen, sockaddr_in(*k.sockets.peers.get(s.conn, ("127.0.0.1", 0))))
    return 0


@syscall("setsockopt", "fd", "int", "int", "ptr", "int", family="net", note="accepted and remembered")
def sys_setsockopt(k, fd, level, name, val, length):
    s = _sock(k, fd)
    s.opts[(level, name)] = k.read_mem(val, min(length, 64))
    return 0


@syscall("getsockopt", "fd", "int", "int", "ptr", "ptr", family="net")
def sys_getsockopt(k, fd, level, name, val, lenp):
    s = _sock(k, fd)
    if (level, name) == (SOL_SOCKET, SO_ERROR):
        data = struct.pack("<i", 0)
    elif (level, name) == (SOL_SOCKET, SO_TYPE):
        data = struct.pack("<i", s.type)
    elif (level, name) in ((SOL_SOCKET, SO_SNDBUF), (SOL_SOCKET, SO_RCVBUF)):
        data = s.opts.get((level, name)) or struct.pack("<i", 131072)
    else:
        data = s.opts.get((level, name)) or struct.pack("<i", 0)
    _write_addr(k, val, lenp, data)
    return 0


@syscall("shutdown", "fd", "int", family="net")
def sys_shutdown(k, fd, how):
    s = _sock(k, fd)
    if not isinstance(s, ConnSocket):
        raise GuestErr(errno.ENOTCONN)
    if how in (1, 2):
        s.shut_wr = True
        s.shutdown_out(k)
    return 0


@syscall("recvfrom", "fd", "obuf", "size", "hex", "ptr", "ptr", family="net")
def sys_recvfrom(k, fd, buf, n, flags, addr, addrlen):
    s = _sock(k, fd)
    if not isinstance(s, ConnSocket):
        raise GuestErr(errno.ENOTCONN)
    data = s.recv(k, n, peek=bool(flags & MSG_PEEK), nonblock=bool(flags & MSG_DONTWAIT))
    k.write_mem(buf, data)
    return len(data)


@syscall("sendto", "fd", "buf", "size", "hex", "ptr", "int", family="net")
def sys_sendto(k, fd, buf, n, flags, addr, addrlen):
    s = _sock(k, fd)
    return s.write(k, k.read_mem(buf, min(n, SEND_MAX)))


def _msghdr(k, msg):
    name, namelen, iov, iovlen, ctl, ctllen, _flags = struct.unpack("<QIxxxxQQQQi", k.read_mem(msg, 52))
    if iovlen > 1024:
        raise GuestErr(errno.EMSGSIZE)
    raw = k.read_mem(iov, 16 * iovlen)
    return [struct.unpack_from("<QQ", raw, 16 * i) for i in range(iovlen)]


@syscall("recvmsg", "fd", "ptr", "hex", family="net")
def sys_recvmsg(k, fd, msg, flags):
    s = _sock(k, fd)
    if not isinstance(s, ConnSocket):
        raise GuestErr(errno.ENOTCONN)
    vecs = _msghdr(k, msg)
    data = s.recv(k, sum(n for _, n in vecs), peek=bool(flags & MSG_PEEK), nonblock=bool(flags & MSG_DONTWAIT))
    at = 0
    for base, n in vecs:
        part = data[at:at + n]
        k.write_mem(base, part)
        at += len(part)
    k.write_mem(msg + 48, struct.pack("<i", 0))
    return len(data)


@syscall("sendmsg", "fd", "ptr", "hex", family="net")
def sys_sendmsg(k, fd, msg, flags):
    s = _sock(k, fd)
    data = b"".join(k.read_mem(base, n) for base, n in _msghdr(k, msg))
    return s.write(k, data[:SEND_MAX])


@syscall("socketpair", "int", "int", "int", "ptr", family="net", note="unsupported: EAFNOSUPPORT")
def sys_socketpair(k, family, type_, proto, sv):
    raise GuestErr(errno.EAFNOSUPPORT)


# --- readiness ----------------------------------------------------------------------------

@syscall("epoll_create1", "hex", family="net")
def sys_epoll_create1(k, flags):
    return k.files.install(Epoll(flags), cloexec=bool(flags & SOCK_CLOEXEC))


@syscall("epoll_create", "int", family="net")
def sys_epoll_create(k, size):
    if _s32(size) <= 0:
        raise GuestErr(errno.EINVAL)
    return k.files.install(Epoll(0))


@syscall("epoll_ctl", "fd", "int", "fd", "ptr", family="net")
def sys_epoll_ctl(k, epfd, op, fd, event):
    ep = k.files.get(epfd)
    if not isinstance(ep, Epoll):
        raise GuestErr(errno.EINVAL)
    f = k.files.get(fd)
    fd = _s32(fd)
    if f is ep:
        raise GuestErr(errno.EINVAL)
    if op == EPOLL_CTL_DEL:
        if fd not in ep.interest:
            raise GuestErr(errno.ENOENT)
        del ep.interest[fd]
        return 0
    events, data = struct.unpack("<IQ", k.read_mem(event, 12))
    if op == EPOLL_CTL_ADD:
        if fd in ep.interest:
            raise GuestErr(errno.EEXIST)
        ep.interest[fd] = [f, events, data, None]
    elif op == EPOLL_CTL_MOD:
        if fd not in ep.interest:
            raise GuestErr(errno.ENOENT)
        ep.interest[fd] = [f, events, data, None]
    else:
        raise GuestErr(errno.EINVAL)
    return 0


def _epoll_ready(k, ep, maxevents):
    out = []
    for fd in list(ep.interest):
        entry = ep.interest[fd]
        f, events, data, last = entry
        if events & EPOLLONESHOT and last == "off":
            continue
        got = poll_mask(k, f) & (events | EPOLLERR | EPOLLHUP)
        if not got:
            continue
        if events & EPOLLET:
            g = file_gen(f)
            if last == g:
                continue
            entry[3] = g
        if events & EPOLLONESHOT:
            entry[3] = "off"
        out.append((got, data))
        if len(out) >= maxevents:
            break
    return out


def _epoll_wait(k, epfd, events, maxevents, timeout):
    ep = k.files.get(epfd)
    if not isinstance(ep, Epoll) or maxevents <= 0:
        raise GuestErr(errno.EINVAL)
    ready = _epoll_ready(k, ep, min(maxevents, 1024))
    if ready:
        k.threads.cur.sleep_deadline = None
        k.write_mem(events, b"".join(struct.pack("<IQ", m, d) for m, d in ready))
        return len(ready)
    timeout = _s32(timeout)
    if timeout == 0:
        return 0
    files_masks = [(e[0], e[1]) for e in ep.interest.values()]
    if _wait(k, "epoll", False, _timeout_deadline(k, timeout) if k.threads.cur.sleep_deadline is None else None,
             files_masks):
        return 0
    return 0


@syscall("epoll_wait", "fd", "ptr", "int", "int", family="net")
def sys_epoll_wait(k, epfd, events, maxevents, timeout):
    return _epoll_wait(k, epfd, events, _s32(maxevents), timeout)


@syscall("epoll_pwait", "fd", "ptr", "int", "int", "ptr", "size", family="net")
def sys_epoll_pwait(k, epfd, events, maxevents, timeout, sigmask, size):
    return _epoll_wait(k, epfd, events, _s32(maxevents), timeout)


def _poll(k, fds, nfds, timeout_deadline_of):
    if nfds > 4096:
        raise GuestErr(errno.EINVAL)
    raw = bytearray(k.read_mem(fds, 8 * nfds))
    count = 0
    files_masks = []
    for i in range(nfds):
        fd, events, _ = struct.unpack_from("<ihh", raw, 8 * i)
        rev = 0
        if fd >= 0:
            f = k.files.fds.get(fd)
            if f is None:
                rev = POLLNVAL
            else:
                m = poll_mask(k, f)
                rev = m & ((events & 0xFFFF) | POLLERR | POLLHUP)
                files_masks.append((f, events & 0xFFFF))
        struct.pack_into("<h", raw, 8 * i + 6, rev if rev < 0x8000 else rev - 0x10000)
        if rev:
            count += 1
    if count:
        k.threads.cur.sleep_deadline = None
        k.write_mem(fds, bytes(raw))
        return count
    deadline = None if k.threads.cur.sleep_deadline is not None else timeout_deadline_of()
    if deadline is not None and deadline <= 0:
        k.write_mem(fds, bytes(raw))
        return 0
    if _wait(k, "poll", False, deadline, files_masks):
        k.write_mem(fds, bytes(raw))
        return 0
    return 0


@syscall("poll", "ptr", "int", "int", family="net")
def sys_poll(k, fds, nfds, timeout):
    t = _s32(timeout)
    return _poll(k, fds, nfds, lambda: 0 if t == 0 else _timeout_deadline(k, t))


def _time_arg_deadline(k, ptr, unit_ns):
    """A timeout argument (struct timespec, or timeval with unit_ns=1000): None for
    no timeout (NULL), 0 for a poll, else the absolute deadline in guest time."""
    if not ptr:
        return None
    sec, frac = struct.unpack("<qq", k.read_mem(ptr, 16))
    if sec == 0 and frac == 0:
        return 0
    from .calls_time import now
    return now(k) + sec * 10**9 + frac * unit_ns


@syscall("ppoll", "ptr", "int", "ptr", "ptr", "size", family="net")
def sys_ppoll(k, fds, nfds, tsp, sigmask, size):
    return _poll(k, fds, nfds, lambda: _time_arg_deadline(k, tsp, 1))


def _select(k, nfds, rp, wp, ep, deadline_of):
    if nfds > 1024:
        raise GuestErr(errno.EINVAL)
    nbytes = ((nfds + 63) // 64) * 8
    sets = [bytearray(k.read_mem(p, nbytes)) if p else None for p in (rp, wp, ep)]
    outs = [bytearray(nbytes) if s is not None else None for s in sets]
    count = 0
    files_masks = []
    for fd in range(nfds):
        want = [s is not None and s[fd // 8] >> (fd % 8) & 1 for s in sets]
        if not any(want):
            continue
        f = k.files.fds.get(fd)
        if f is None:
            raise GuestErr(errno.EBADF)
        m = poll_mask(k, f)
        got = [want[0] and m & (EPOLLIN | EPOLLHUP | EPOLLERR), want[1] and m & (EPOLLOUT | EPOLLERR),
               want[2] and m & EPOLLPRI]
        files_masks.append((f, (EPOLLIN if want[0] else 0) | (EPOLLOUT if want[1] else 0)))
        for i in range(3):
            if got[i]:
                outs[i][fd // 8] |= 1 << (fd % 8)
                count += 1
    if count or k.threads.cur.sleep_deadline is None and deadline_of() == 0:
        k.threads.cur.sleep_deadline = None
        for p, o in zip((rp, wp, ep), outs):
            if p:
                k.write_mem(p, bytes(o))
        return count
    deadline = None if k.threads.cur.sleep_deadline is not None else deadline_of()
    if _wait(k, "select", False, deadline, files_masks):
        for p in (rp, wp, ep):
            if p:
                k.write_mem(p, bytes(nbytes))
        return 0
    return 0


@syscall("select", "int", "ptr", "ptr", "ptr", "ptr", family="net")
def sys_select(k, nfds, rp, wp, ep, tvp):
    return _select(k, _s32(nfds), rp, wp, ep, lambda: _time_arg_deadline(k, tvp, 1000))


@syscall("pselect6", "int", "ptr", "ptr", "ptr", "ptr", "ptr", family="net")
def sys_pselect6(k, nfds, rp, wp, ep, tsp, sig):
    return _select(k, _s32(nfds), rp, wp, ep, lambda: _time_arg_deadline(k, tsp, 1))


@syscall("eventfd2", "int", "hex", family="net")
def sys_eventfd2(k, initval, flags):
    return k.files.install(EventFd(initval & 0xFFFFFFFF, flags), cloexec=bool(flags & SOCK_CLOEXEC))


@syscall("eventfd", "int", family="net")
def sys_eventfd(k, initval):
    return k.files.install(EventFd(initval & 0xFFFFFFFF, 0))


@syscall("timerfd_create", "int", "hex", family="net")
def sys_timerfd_create(k, clock, flags):
    return k.files.install(TimerFd(clock, flags), cloexec=bool(flags & SOCK_CLOEXEC))


@syscall("timerfd_settime", "fd", "hex", "ptr", "ptr", family="net")
def sys_timerfd_settime(k, fd, flags, new, old):
    f = k.files.get(fd)
    if not isinstance(f, TimerFd):
        raise GuestErr(errno.EINVAL)
    isec, insec, vsec, vnsec = struct.unpack("<qqqq", k.read_mem(new, 32))
    if old:
        k.write_mem(old, bytes(32))
    value = vsec * 10**9 + vnsec
    f.interval_ns = isec * 10**9 + insec
    if value == 0:
        f.next_ns = 0
    elif flags & 1:                     # TFD_TIMER_ABSTIME
        f.next_ns = value - (k.realtime_base_ns if f.clock in (0, 5, 11) else 0)
    else:
        from .calls_time import now
        f.next_ns = now(k) + value
    f.gen += 1
    return 0


@syscall("timerfd_gettime", "fd", "ptr", family="net")
def sys_timerfd_gettime(k, fd, cur):
    f = k.files.get(fd)
    if not isinstance(f, TimerFd):
        raise GuestErr(errno.EINVAL)
    left = 0
    if f.next_ns:
        from .calls_time import now
        left = max(1, f.next_ns - now(k))
    k.write_mem(cur, struct.pack("<qqqq", f.interval_ns // 10**9, f.interval_ns % 10**9, left // 10**9, left % 10**9))
    return 0
