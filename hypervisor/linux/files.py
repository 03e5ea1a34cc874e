"""Open files of the Linux personality: one class per kind of file, each saying where
its bytes come from (the root: read again at replay; the data directory and host
/proc files: logged inputs; /tmp and pipes: guest state) and where they go (the
console; the data directory, as output under the Output Rule; /tmp)."""
from __future__ import annotations

import errno
import os
import stat as st

from .fs import (DT_CHR, DT_DIR, DT_REG, GuestErr, O_ACCMODE, O_APPEND, O_NONBLOCK, O_RDWR, O_WRONLY, TmpNode,
                 host_listing, host_stat, pack_dirents, pack_stat)
from .kernel import Blocked

IO_MAX = 64 << 20        # one read or write moves at most this much (Linux caps at ~2 GiB)


def _chr_stat(rdev, ino):
    return pack_stat(0x5, ino, st.S_IFCHR | 0o666, 1, 0, 0, rdev, 0, 4096, 0, 0, 0, 0)


class File:
    kind = "file"
    seekable = True

    def __init__(self, gpath, flags):
        self.gpath = gpath
        self.flags = flags
        self.pos = 0

    def readable(self):
        return (self.flags & O_ACCMODE) != O_WRONLY

    def writable(self):
        return (self.flags & O_ACCMODE) in (O_WRONLY, O_RDWR)

    # Defaults: what Linux answers for a file that cannot do this.
    def pread(self, k, n, off):
        raise GuestErr(errno.EINVAL)

    def pwrite(self, k, data, off):
        raise GuestErr(errno.EBADF)

    def size(self, k):
        return 0

    def read(self, k, n):
        data = self.pread(k, n, self.pos)
        self.pos += len(data)
        return data

    def write(self, k, data):
        if self.flags & O_APPEND:
            self.pos = self.size(k)
        n = self.pwrite(k, data, self.pos)
        self.pos += n
        return n

    def stat(self, k):
        raise NotImplementedError

    def getdents(self, k, size):
        raise GuestErr(errno.ENOTDIR)

    def map_bytes(self, k, off, n):
        raise GuestErr(errno.ENODEV)

    def truncate(self, k, length):
        raise GuestErr(errno.EINVAL)

    def sync(self, k):
        return 0

    def close(self, k):
        pass

    def state(self):
        return {"kind": self.kind, "gpath": self.gpath, "flags": self.flags, "pos": self.pos}


class Console(File):
    """stdout and stderr: the guest's console (one stream to the observer)."""
    kind = "console"
    seekable = False

    def pwrite(self, k, data, off):
        k.m.console.append(data)
        return len(data)

    def write(self, k, data):
        return self.pwrite(k, data, 0)

    def read(self, k, n):
        raise GuestErr(errno.EBADF)

    def stat(self, k):
        return pack_stat(0xC, 1, st.S_IFIFO | 0o600, 1, 1000, 1000, 0, 0, 4096, 0, 0, 0, 0)


class Stdin(File):
    """stdin: bytes the input device received (Input records), in both modes."""
    kind = "stdin"
    seekable = False

    def read(self, k, n):
        inp = k.m.input
        if not inp.fifo:
            if inp.eof:
                return b""
            if self.flags & O_NONBLOCK:
                raise GuestErr(errno.EAGAIN)
            raise Blocked("stdin", ready=lambda: bool(inp.fifo) or inp.eof)
        data = bytes(inp.fifo[:n])
        del inp.fifo[:len(data)]
        return data

    def stat(self, k):
        return pack_stat(0xC, 2, st.S_IFIFO | 0o600, 1, 1000, 1000, 0, 0, 4096, 0, 0, 0, 0)


class HostFile(File):
    """A guest file backed by a host file, opened on first use (and again after a
    state transfer, which carries the path, not the descriptor)."""

    def __init__(self, gpath, flags, hostpath):
        super().__init__(gpath, flags)
        self.hostpath = hostpath
        self._fd = None

    def open_mode(self):
        return os.O_RDONLY

    def fd(self):
        if self._fd is None:
            self._fd = os.open(self.hostpath, self.open_mode() | os.O_CLOEXEC)
        return self._fd

    def stat(self, k):
        return k.host(lambda: host_stat(self.hostpath))

    def close(self, k):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def state(self):
        return dict(super().state(), hostpath=self.hostpath)


class RootFile(HostFile):
    """A file of the read-only root: read from this host's copy in both modes (its
    identity was checked at open)."""
    kind = "root"

    def pread(self, k, n, off):
        return os.pread(self.fd(), min(n, IO_MAX), off)

    def size(self, k):
        return os.fstat(self.fd()).st_size

    def pwrite(self, k, data, off):
        raise GuestErr(errno.EBADF)

    def map_bytes(self, k, off, n):
        return os.pread(self.fd(), n, off)


class DataFile(HostFile):
    """A file of the data directory: host state. Reads are logged inputs; writes are
    outputs (performed by the primary under the Output Rule, never by replay)."""
    kind = "data"
    # While the syscall hook may read this file in C (linux/cfiles.py), its position
    # lives in the C mirror's slot, and _cfd is its fd there.
    _cslot = None
    _cfd = None
    _p = 0

    @property
    def pos(self):
        s = self._cslot
        return self._p if s is None else int(s.pos)

    @pos.setter
    def pos(self, v):
        s = self._cslot
        if s is None:
            self._p = v
        else:
            s.pos = v

    def open_mode(self):
        return os.O_RDWR if self.writable() and self.readable() else os.O_WRONLY if self.writable() else os.O_RDONLY

    def pread(self, k, n, off):
        return _ok(k.host(lambda: _try(lambda: os.pread(self.fd(), min(n, IO_MAX), off))))

    def pwrite(self, k, data, off):
        return _ok(k.output(lambda: _try(lambda: os.pwrite(self.fd(), data, off))))

    def size(self, k):
        return _ok(k.host(lambda: _try(lambda: os.fstat(self.fd()).st_size)))

    def map_bytes(self, k, off, n):
        return _ok(k.host(lambda: _try(lambda: os.pread(self.fd(), n, off))))

    def truncate(self, k, length):
        _ok(k.output(lambda: _try(lambda: os.ftruncate(self.fd(), length) or 0)))

    def sync(self, k):
        return _ok(k.output(lambda: _try(lambda: os.fsync(self.fd()) or 0)))


class BytesFile(File):
    """Contents fixed at open: personality-fixed files, /proc/self/maps, and host /proc
    and /sys files (whose contents were a logged input)."""
    kind = "bytes"

    def __init__(self, gpath, flags, content, ino=3):
        super().__init__(gpath, flags)
        self.content = content
        self.ino = ino

    def pread(self, k, n, off):
        return self.content[off:off + n]

    def size(self, k):
        return len(self.content)

    def stat(self, k):
        return pack_stat(0x3, self.ino, st.S_IFREG | 0o444, 1, 0, 0, 0, 0, 4096, 0, 0, 0, 0)

    def state(self):
        return dict(super().state(), content=self.content)


class TmpFile(File):
    """A file of the in-memory /tmp: guest state."""
    kind = "tmp"

    def __init__(self, gpath, flags, node: TmpNode):
        super().__init__(gpath, flags)
        self.node = node

    def pread(self, k, n, off):
        return bytes(self.node.data[off:off + n])

    def pwrite(self, k, data, off):
        d = self.node.data
        if off > len(d):
            d += bytes(off - len(d))
        d[off:off + len(data)] = data
        self.node.mtime_ns = k.now_ns_state()
        return len(data)

    def size(self, k):
        return len(self.node.data)

    def stat(self, k):
        return self.node.stat()

    def map_bytes(self, k, off, n):
        return bytes(self.node.data[off:off + n])

    def truncate(self, k, length):
        d = self.node.data
        if length < len(d):
            del d[length:]
        else:
            d += bytes(length - len(d))

    def getdents(self, k, size):
        if not self.node.is_dir:
            raise GuestErr(errno.ENOTDIR)
        entries = [[".", self.node.ino, DT_DIR], ["..", 1, DT_DIR]] + [
            [name, n.ino, DT_DIR if n.is_dir else DT_REG] for name, n in sorted(self.node.children.items())]
        data, self.pos = pack_dirents(entries, self.pos, size)
        return data


class HostDir(File):
    """A directory of the root or the data directory: its listing is a logged input,
    taken when the guest first reads it."""
    kind = "dir"

    def __init__(self, gpath, flags, hostpath):
        super().__init__(gpath, flags)
        self.hostpath = hostpath
        self.entries = None

    def getdents(self, k, size):
        if self.entries is None:
            got = k.host(lambda: host_listing(self.hostpath))
            if isinstance(got, int):
                raise GuestErr(got)
            self.entries = [[".", 2, DT_DIR], ["..", 2, DT_DIR]] + got
        data, self.pos = pack_dirents(self.entries, self.pos, size)
        return data

    def read(self, k, n):
        raise GuestErr(errno.EISDIR)

    def stat(self, k):
        return k.host(lambda: host_stat(self.hostpath))

    def state(self):
        return dict(super().state(), hostpath=self.hostpath, entries=self.entries)


class DevNull(File):
    kind = "null"
    seekable = False

    def read(self, k, n):
        return b""

    def pwrite(self, k, data, off):
        return len(data)

    def write(self, k, data):
        return len(data)

    def stat(self, k):
        return _chr_stat(0x103, 6)


class DevZero(DevNull):
    kind = "zero"

    def read(self, k, n):
        return bytes(min(n, IO_MAX))

    def map_bytes(self, k, off, n):
        return bytes(n)

    def stat(self, k):
        return _chr_stat(0x105, 7)


class DevRandom(DevNull):
    """/dev/urandom and /dev/random: the host's randomness, logged."""
    kind = "random"

    def read(self, k, n):
        n = min(n, 1 << 20)
        return k.host(lambda: os.urandom(n))

    def stat(self, k):
        return _chr_stat(0x109, 8)


class Pipe:
    def __init__(self):
        self.buf = bytearray()
        self.readers = 1
        self.writers = 1


class PipeEnd(File):
    kind = "pipe"
    seekable = False
    CAPACITY = 1 << 16

    def __init__(self, pipe, reading):
        super().__init__("pipe:", 0 if reading else O_WRONLY)
        self.pipe = pipe
        self.reading = reading

    def read(self, k, n):
        if not self.reading:
            raise GuestErr(errno.EBADF)
        p = self.pipe
        if not p.buf:
            if p.writers == 0:
                return b""
            if self.flags & O_NONBLOCK:
                raise GuestErr(errno.EAGAIN)
            raise Blocked("pipe", ready=lambda: bool(p.buf) or p.writers == 0)
        data = bytes(p.buf[:n])
        del p.buf[:len(data)]
        return data

    def write(self, k, data):
        if self.reading:
            raise GuestErr(errno.EBADF)
        p = self.pipe
        if p.readers == 0:
            raise GuestErr(errno.EPIPE)
        room = self.CAPACITY - len(p.buf)
        if room <= 0:
            if self.flags & O_NONBLOCK:
                raise GuestErr(errno.EAGAIN)
            raise Blocked("pipe full", ready=lambda: len(p.buf) < self.CAPACITY or p.readers == 0)
        p.buf += data[:room]
        return min(len(data), room)

    def stat(self, k):
        return pack_stat(0xC, id(self.pipe) & 0xFFFF, st.S_IFIFO | 0o600, 1, 1000, 1000, 0, 0, 4096, 0, 0, 0, 0)

    def close(self, k):
        if self.reading:
            self.pipe.readers -= 1
        else:
            self.pipe.writers -= 1


def _try(fn):
    """Host call -> its result, or an errno as a negative number (a logged value)."""
    try:
        return fn()
    except OSError as e:
        return -(e.errno or errno.EIO)


def _ok(v):
    if isinstance(v, int) and v < 0:
        raise GuestErr(-v)
    return v


def dtype_of(mode):
    return DT_DIR if st.S_ISDIR(mode) else DT_REG if st.S_ISREG(mode) else DT_CHR
