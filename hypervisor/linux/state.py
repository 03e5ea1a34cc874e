"""The Linux personality's part of a snapshot (state transfer to a new backup): the
open files (shared between dup'ed descriptors, as in the kernel), the in-memory /tmp,
the working directory and umask, signal dispositions, and the call pending at the stop.
Memory travels as the address space's mappings (snapshot.py copies their bytes)."""
from __future__ import annotations

from . import files as F
from .fs import TmpNode


def _threads_state(k, ctx_bytes):
    th = k.threads
    out = []
    for tid in sorted(th.all):
        t = th.all[tid]
        d = t.state()
        d["ctx"] = ctx_bytes(t.ctx) if t is not th.cur else None
        d["sleep"] = t.sleep_deadline
        d["sigframes"] = [ctx_bytes(c) for c in t.sigframes]
        out.append(d)
    return {"all": out, "cur": th.cur.tid, "next_tid": th.next_tid, "slice_start": th.slice_start,
            "futexes": [[a, q] for a, q in sorted(th.futexes.items())]}


def _threads_restore(k, st, ctx_from):
    from .kernel import Blocked
    from .threads import Thread
    th = k.threads
    th.all = {}
    for d in st["all"]:
        t = Thread(d["tid"])
        t.pending = tuple(d["pending"]) if d["pending"] else None
        t.intent = d["intent"]
        if d["blocked"] is not None:
            # A waiting thread is tried once after a go-live; its call then waits
            # again with the proper wake-up test if its wait is not over.
            t.blocked = Blocked(d["blocked"][0], until_ns=d["blocked"][1], ready=lambda: True)
        t.clear_child_tid, t.robust_list, t.futex, t.futex_woken = d["ctid"], d["robust"], d["futex"], d["woken"]
        t.sigmask, t.altstack, t.sleep_deadline = d["sigmask"], d["altstack"], d["sleep"]
        t.ctx = ctx_from(d["ctx"]) if d["ctx"] is not None else None
        t.sigframes = [ctx_from(c) for c in d["sigframes"]]
        th.all[t.tid] = t
    th.cur = th.all[st["cur"]]
    th.next_tid, th.slice_start = st["next_tid"], st["slice_start"]
    th.futexes = {a: list(q) for a, q in st["futexes"]}


def _sockets_state(k, index_of):
    s = k.sockets
    return {"listeners": [index_of(ls) for ls in s.listeners],
            "conns": [[c, index_of(sock)] for c, sock in sorted(s.conns.items())],
            "unclaimed": list(s.unclaimed), "peers": [[c, list(p)] for c, p in sorted(s.peers.items())],
            "early": [[c, _conn_state(st)] for c, st in sorted(s.early.items())]}


def _conn_state(st):
    return [bytes(st.buf), st.eof, st.reset, st.gen]


def _conn_from(d):
    from .net import ConnState
    st = ConnState()
    st.buf, st.eof, st.reset, st.gen = bytearray(d[0]), d[1], d[2], d[3]
    return st


def _file_state(f, index_of, pipes):
    from . import net as N
    st = f.state()
    if isinstance(f, F.TmpFile):
        st["node"] = f.node.to_state()
        st["ino"] = f.node.ino
    elif isinstance(f, F.PipeEnd):
        p = pipes.setdefault(id(f.pipe), [len(pipes), f.pipe])
        st.update(pipe=p[0], reading=f.reading)
    elif isinstance(f, N.ConnSocket):
        st.update(kind="conn", conn=f.conn, st=_conn_state(f.st), bound=list(f.bound or ("0.0.0.0", 0)),
                  shut_wr=f.shut_wr, closed_out=f.closed_out, opts=[[list(a), b] for a, b in f.opts.items()])
    elif isinstance(f, N.ListenSocket):
        st.update(kind="listen", family=f.family, type=f.type, bound=list(f.bound) if f.bound else None,
                  backlog=list(f.backlog), listening=f.listening, gen=f.gen,
                  opts=[[list(a), b] for a, b in f.opts.items()])
    elif isinstance(f, N.EventFd):
        st.update(value=f.value, semaphore=f.semaphore, gen=f.gen)
    elif isinstance(f, N.TimerFd):
        st.update(clock=f.clock, next_ns=f.next_ns, interval_ns=f.interval_ns, gen=f.gen)
    elif isinstance(f, N.Epoll):
        # In the dict's own order, not sorted: epoll_wait reports ready files in that
        # order (registration order), so a restored copy must keep it (sorted, a new
        # backup read another connection first and diverged after a state transfer).
        st["interest"] = [[fd, index_of(e[0]), e[1], e[2], e[3]] for fd, e in f.interest.items()]
    return st


def capture(k, ctx_bytes) -> dict:
    fs = k.files
    objs, index = [], {}
    pipes = {}

    def index_of(f):
        if id(f) not in index:
            index[id(f)] = len(objs)
            objs.append(None)
            objs[index[id(f)]] = _file_state(f, index_of, pipes)
        return index[id(f)]
    for fd in sorted(fs.fds):
        index_of(fs.fds[fd])
    sockets = _sockets_state(k, index_of)
    shared = [[start, size, index_of(f), off] for start, size, f, off in k.shared_maps]
    return {
        "shared_maps": shared,
        "files": objs, "fds": [[fd, index[id(f)]] for fd, f in sorted(fs.fds.items())],
        "pipes": [[bytes(p.buf), p.readers, p.writers] for _, p in sorted(pipes.values(), key=lambda e: e[0])],
        "cwd": fs.cwd, "umask": fs.umask, "cloexec": sorted(fs.cloexec), "tmp": fs.tmp.root.to_state(),
        "mem": k.mem.state(), "calls": k.calls,
        "sigactions": [[s, a] for s, a in sorted(k.sigactions.items())],
        "rlimits": [[r, list(v)] for r, v in sorted(k.rlimits.items())],
        "rseq": k.rseq, "warned": sorted(k.warned, key=str), "itimer": list(k.itimer),
        "signals_pending": list(k.signals_pending), "sockets": sockets,
        "threads": _threads_state(k, ctx_bytes),
        "next_ino": TmpNode._next_ino[0],
    }


def _find(node, ino):
    if node.ino == ino:
        return node
    for child in (node.children or {}).values():
        got = _find(child, ino)
        if got is not None:
            return got
    return None


def restore(k, st, ctx_from):
    fs = k.files
    fs.cwd, fs.umask, fs.cloexec = st["cwd"], st["umask"], set(st["cloexec"])
    fs.tmp.root = TmpNode.from_state(st["tmp"])
    TmpNode._next_ino[0] = max(TmpNode._next_ino[0], st["next_ino"])
    pipes = []
    for buf, readers, writers in st["pipes"]:
        p = F.Pipe()
        p.buf, p.readers, p.writers = bytearray(buf), readers, writers
        pipes.append(p)
    from . import net as N
    objs = []
    for s in st["files"]:
        kind = s["kind"]
        if kind == "conn":
            f = N.ConnSocket(s["conn"], _conn_from(s["st"]), tuple(s["bound"]), s["flags"])
            f.shut_wr, f.closed_out = s["shut_wr"], s["closed_out"]
            f.opts = {tuple(a): b for a, b in s["opts"]}
        elif kind == "listen":
            f = N.ListenSocket(s["family"], s["type"], s["flags"])
            f.bound = tuple(s["bound"]) if s["bound"] else None
            f.backlog.extend(s["backlog"])
            f.listening, f.gen = s["listening"], s["gen"]
            f.opts = {tuple(a): b for a, b in s["opts"]}
        elif kind == "eventfd":
            f = N.EventFd(s["value"], 0)
            f.semaphore, f.gen = s["semaphore"], s["gen"]
        elif kind == "timerfd":
            f = N.TimerFd(s["clock"], 0)
            f.next_ns, f.interval_ns, f.gen = s["next_ns"], s["interval_ns"], s["gen"]
        elif kind == "epoll":
            f = N.Epoll(0)
        elif kind == "console":
            f = F.Console(s["gpath"], s["flags"])
        elif kind == "stdin":
            f = F.Stdin(s["gpath"], s["flags"])
        elif kind == "root":
            f = F.RootFile(s["gpath"], s["flags"], s["hostpath"])
        elif kind == "data":
            f = F.DataFile(s["gpath"], s["flags"], s["hostpath"])
        elif kind == "dir":
            f = F.HostDir(s["gpath"], s["flags"], s["hostpath"])
            f.entries = s["entries"]
        elif kind == "bytes":
            f = F.BytesFile(s["gpath"], s["flags"], s["content"])
        elif kind == "tmp":
            node = _find(fs.tmp.root, s["ino"]) or TmpNode.from_state(s["node"])
            f = F.TmpFile(s["gpath"], s["flags"], node)
        elif kind == "pipe":
            f = F.PipeEnd(pipes[s["pipe"]], s["reading"])
            f.flags = s["flags"]
        else:
            f = {"null": F.DevNull, "zero": F.DevZero, "random": F.DevRandom}[kind](s["gpath"], s["flags"])
        f.pos = s["pos"]
        objs.append(f)
    for s, f in zip(st["files"], objs):
        if s["kind"] == "epoll":
            f.interest = {fd: [objs[i], ev, data, last] for fd, i, ev, data, last in s["interest"]}
    fs.fds = {fd: objs[i] for fd, i in st["fds"]}
    k.shared_maps = [[start, size, objs[i], off] for start, size, i, off in st.get("shared_maps", [])]
    so = st["sockets"]
    socks = k.sockets
    socks.listeners = [objs[i] for i in so["listeners"]]
    socks.conns = {c: objs[i] for c, i in so["conns"]}
    socks.unclaimed.clear()
    socks.unclaimed.extend(so["unclaimed"])
    socks.peers = {c: tuple(p) for c, p in so["peers"]}
    socks.early = {c: _conn_from(d) for c, d in so["early"]}
    k.calls = st["calls"]
    _threads_restore(k, st["threads"], ctx_from)
    k.sigactions = {s: a for s, a in st["sigactions"]}
    k.rlimits = {r: tuple(v) for r, v in st["rlimits"]}
    k.rseq = st["rseq"]
    k.itimer, k.signals_pending = list(st["itimer"]), list(st["signals_pending"])
    k.warned = set(st["warned"])
