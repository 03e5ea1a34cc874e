"""The Linux personality's part of a snapshot (state transfer to a new backup): the
open files (shared between dup'ed descriptors, as in the kernel), the in-memory /tmp,
the working directory and umask, signal dispositions, and the call pending at the stop.
Memory travels as the address space's mappings (snapshot.py copies their bytes)."""
from __future__ import annotations

from . import files as F
from .fs import TmpNode


def capture(k) -> dict:
    fs = k.files
    objs, index = [], {}
    pipes = {}
    for fd in sorted(fs.fds):
        f = fs.fds[fd]
        if id(f) not in index:
            index[id(f)] = len(objs)
            st = f.state()
            if isinstance(f, F.TmpFile):
                st["node"] = f.node.to_state()
                st["ino"] = f.node.ino
            if isinstance(f, F.PipeEnd):
                p = pipes.setdefault(id(f.pipe), [len(pipes), f.pipe])
                st.update(pipe=p[0], reading=f.reading)
            objs.append(st)
    return {
        "files": objs, "fds": [[fd, index[id(f)]] for fd, f in sorted(fs.fds.items())],
        "pipes": [[bytes(p.buf), p.readers, p.writers] for _, p in sorted(pipes.values(), key=lambda e: e[0])],
        "cwd": fs.cwd, "umask": fs.umask, "cloexec": sorted(fs.cloexec), "tmp": fs.tmp.root.to_state(),
        "mem": k.mem.state(), "calls": k.calls, "pending": list(k.pending) if k.pending else None,
        "intent": k.intent, "sigactions": [[s, a] for s, a in sorted(k.sigactions.items())], "sigmask": k.sigmask,
        "altstack": k.altstack, "rlimits": [[r, list(v)] for r, v in sorted(k.rlimits.items())],
        "tid_ptrs": [k.clear_child_tid, k.robust_list, k.rseq], "warned": sorted(k.warned, key=str),
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


def restore(k, st):
    fs = k.files
    fs.cwd, fs.umask, fs.cloexec = st["cwd"], st["umask"], set(st["cloexec"])
    fs.tmp.root = TmpNode.from_state(st["tmp"])
    TmpNode._next_ino[0] = max(TmpNode._next_ino[0], st["next_ino"])
    pipes = []
    for buf, readers, writers in st["pipes"]:
        p = F.Pipe()
        p.buf, p.readers, p.writers = bytearray(buf), readers, writers
        pipes.append(p)
    objs = []
    for s in st["files"]:
        kind = s["kind"]
        if kind == "console":
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
    fs.fds = {fd: objs[i] for fd, i in st["fds"]}
    k.calls = st["calls"]
    k.pending = tuple(st["pending"]) if st["pending"] else None
    k.intent = st["intent"]
    k.sigactions = {s: a for s, a in st["sigactions"]}
    k.sigmask, k.altstack = st["sigmask"], st["altstack"]
    k.rlimits = {r: tuple(v) for r, v in st["rlimits"]}
    k.clear_child_tid, k.robust_list, k.rseq = st["tid_ptrs"]
    k.warned = set(st["warned"])
