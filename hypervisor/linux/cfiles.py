"""The C mirror of the fd table (record side): data-directory files opened, read and
closed in the syscall hook (fastpath_files.c), while the fd table stays Python's.

The table (calls_files.Files.fds, an FdTable) tells the mirror of every change, so
each slot says whether its fd is free, Python's, or a data file C may read. C opens a
file into the lowest free slot (state 2) and logs the call; ``sync`` takes such files
into Python's table, first thing whenever Python runs at a stop or a hook call, before
it looks at any fd. A file taken over keeps its position in its slot (state 3:
DataFile.pos reads it there), so C goes on reading it; it leaves the mirror when its
fd closes, is duplicated, or the recorder stops (``detach``). Replay does not use
this: it runs the same calls from their records in Python.
"""
from __future__ import annotations

import os

from ..uc import ffi
from . import files as F
from .fs import O_CLOEXEC

FREE, PY, C, MIRROR = 0, 1, 2, 3
SLOTS = 1024                # fastpath.h's ftvm_files.fd[]; the personality's FD_MAX
READ_MAX = 1 << 20          # larger reads go to Python (they are rare; the frame buffer holds 4 of these)
FRAMES_BYTES = 4 << 20      # the hook's record buffer (inhook.record_clocks) when files run in C


class CFiles:
    def __init__(self, cpu, files):
        self.cpu = cpu
        self.files = files
        self.t = t = ffi.new("ftvm_files *")
        t.data_dirfd = -1
        t.read_max = READ_MAX
        for fd in range(SLOTS):
            t.fd[fd].hostfd = -1
        guest = (files.data_guest or "").rstrip("/").encode()
        if files.data_host and 0 < len(guest) < 256 and _printable(guest):
            try:
                t.data_dirfd = os.open(files.data_host, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                t.data_dirfd = -1
            ffi.memmove(t.data_guest, guest, len(guest))
            t.data_guest_len = len(guest)
        self.data_guest_len = len(guest)
        files.attach_mirror(self)
        cpu.sys_fs = t

    # --- Python's table changed (FdTable, Files.cwd) ----------------------------------
    def reset(self, fds):
        """The whole table was replaced: every slot from it."""
        for fd in range(SLOTS):
            s = self.t.fd[fd]
            if s.state == C:
                continue
            f = fds.get(fd)
            s.state = FREE if f is None else MIRROR if getattr(f, "_cfd", None) == fd else PY

    def slot_set(self, fd, f):
        if not 0 <= fd < SLOTS:
            return
        cfd = getattr(f, "_cfd", None)
        if cfd is not None and cfd != fd:
            self.demote(f)          # one file at two fds: its position is Python's again
        self.t.fd[fd].state = MIRROR if cfd == fd and f._cslot is not None else PY

    def slot_del(self, fd, f):
        if not 0 <= fd < SLOTS:
            return
        if getattr(f, "_cfd", None) == fd:
            self.demote(f)
        self.t.fd[fd].state = FREE

    def demote(self, f):
        """``f`` leaves the mirror: its position goes back to Python; its host fd was
        Python's already (DataFile._fd)."""
        s = self.t.fd[f._cfd]
        p = int(s.pos)
        f._cslot = f._cfd = None
        f.pos = p
        s.state = PY
        s.hostfd = -1

    def set_cwd(self, cwd):
        b = cwd.encode("utf-8", "surrogateescape")
        t = self.t
        if 0 < len(b) < 256 and _printable(b):
            ffi.memmove(t.cwd, b, len(b))
            t.cwd_len = len(b)
        else:
            t.cwd_len = 0

    # --- C's opens, into Python's table --------------------------------------------------
    def sync(self):
        """Take the files C opened into Python's table (cheap when there are none)."""
        t = self.t
        fresh = t.fresh
        fd = 0
        while fresh and fd < SLOTS:
            s = t.fd[fd]
            if s.state == C:
                self._take(fd, s)
                fresh -= 1
            fd += 1

    def _take(self, fd, s):
        fs = self.files
        gpath = ffi.unpack(s.path, s.path_len).decode()
        f = F.DataFile(gpath, s.flags, os.path.join(fs.data_host, gpath[self.data_guest_len + 1:]))
        f._fd = s.hostfd
        f._cslot, f._cfd = s, fd
        self.t.fresh -= 1
        fs.fds[fd] = f              # slot_set: state 3
        if s.flags & O_CLOEXEC:
            fs.cloexec.add(fd)
        else:
            fs.cloexec.discard(fd)

    def detach(self):
        """The recorder stops: every file back to Python alone."""
        self.sync()
        for f in list(self.files.fds.values()):
            if getattr(f, "_cfd", None) is not None:
                self.demote(f)
        self.files.attach_mirror(None)
        self.cpu.sys_fs = ffi.NULL
        if self.t.data_dirfd >= 0:
            os.close(self.t.data_dirfd)
            self.t.data_dirfd = -1


def _printable(b):
    return all(0x20 <= ch <= 0x7E for ch in b)
