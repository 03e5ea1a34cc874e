"""The guest's file system: what a guest path names, and the open files.

A guest path resolves to one of:
- the read-only **root** (``--root DIR``, default /): the program, its loader and
  libraries. Not logged: record and replay read their own copies, and each file's size
  and SHA-256 are logged at open and checked at replay before the guest sees a byte.
- the **data directory** (``--data HOST:GUEST``): host state. What the guest reads
  from it is logged; what it changes is output (see ``Kernel.output``).
- **/tmp**, a private in-memory file system that is part of the guest's state.
- device files (/dev/null, /dev/zero, /dev/urandom, /dev/random, /dev/std*) and a few
  /proc and /sys files, some with fixed contents, others read from the host (logged).

Every host interaction goes through ``k.host`` (a logged input), ``k.output`` (an output
under the Output Rule) or ``k.check`` (logged at record, compared at replay), so the
same code serves recording, replay and a backup.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat as st
import struct

from ..errors import FtvmError

O_ACCMODE, O_WRONLY, O_RDWR = 3, 1, 2
O_CREAT, O_EXCL, O_TRUNC, O_APPEND, O_NONBLOCK = 0o100, 0o200, 0o1000, 0o2000, 0o4000
O_DIRECTORY, O_NOFOLLOW, O_CLOEXEC, O_PATH, O_TMPFILE = 0o200000, 0o400000, 0o2000000, 0o10000000, 0o20200000
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW, AT_REMOVEDIR, AT_EMPTY_PATH = 0x100, 0x200, 0x1000

DT_UNKNOWN, DT_FIFO, DT_CHR, DT_DIR, DT_REG, DT_LNK = 0, 1, 2, 4, 8, 10
_STAT = struct.Struct("<QQQIIIIQqqq qqqqqq 24x".replace(" ", ""))

# Files whose contents the personality fixes (the same on every host).
FIXED_FILES = {
    "/sys/devices/system/cpu/online": b"0\n",
    "/sys/devices/system/cpu/possible": b"0\n",
    "/sys/devices/system/cpu/present": b"0\n",
    "/proc/sys/vm/overcommit_memory": b"1\n",
    "/sys/kernel/mm/transparent_hugepage/enabled": b"always madvise [never]\n",
    "/proc/sys/kernel/osrelease": b"6.1.0-ftvm\n",
    "/etc/hostname": b"ftvm\n",
}
HOST_DIRS = ("/proc/", "/sys/")     # other files here: host contents, logged at open


class RootMismatch(FtvmError):
    """A file of the read-only root differs from the one the recording read (the root
    must be identical on every host of a run, as VMware FT's shared disk image is)."""
    exit_status = 10


class GuestErr(Exception):
    """A system call fails with this errno (a normal Linux answer, not ftvm's error)."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


def pack_stat(dev, ino, mode, nlink, uid, gid, rdev, size, blksize, blocks, atime_ns, mtime_ns, ctime_ns):
    return _STAT.pack(dev, ino, nlink, mode, uid, gid, 0, rdev, size, blksize, blocks,
                      atime_ns // 10**9, atime_ns % 10**9, mtime_ns // 10**9, mtime_ns % 10**9,
                      ctime_ns // 10**9, ctime_ns % 10**9)


def host_stat(path, follow=True):
    """A host file's stat as Linux's struct stat bytes, or an errno (int)."""
    try:
        s = os.stat(path, follow_symlinks=follow)
    except OSError as e:
        return e.errno
    return pack_stat(s.st_dev, s.st_ino, s.st_mode, s.st_nlink, s.st_uid, s.st_gid, s.st_rdev, s.st_size,
                     s.st_blksize, s.st_blocks, s.st_atime_ns, s.st_mtime_ns, s.st_ctime_ns)


def unpack_stat(b):
    f = _STAT.unpack(b)
    return {"dev": f[0], "ino": f[1], "nlink": f[2], "mode": f[3], "uid": f[4], "gid": f[5], "rdev": f[7],
            "size": f[8], "blksize": f[9], "blocks": f[10], "atime_ns": f[11] * 10**9 + f[12],
            "mtime_ns": f[13] * 10**9 + f[14], "ctime_ns": f[15] * 10**9 + f[16]}


_IDENT_CACHE = {}


def file_identity(path):
    """(size, sha256 hex) of a host file, or None if it cannot be read; cached by
    (device, inode, size, mtime) for the life of the process."""
    try:
        s = os.stat(path)
    except OSError:
        return None
    if not st.S_ISREG(s.st_mode):
        return [s.st_mode & 0o170000, 0, ""]
    key = (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns)
    got = _IDENT_CACHE.get(key)
    if got is None:
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except OSError:
            return None
        got = _IDENT_CACHE[key] = [st.S_IFREG, s.st_size, h.hexdigest()]
    return got


def host_listing(path):
    """Directory entries of a host directory: [[name, ino, d_type]], or an errno."""
    try:
        out = []
        with os.scandir(path) as it:
            for e in it:
                try:
                    t = DT_DIR if e.is_dir(follow_symlinks=False) else DT_LNK if e.is_symlink() else \
                        DT_REG if e.is_file(follow_symlinks=False) else DT_UNKNOWN
                except OSError:
                    t = DT_UNKNOWN
                out.append([e.name, e.inode(), t])
        return out
    except OSError as e:
        return e.errno


def pack_dirents(entries, start, size):
    """linux_dirent64 records for entries[start:] that fit in ``size`` bytes.
    Returns (bytes, next index)."""
    out = bytearray()
    i = start
    while i < len(entries):
        name, ino, dtype = entries[i]
        nb = name.encode("utf-8", "surrogateescape") + b"\0"
        reclen = (19 + len(nb) + 7) & ~7
        if len(out) + reclen > size:
            break
        rec = struct.pack("<QqHB", ino or 1, i + 1, reclen, dtype) + nb
        out += rec + bytes(reclen - len(rec))
        i += 1
    return bytes(out), i


# --- the in-memory /tmp -------------------------------------------------------------------

class TmpNode:
    _next_ino = [1000]

    def __init__(self, is_dir, mode, now_ns):
        self.is_dir = is_dir
        self.mode = (st.S_IFDIR if is_dir else st.S_IFREG) | (mode & 0o7777)
        self.data = bytearray()
        self.children = {} if is_dir else None
        self.target = None           # symlink target
        TmpNode._next_ino[0] += 1
        self.ino = TmpNode._next_ino[0]
        self.mtime_ns = now_ns

    def stat(self):
        size = len(self.data) if not self.is_dir else 4096
        return pack_stat(0x15, self.ino, self.mode, 2 if self.is_dir else 1, 1000, 1000, 0, size, 4096,
                         (size + 511) // 512, self.mtime_ns, self.mtime_ns, self.mtime_ns)

    def to_state(self):
        return [self.is_dir, self.mode, bytes(self.data), self.ino, self.mtime_ns,
                {k: v.to_state() for k, v in self.children.items()} if self.is_dir else None]

    @classmethod
    def from_state(cls, s):
        n = cls.__new__(cls)
        n.is_dir, n.mode, data, n.ino, n.mtime_ns, kids = s
        n.data = bytearray(data)
        n.target = None
        n.children = {k: cls.from_state(v) for k, v in kids.items()} if n.is_dir else None
        return n


class TmpFs:
    def __init__(self, now_ns=0):
        self.root = TmpNode(True, 0o1777, now_ns)

    def lookup(self, rel):
        """Node at ``rel`` (components under /tmp), its parent, and the last name."""
        parts = [p for p in rel.split("/") if p and p != "."]
        node, parent, name = self.root, None, ""
        for i, p in enumerate(parts):
            if not node.is_dir:
                raise GuestErr(errno.ENOTDIR)
            parent, name = node, p
            node = node.children.get(p)
            if node is None:
                if i < len(parts) - 1:
                    parent = None       # a directory on the way is missing: ENOENT, never create
                break
        return node, parent, name
