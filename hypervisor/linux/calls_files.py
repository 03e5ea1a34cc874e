"""The file family: the fd table, path resolution, and the file system calls."""
from __future__ import annotations

import errno
import os
import posixpath
import stat as st
import struct

from . import files as F
from .fs import (AT_EMPTY_PATH, AT_FDCWD, AT_REMOVEDIR, AT_SYMLINK_NOFOLLOW, FIXED_FILES, HOST_DIRS, O_CLOEXEC,
                 O_CREAT, O_DIRECTORY, O_EXCL, O_NONBLOCK, O_RDWR, O_TRUNC, O_WRONLY, GuestErr, TmpFs, TmpNode,
                 file_identity, host_stat, pack_stat, unpack_stat)
from .table import syscall

FD_MAX = 1024
SEEK_SET, SEEK_CUR, SEEK_END = 0, 1, 2
F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_GETLK, F_SETLK, F_SETLKW = 0, 1, 2, 3, 4, 5, 6, 7
F_DUPFD_CLOEXEC = 1030
FD_CLOEXEC = 1
PATH_MAX = 4096


class FdTable(dict):
    """fd -> File. Tells the C mirror (cfiles.py), while one is attached, of every
    change, so that the syscall hook knows which fds are free and which files it may
    read."""
    mirror = None

    def __setitem__(self, fd, f):
        dict.__setitem__(self, fd, f)
        if self.mirror is not None:
            self.mirror.slot_set(fd, f)

    def __delitem__(self, fd):
        f = self[fd]
        dict.__delitem__(self, fd)
        if self.mirror is not None:
            self.mirror.slot_del(fd, f)

    def pop(self, fd, *default):
        if fd not in self:
            return dict.pop(self, fd, *default)
        f = self[fd]
        del self[fd]
        return f


class Files:
    """The fd table, the working directory and the mounts."""

    def __init__(self, root, data_host, data_guest, cwd, program):
        self.root = root                 # host directory that is the guest's /
        self.data_host = data_host       # host directory of the data mount (or None)
        self.data_guest = data_guest     # where the guest sees it
        self._mirror = None              # cfiles.CFiles while the hook serves files in C
        self.cwd = cwd
        self.program = program           # guest path of the program (/proc/self/exe)
        self.fds = {}                    # fd -> File
        self.cloexec = set()
        self.umask = 0o022
        self.tmp = TmpFs()

    @property
    def fds(self):
        return self._fds

    @fds.setter
    def fds(self, table):
        self._fds = FdTable(table)
        if self._mirror is not None:
            self._fds.mirror = self._mirror
            self._mirror.reset(self._fds)

    @property
    def cwd(self):
        return self._cwd

    @cwd.setter
    def cwd(self, gpath):
        self._cwd = gpath
        if self._mirror is not None:
            self._mirror.set_cwd(gpath)

    def attach_mirror(self, mirror):
        """cfiles.CFiles (or None): keep it told of every fd and the working directory."""
        self._mirror = mirror
        self._fds.mirror = mirror
        if mirror is not None:
            mirror.reset(self._fds)
            mirror.set_cwd(self._cwd)

    def std(self):
        self.fds = {0: F.Stdin("/dev/stdin", 0), 1: F.Console("/dev/stdout", O_WRONLY),
                    2: F.Console("/dev/stderr", O_WRONLY)}

    def get(self, fd):
        f = self.fds.get(_s32(fd))
        if f is None:
            raise GuestErr(errno.EBADF)
        return f

    def install(self, f, cloexec=False, low=0):
        fd = low
        while fd in self.fds:
            fd += 1
        if fd >= FD_MAX:
            raise GuestErr(errno.EMFILE)
        self.fds[fd] = f
        if cloexec:
            self.cloexec.add(fd)
        else:
            self.cloexec.discard(fd)
        return fd

    # --- paths ------------------------------------------------------------------------
    def abspath(self, k, dirfd, path):
        if path.startswith("/"):
            base = "/"
        elif _s32(dirfd) == AT_FDCWD:
            base = self.cwd
        else:
            base = self.get(dirfd).gpath
        if ".." in path.split("/"):
            self._check_dotdot(k, base, path)
        return posixpath.normpath(posixpath.join(base, path)).replace("//", "/")

    def _check_dotdot(self, k, base, path):
        """Paths are resolved by name, but Linux resolves "x/.." by looking x up: it must
        be a directory (else ENOENT or ENOTDIR), as in `mkdir -p a/b; rm -r a/b; cat a/b/../f`."""
        cur = base
        for part in path.split("/"):
            if part == ".." and cur != "/":
                kind, detail = self.where(cur)
                if kind == "tmp":
                    node, _, _ = self.tmp.lookup(detail)
                    isdir = None if node is None else node.is_dir
                elif kind in ("root", "data", "hostfile"):
                    got = k.host(lambda: host_stat(detail))
                    isdir = None if isinstance(got, int) else st.S_ISDIR(unpack_stat(got)["mode"])
                else:
                    isdir = True
                if not isdir:
                    raise GuestErr(errno.ENOENT if isdir is None else errno.ENOTDIR)
            if part and part != ".":
                cur = posixpath.normpath(posixpath.join(cur, part))

    def where(self, gpath, follow=True):
        """('data'|'tmp'|'fixed'|'dev'|'proc'|'hostfile'|'root', detail). In the data
        directory, symlinks resolve inside it (an absolute or ../ target cannot lead
        out of it, as in the root); ``follow`` False leaves the last component alone
        (for calls that act on a link itself: lstat, readlink, unlink, rename, mkdir)."""
        if self.data_host and (gpath == self.data_guest or gpath.startswith(self.data_guest + "/")):
            rel = "/" + gpath[len(self.data_guest):].lstrip("/")
            if follow or rel == "/":
                return "data", _in_root(self.data_host, rel)
            parent, name = posixpath.split(rel)
            return "data", os.path.join(_in_root(self.data_host, parent), name)
        if gpath == "/tmp" or gpath.startswith("/tmp/"):
            # The in-memory /tmp is a layer over the root's /tmp: what the guest made
            # there is its own; anything else under /tmp is read from the root (a
            # checkout or a test's files that happen to live in the host's /tmp).
            rel = gpath[4:]
            try:
                node = self.tmp.lookup(rel)[0]
            except GuestErr:
                node = None
            if node is None and rel.strip("/") and os.path.lexists(self.root_host(gpath)):
                return "root", self.root_host(gpath)
            return "tmp", rel
        if gpath in FIXED_FILES:
            return "fixed", FIXED_FILES[gpath]
        if gpath.startswith("/dev/"):
            return "dev", gpath[5:]
        if gpath.startswith("/proc/self/") or gpath == "/proc/self" or gpath.startswith("/proc/100/"):
            return "proc", gpath.split("/", 3)[3] if gpath.count("/") >= 3 else ""
        if any(gpath.startswith(d) for d in HOST_DIRS):
            return "hostfile", gpath
        return "root", self.root_host(gpath)

    def root_host(self, gpath):
        if self.root == "/":
            return gpath
        return _in_root(self.root, gpath)

    def state(self):
        return {"cwd": self.cwd, "umask": self.umask, "cloexec": sorted(self.cloexec),
                "fds": {fd: f.state() for fd, f in self.fds.items()}, "tmp": self.tmp.root.to_state()}


def _in_root(root, gpath, depth=0):
    """Host path of ``gpath`` under ``root``, following symlinks inside the root."""
    parts = [p for p in gpath.split("/") if p]
    cur = root
    for i, p in enumerate(parts):
        nxt = os.path.join(cur, p)
        if os.path.islink(nxt) and depth < 40:
            target = os.readlink(nxt)
            if target.startswith("/"):
                rest = "/".join([target.lstrip("/")] + parts[i + 1:])
            else:
                rel = os.path.relpath(cur, root)
                rest = posixpath.normpath(posixpath.join("/" if rel == "." else "/" + rel, target, *parts[i + 1:]))
            return _in_root(root, "/" + rest.lstrip("/"), depth + 1)
        cur = nxt
    return cur


def _s32(v):
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _s64(v):
    return v - (1 << 64) if v >= 1 << 63 else v


# --- opening ----------------------------------------------------------------------------

def open_path(k, dirfd, path_addr, flags, mode):
    fs = k.files
    path = k.read_str(path_addr)
    if not path:
        raise GuestErr(errno.ENOENT)
    gpath = fs.abspath(k, dirfd, path)
    kind, detail = fs.where(gpath)
    wants_write = (flags & 3) in (O_WRONLY, O_RDWR) or flags & (O_CREAT | O_TRUNC)
    if kind == "root":
        ident = k.check(file_identity(detail), f"root file {gpath}")
        if ident is None:
            if flags & O_CREAT:
                raise GuestErr(errno.EROFS)
            raise GuestErr(errno.ENOENT)
        if flags & O_CREAT and flags & O_EXCL:
            raise GuestErr(errno.EEXIST)
        if wants_write:
            raise GuestErr(errno.EROFS if ident[0] != st.S_IFDIR else errno.EISDIR)
        if ident[0] == st.S_IFDIR:
            return F.HostDir(gpath, flags, detail)
        if flags & O_DIRECTORY:
            raise GuestErr(errno.ENOTDIR)
        return F.RootFile(gpath, flags, detail)
    if kind == "data":
        def do_open():
            hflags = (flags & (3 | O_CREAT | O_EXCL | O_TRUNC | O_DIRECTORY)) | os.O_CLOEXEC
            try:
                try:
                    fd = os.open(detail, hflags, mode & ~fs.umask & 0o7777)
                except FileExistsError:
                    if not k.redo_now:       # done again after a failover: the old primary made it
                        raise
                    fd = os.open(detail, hflags & ~O_EXCL, mode & ~fs.umask & 0o7777)
            except OSError as e:
                return [-(e.errno or errno.EIO), 0]
            isdir = st.S_ISDIR(os.fstat(fd).st_mode)
            os.close(fd)
            return [0, int(isdir)]
        got = k.output(do_open) if flags & (O_CREAT | O_TRUNC) else k.host(do_open)
        if got[0] < 0:
            raise GuestErr(-got[0])
        if got[1]:
            return F.HostDir(gpath, flags, detail)
        return F.DataFile(gpath, flags, detail)
    if kind == "tmp":
        node, parent, name = fs.tmp.lookup(detail)
        if node is None:
            if parent is None or not (flags & O_CREAT):
                raise GuestErr(errno.ENOENT)
            node = TmpNode(False, mode & ~fs.umask, k.now_ns_state())
            parent.children[name] = node
        elif flags & O_CREAT and flags & O_EXCL:
            raise GuestErr(errno.EEXIST)
        if node.is_dir and wants_write:
            raise GuestErr(errno.EISDIR)
        if flags & O_DIRECTORY and not node.is_dir:
            raise GuestErr(errno.ENOTDIR)
        if flags & O_TRUNC and not node.is_dir:
            del node.data[:]
        return F.TmpFile(gpath, flags, node)
    if kind == "fixed":
        return F.BytesFile(gpath, flags, detail, ino=4)
    if kind == "dev":
        dev = {"null": F.DevNull, "zero": F.DevZero, "urandom": F.DevRandom, "random": F.DevRandom}.get(detail)
        if dev is not None:
            return dev(gpath, flags)
        if detail in ("stdin", "stdout", "stderr", "fd/0", "fd/1", "fd/2"):
            fd = {"stdin": 0, "stdout": 1, "stderr": 2}.get(detail, int(detail[-1:] or 0))
            return fs.get(fd)
        if detail == "tty":
            raise GuestErr(errno.ENXIO)
        raise GuestErr(errno.ENOENT)
    if kind == "proc":
        if detail == "maps":
            return F.BytesFile(gpath, flags, k.mem.maps_text(), ino=5)
        if detail == "exe":
            return open_path_str(k, fs.program, flags)
        if detail == "cmdline":
            return F.BytesFile(gpath, flags, b"\0".join(a.encode() for a in k.argv) + b"\0", ino=6)
        if detail == "environ":
            return F.BytesFile(gpath, flags, b"\0".join(a.encode() for a in k.envp) + b"\0", ino=7)
        raise GuestErr(errno.ENOENT)
    # hostfile: a host /proc or /sys file; its contents are a logged input
    got = k.host(lambda: _read_whole(detail))
    if isinstance(got, int):
        raise GuestErr(got)
    return F.BytesFile(gpath, flags, got, ino=8)


def open_path_str(k, gpath, flags):
    kind, detail = k.files.where(gpath)
    ident = k.check(file_identity(detail), f"root file {gpath}")
    if ident is None:
        raise GuestErr(errno.ENOENT)
    return F.RootFile(gpath, flags, detail)


def _read_whole(path):
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as e:
        return e.errno or errno.EIO


@syscall("openat", "fd", "path", "flags:open", "hex", family="files")
def sys_openat(k, dirfd, path, flags, mode):
    f = open_path(k, dirfd, path, flags & 0xFFFFFFFF, mode)
    return k.files.install(f, cloexec=bool(flags & O_CLOEXEC))


@syscall("open", "path", "flags:open", "hex", family="files")
def sys_open(k, path, flags, mode):
    return sys_openat(k, AT_FDCWD, path, flags, mode)


@syscall("creat", "path", "hex", family="files")
def sys_creat(k, path, mode):
    return sys_openat(k, AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode)


@syscall("close", "fd", family="files")
def sys_close(k, fd):
    f = k.files.get(fd)
    del k.files.fds[_s32(fd)]
    k.files.cloexec.discard(_s32(fd))
    if f not in k.files.fds.values():
        f.close(k)
    return 0


# --- reading and writing -----------------------------------------------------------------

@syscall("read", "fd", "obuf", "size", family="files")
def sys_read(k, fd, buf, n):
    f = k.files.get(fd)
    if not f.readable():
        raise GuestErr(errno.EBADF)
    k.check_buffer(buf, n)
    data = f.read(k, min(n, F.IO_MAX))
    k.write_mem(buf, data)
    return len(data)


@syscall("write", "fd", "buf", "size", family="files")
def sys_write(k, fd, buf, n):
    f = k.files.get(fd)
    if not f.writable():
        raise GuestErr(errno.EBADF)
    return f.write(k, k.read_mem(buf, min(n, F.IO_MAX)))


@syscall("pread64", "fd", "obuf", "size", "int", family="files")
def sys_pread64(k, fd, buf, n, off):
    f = k.files.get(fd)
    if not f.seekable:
        raise GuestErr(errno.ESPIPE)
    if _s64(off) < 0:
        raise GuestErr(errno.EINVAL)
    k.check_buffer(buf, n)
    data = f.pread(k, min(n, F.IO_MAX), off)
    k.write_mem(buf, data)
    return len(data)


@syscall("pwrite64", "fd", "buf", "size", "int", family="files")
def sys_pwrite64(k, fd, buf, n, off):
    f = k.files.get(fd)
    if not f.seekable:
        raise GuestErr(errno.ESPIPE)
    if not f.writable():
        raise GuestErr(errno.EBADF)
    return f.pwrite(k, k.read_mem(buf, min(n, F.IO_MAX)), off)


def _iovecs(k, iov, cnt):
    if cnt > 1024:
        raise GuestErr(errno.EINVAL)
    raw = k.read_mem(iov, 16 * cnt)
    return [struct.unpack_from("<QQ", raw, 16 * i) for i in range(cnt)]


@syscall("readv", "fd", "ptr", "int", family="files")
def sys_readv(k, fd, iov, cnt):
    f = k.files.get(fd)
    total = 0
    vecs = _iovecs(k, iov, cnt)
    want = sum(n for _, n in vecs)
    data = f.read(k, min(want, F.IO_MAX))
    for base, n in vecs:
        part = data[total:total + n]
        k.write_mem(base, part)
        total += len(part)
        if total >= len(data):
            break
    return len(data)


@syscall("writev", "fd", "ptr", "int", family="files")
def sys_writev(k, fd, iov, cnt):
    f = k.files.get(fd)
    if not f.writable():
        raise GuestErr(errno.EBADF)
    data = b"".join(k.read_mem(base, n) for base, n in _iovecs(k, iov, cnt))
    return f.write(k, data) if data else 0


@syscall("lseek", "fd", "int", "int", family="files")
def sys_lseek(k, fd, off, whence):
    f = k.files.get(fd)
    if not f.seekable:
        raise GuestErr(errno.ESPIPE)
    off = _s64(off)
    if whence == SEEK_SET:
        new = off
    elif whence == SEEK_CUR:
        new = f.pos + off
    elif whence == SEEK_END:
        new = f.size(k) + off
    else:
        raise GuestErr(errno.EINVAL)
    if new < 0:
        raise GuestErr(errno.EINVAL)
    f.pos = new
    return new


@syscall("getdents64", "fd", "obuf", "size", family="files")
def sys_getdents64(k, fd, buf, size):
    f = k.files.get(fd)
    data = f.getdents(k, size)
    if not data and f.pos < len(getattr(f, "entries", None) or []):
        raise GuestErr(errno.EINVAL)       # buffer too small for the next entry
    k.write_mem(buf, data)
    return len(data)


# --- metadata ----------------------------------------------------------------------------

def stat_path(k, dirfd, path_addr, flags):
    fs = k.files
    path = k.read_str(path_addr)
    if not path:
        if flags & AT_EMPTY_PATH:
            return fs.get(dirfd).stat(k)
        raise GuestErr(errno.ENOENT)
    gpath = fs.abspath(k, dirfd, path)
    follow = not (flags & AT_SYMLINK_NOFOLLOW)
    kind, detail = fs.where(gpath, follow)
    if kind in ("root", "data"):
        got = k.host(lambda: host_stat(detail, follow))
    elif kind == "hostfile":
        got = k.host(lambda: host_stat(detail, follow))
    elif kind == "tmp":
        node, _, _ = fs.tmp.lookup(detail)
        if node is None:
            raise GuestErr(errno.ENOENT)
        got = node.stat()
    else:
        got = open_path_for_stat(k, gpath)
    if isinstance(got, int):
        raise GuestErr(got)
    return got


def open_path_for_stat(k, gpath):
    kind, detail = k.files.where(gpath)
    if kind == "fixed":
        return F.BytesFile(gpath, 0, detail).stat(k)
    if kind == "dev":
        dev = {"null": F.DevNull, "zero": F.DevZero, "urandom": F.DevRandom, "random": F.DevRandom}.get(detail)
        if dev is None:
            return errno.ENOENT
        return dev(gpath, 0).stat(k)
    if kind == "proc":
        if detail == "exe":
            return k.host(lambda: host_stat(k.files.root_host(k.files.program)))
        if detail in ("maps", "cmdline", "environ", ""):
            return pack_stat(0x3, 9, (st.S_IFDIR | 0o555) if not detail else (st.S_IFREG | 0o444), 1, 0, 0, 0, 0,
                             4096, 0, 0, 0, 0)
    return errno.ENOENT


@syscall("newfstatat", "fd", "path", "ptr", "hex", family="files")
def sys_newfstatat(k, dirfd, path, buf, flags):
    k.write_mem(buf, stat_path(k, dirfd, path, flags))
    return 0


@syscall("stat", "path", "ptr", family="files")
def sys_stat(k, path, buf):
    return sys_newfstatat(k, AT_FDCWD, path, buf, 0)


@syscall("lstat", "path", "ptr", family="files")
def sys_lstat(k, path, buf):
    return sys_newfstatat(k, AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW)


@syscall("fstat", "fd", "ptr", family="files")
def sys_fstat(k, fd, buf):
    got = k.files.get(fd).stat(k)
    if isinstance(got, int):
        raise GuestErr(got)
    k.write_mem(buf, got)
    return 0


@syscall("statx", "fd", "path", "hex", "hex", "ptr", family="files")
def sys_statx(k, dirfd, path, flags, mask, buf):
    s = unpack_stat(stat_path(k, dirfd, path, flags))

    def ts(ns):
        return struct.pack("<qIi", ns // 10**9, ns % 10**9, 0)
    out = struct.pack("<IIQIIIHHQQQQ", 0x7FF, s["blksize"], 0, s["nlink"], s["uid"], s["gid"], s["mode"], 0,
                      s["ino"], s["size"], s["blocks"], 0)
    out += ts(s["atime_ns"]) + ts(s["ctime_ns"]) + ts(s["ctime_ns"]) + ts(s["mtime_ns"])
    out += struct.pack("<IIII", s["rdev"] >> 8, s["rdev"] & 0xFF, s["dev"] >> 8, s["dev"] & 0xFF)
    k.write_mem(buf, out + bytes(256 - len(out)))
    return 0


@syscall("faccessat", "fd", "path", "int", family="files")
def sys_faccessat(k, dirfd, path, mode):
    return _access(k, dirfd, path, mode)


@syscall("faccessat2", "fd", "path", "int", "hex", family="files")
def sys_faccessat2(k, dirfd, path, mode, flags):
    return _access(k, dirfd, path, mode)


@syscall("access", "path", "int", family="files")
def sys_access(k, path, mode):
    return _access(k, AT_FDCWD, path, mode)


def _access(k, dirfd, path, mode):
    s = unpack_stat(stat_path(k, dirfd, path, 0))
    gpath = k.files.abspath(k, dirfd, k.read_str(path))
    if mode & 2 and k.files.where(gpath)[0] == "root":
        raise GuestErr(errno.EROFS)
    if mode & 1 and not (s["mode"] & 0o111) and not st.S_ISDIR(s["mode"]):
        raise GuestErr(errno.EACCES)
    return 0


@syscall("readlinkat", "fd", "path", "obuf", "size", family="files")
def sys_readlinkat(k, dirfd, path, buf, size):
    fs = k.files
    gpath = fs.abspath(k, dirfd, k.read_str(path))
    kind, detail = fs.where(gpath, follow=False)
    if kind == "proc" and detail == "exe":
        # Linux names the program by its canonical path (/bin/busybox -> /usr/bin/busybox).
        target = k.host(lambda: _root_realpath(fs.root, fs.program))
    elif kind in ("root", "data", "hostfile"):
        got = k.host(lambda: _readlink(detail))
        if isinstance(got, int):
            raise GuestErr(got)
        target = got
    elif kind == "tmp":
        node, _, _ = fs.tmp.lookup(detail)
        raise GuestErr(errno.ENOENT if node is None else errno.EINVAL)
    else:
        raise GuestErr(errno.EINVAL)
    data = target.encode("utf-8", "surrogateescape")[:size]
    k.write_mem(buf, data)
    return len(data)


def _root_realpath(root, gpath):
    """``gpath`` with every symlink resolved, inside ``root``."""
    if root == "/":
        return os.path.realpath(gpath)
    rel = os.path.relpath(os.path.realpath(_in_root(root, gpath)), os.path.realpath(root))
    if rel == ".." or rel.startswith("../"):
        return gpath                # leaves the root: keep the name the program was started by
    return "/" if rel == "." else "/" + rel


def _readlink(path):
    try:
        return os.readlink(path)
    except OSError as e:
        return e.errno


@syscall("readlink", "path", "obuf", "size", family="files")
def sys_readlink(k, path, buf, size):
    return sys_readlinkat(k, AT_FDCWD, path, buf, size)


@syscall("getcwd", "obuf", "size", family="files")
def sys_getcwd(k, buf, size):
    data = k.files.cwd.encode() + b"\0"
    if len(data) > size:
        raise GuestErr(errno.ERANGE)
    k.write_mem(buf, data)
    return len(data)


@syscall("chdir", "path", family="files")
def sys_chdir(k, path):
    gpath = k.files.abspath(k, AT_FDCWD, k.read_str(path))
    s = unpack_stat(stat_path(k, AT_FDCWD, path, 0))
    if not st.S_ISDIR(s["mode"]):
        raise GuestErr(errno.ENOTDIR)
    k.files.cwd = gpath
    return 0


@syscall("fchdir", "fd", family="files")
def sys_fchdir(k, fd):
    f = k.files.get(fd)
    if not isinstance(f, (F.HostDir, F.TmpFile)) or (isinstance(f, F.TmpFile) and not f.node.is_dir):
        raise GuestErr(errno.ENOTDIR)
    k.files.cwd = f.gpath
    return 0


# --- changing the name space ---------------------------------------------------------------

def _mutate(k, dirfd, path_addr, on_data, on_tmp, eexist_on_root=False, done=None, follow=True):
    """A change of the name space: the data directory (output), /tmp (state), or the
    read-only root (EROFS). ``done``: the errno that, when the change is done again
    after a failover, means the old primary already made it."""
    fs = k.files
    gpath = fs.abspath(k, dirfd, k.read_str(path_addr))
    kind, detail = fs.where(gpath, follow)
    if kind == "data":
        def change():
            r = _host_errno(lambda: on_data(detail))
            return 0 if r and r == done and k.redo_now else r
        got = k.output(change)
        if got:
            raise GuestErr(got)
        return 0
    if kind == "tmp":
        return on_tmp(detail)
    if eexist_on_root and kind == "root" and not isinstance(k.host(lambda: host_stat(detail)), int):
        raise GuestErr(errno.EEXIST)
    raise GuestErr(errno.EROFS)


def _host_errno(fn):
    try:
        fn()
        return 0
    except OSError as e:
        return e.errno or errno.EIO


def _tmp_mkdir(k, rel, mode):
    node, parent, name = k.files.tmp.lookup(rel)
    if node is not None:
        raise GuestErr(errno.EEXIST)
    if parent is None:
        raise GuestErr(errno.ENOENT)
    parent.children[name] = TmpNode(True, mode & ~k.files.umask, k.now_ns_state())
    return 0


def _tmp_unlink(k, rel, want_dir):
    node, parent, name = k.files.tmp.lookup(rel)
    if node is None or parent is None:
        raise GuestErr(errno.ENOENT if node is None else errno.EBUSY)
    if want_dir and not node.is_dir:
        raise GuestErr(errno.ENOTDIR)
    if not want_dir and node.is_dir:
        raise GuestErr(errno.EISDIR)
    if want_dir and node.children:
        raise GuestErr(errno.ENOTEMPTY)
    del parent.children[name]
    return 0


@syscall("mkdirat", "fd", "path", "hex", family="files")
def sys_mkdirat(k, dirfd, path, mode):
    return _mutate(k, dirfd, path, lambda p: os.mkdir(p, mode & ~k.files.umask & 0o7777),
                   lambda rel: _tmp_mkdir(k, rel, mode), eexist_on_root=True, done=errno.EEXIST, follow=False)


@syscall("mkdir", "path", "hex", family="files")
def sys_mkdir(k, path, mode):
    return sys_mkdirat(k, AT_FDCWD, path, mode)


@syscall("unlinkat", "fd", "path", "hex", family="files")
def sys_unlinkat(k, dirfd, path, flags):
    rmdir = bool(flags & AT_REMOVEDIR)
    return _mutate(k, dirfd, path, os.rmdir if rmdir else os.unlink, lambda rel: _tmp_unlink(k, rel, rmdir),
                   done=errno.ENOENT, follow=False)


@syscall("unlink", "path", family="files")
def sys_unlink(k, path):
    return sys_unlinkat(k, AT_FDCWD, path, 0)


@syscall("rmdir", "path", family="files")
def sys_rmdir(k, path):
    return sys_unlinkat(k, AT_FDCWD, path, AT_REMOVEDIR)


@syscall("symlinkat", "path", "fd", "path", family="files",
         note="in the data directory; /tmp has no symbolic links (EPERM)")
def sys_symlinkat(k, target, newdirfd, linkpath):
    text = k.read_str(target)
    if not text:
        raise GuestErr(errno.ENOENT)

    def tmp(rel):
        node, parent, _ = k.files.tmp.lookup(rel)
        if node is not None:
            raise GuestErr(errno.EEXIST)
        raise GuestErr(errno.ENOENT if parent is None else errno.EPERM)
    return _mutate(k, newdirfd, linkpath, lambda p: os.symlink(text, p), tmp, eexist_on_root=True,
                   done=errno.EEXIST)


@syscall("symlink", "path", "path", family="files", note="in the data directory; /tmp has no symbolic links (EPERM)")
def sys_symlink(k, target, linkpath):
    return sys_symlinkat(k, target, AT_FDCWD, linkpath)


AT_SYMLINK_FOLLOW = 0x400


@syscall("linkat", "fd", "path", "fd", "path", "hex", family="files",
         note="in the data directory; not in /tmp (EPERM)")
def sys_linkat(k, olddirfd, oldpath, newdirfd, newpath, flags):
    fs = k.files
    a = fs.where(fs.abspath(k, olddirfd, k.read_str(oldpath)), follow=False)
    b = fs.where(fs.abspath(k, newdirfd, k.read_str(newpath)), follow=False)
    if a[0] == "data" and b[0] == "data":
        def change():
            r = _host_errno(lambda: os.link(a[1], b[1], follow_symlinks=bool(flags & AT_SYMLINK_FOLLOW)))
            return 0 if r == errno.EEXIST and k.redo_now else r
        got = k.output(change)
        if got:
            raise GuestErr(got)
        return 0
    if a[0] == "tmp" and b[0] == "tmp":
        # A hard link would make two names share one node, which a state transfer
        # (TmpNode.to_state) would split in two: refused, as by a file system without links.
        node, _, _ = fs.tmp.lookup(a[1])
        if node is None:
            raise GuestErr(errno.ENOENT)
        raise GuestErr(errno.EPERM)
    if a[0] != b[0]:
        raise GuestErr(errno.EXDEV)
    raise GuestErr(errno.EROFS)


@syscall("link", "path", "path", family="files", note="in the data directory; not in /tmp (EPERM)")
def sys_link(k, oldpath, newpath):
    return sys_linkat(k, AT_FDCWD, oldpath, AT_FDCWD, newpath, 0)


@syscall("renameat2", "fd", "path", "fd", "path", "hex", family="files")
def sys_renameat2(k, olddirfd, oldpath, newdirfd, newpath, flags):
    fs = k.files
    a = fs.where(fs.abspath(k, olddirfd, k.read_str(oldpath)), follow=False)
    b = fs.where(fs.abspath(k, newdirfd, k.read_str(newpath)), follow=False)
    if a[0] != b[0]:
        raise GuestErr(errno.EXDEV)
    if a[0] == "data":
        def change():
            r = _host_errno(lambda: os.rename(a[1], b[1]))
            return 0 if r == errno.ENOENT and k.redo_now and os.path.exists(b[1]) else r
        got = k.output(change)
        if got:
            raise GuestErr(got)
        return 0
    if a[0] == "tmp":
        node, parent, name = fs.tmp.lookup(a[1])
        if node is None or parent is None:
            raise GuestErr(errno.ENOENT)
        dnode, dparent, dname = fs.tmp.lookup(b[1])
        if dparent is None:
            raise GuestErr(errno.ENOENT)
        if dnode is not None and dnode.is_dir and dnode.children:
            raise GuestErr(errno.ENOTEMPTY)
        del parent.children[name]
        dparent.children[dname] = node
        return 0
    raise GuestErr(errno.EROFS)


@syscall("renameat", "fd", "path", "fd", "path", family="files")
def sys_renameat(k, olddirfd, oldpath, newdirfd, newpath):
    return sys_renameat2(k, olddirfd, oldpath, newdirfd, newpath, 0)


@syscall("rename", "path", "path", family="files")
def sys_rename(k, oldpath, newpath):
    return sys_renameat2(k, AT_FDCWD, oldpath, AT_FDCWD, newpath, 0)


@syscall("ftruncate", "fd", "int", family="files")
def sys_ftruncate(k, fd, length):
    f = k.files.get(fd)
    if not f.writable():
        raise GuestErr(errno.EINVAL)
    f.truncate(k, _s64(length))
    return 0


@syscall("truncate", "path", "int", family="files")
def sys_truncate(k, path, length):
    def tmp(rel):
        node, _, _ = k.files.tmp.lookup(rel)
        if node is None:
            raise GuestErr(errno.ENOENT)
        F.TmpFile("", O_WRONLY, node).truncate(k, _s64(length))
        return 0
    return _mutate(k, AT_FDCWD, path, lambda p: os.truncate(p, _s64(length)), tmp)


@syscall("fsync", "fd", family="files")
def sys_fsync(k, fd):
    return k.files.get(fd).sync(k)


@syscall("fdatasync", "fd", family="files")
def sys_fdatasync(k, fd):
    return k.files.get(fd).sync(k)


@syscall("fchmod", "fd", "hex", family="files")
def sys_fchmod(k, fd, mode):
    f = k.files.get(fd)
    if isinstance(f, F.TmpFile):
        f.node.mode = (f.node.mode & ~0o7777) | (mode & 0o7777)
        return 0
    if isinstance(f, F.DataFile):
        got = k.output(lambda: _host_errno(lambda: os.chmod(f.hostpath, mode & 0o7777)))
        if got:
            raise GuestErr(got)
        return 0
    raise GuestErr(errno.EROFS)


@syscall("fchmodat", "fd", "path", "hex", family="files")
def sys_fchmodat(k, dirfd, path, mode):
    def tmp(rel):
        node, _, _ = k.files.tmp.lookup(rel)
        if node is None:
            raise GuestErr(errno.ENOENT)
        node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
        return 0
    return _mutate(k, dirfd, path, lambda p: os.chmod(p, mode & 0o7777), tmp)


@syscall("chmod", "path", "hex", family="files")
def sys_chmod(k, path, mode):
    return sys_fchmodat(k, AT_FDCWD, path, mode)


def _chown(k, got, uid, gid, on_root):
    """The process is unprivileged (uid and gid 1000): a chown that changes nothing
    succeeds (sed -i, cp -p and install ask for one), any other is EPERM; on the
    read-only root, EROFS."""
    if isinstance(got, int):
        raise GuestErr(got)
    if on_root:
        raise GuestErr(errno.EROFS)
    s = unpack_stat(got)
    uid, gid = uid & 0xFFFFFFFF, gid & 0xFFFFFFFF
    if uid not in (0xFFFFFFFF, s["uid"]) or gid not in (0xFFFFFFFF, s["gid"]):
        raise GuestErr(errno.EPERM)
    return 0


@syscall("fchown", "fd", "int", "int", family="files", note="only a change to nothing (unprivileged)")
def sys_fchown(k, fd, uid, gid):
    f = k.files.get(fd)
    return _chown(k, f.stat(k), uid, gid, isinstance(f, F.RootFile))


@syscall("fchownat", "fd", "path", "int", "int", "hex", family="files", note="only a change to nothing (unprivileged)")
def sys_fchownat(k, dirfd, path, uid, gid, flags):
    got = stat_path(k, dirfd, path, flags)
    name = k.read_str(path)
    if name:
        on_root = k.files.where(k.files.abspath(k, dirfd, name))[0] == "root"
    else:
        on_root = isinstance(k.files.get(dirfd), F.RootFile)
    return _chown(k, got, uid, gid, on_root)


@syscall("chown", "path", "int", "int", family="files", note="only a change to nothing (unprivileged)")
def sys_chown(k, path, uid, gid):
    return sys_fchownat(k, AT_FDCWD, path, uid, gid, 0)


@syscall("lchown", "path", "int", "int", family="files", note="only a change to nothing (unprivileged)")
def sys_lchown(k, path, uid, gid):
    return sys_fchownat(k, AT_FDCWD, path, uid, gid, AT_SYMLINK_NOFOLLOW)


UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


def _utimes(k, times):
    """(atime_ns, mtime_ns) from a guest struct timespec[2]; None leaves that time as it
    is (UTIME_OMIT); NULL and UTIME_NOW mean guest time now."""
    now = k.now_ns_state()
    if not times:
        return now, now
    out = []
    for i in range(2):
        sec, nsec = struct.unpack("<qq", k.read_mem(times + 16 * i, 16))
        if nsec == UTIME_NOW:
            out.append(now)
        elif nsec == UTIME_OMIT:
            out.append(None)
        elif 0 <= nsec < 10**9:
            out.append(sec * 10**9 + nsec)
        else:
            raise GuestErr(errno.EINVAL)
    return tuple(out)


def _host_utime(path, at, mt, follow=True):
    if at is None or mt is None:
        s = os.stat(path, follow_symlinks=follow)
        at = s.st_atime_ns if at is None else at
        mt = s.st_mtime_ns if mt is None else mt
    os.utime(path, ns=(at, mt), follow_symlinks=follow)


def _tmp_utime(node, mt):
    if mt is not None:
        node.mtime_ns = mt      # /tmp keeps one time for all three
    return 0


@syscall("utimensat", "fd", "path", "ptr", "hex", family="files")
def sys_utimensat(k, dirfd, path, times, flags):
    at, mt = _utimes(k, times)
    follow = not flags & AT_SYMLINK_NOFOLLOW
    if not path or (flags & AT_EMPTY_PATH and not k.read_str(path)):
        f = k.files.get(dirfd)
        if isinstance(f, F.TmpFile):
            return _tmp_utime(f.node, mt)
        if isinstance(f, F.DataFile):
            if at is None and mt is None:
                return 0
            got = k.output(lambda: _host_errno(lambda: _host_utime(f.hostpath, at, mt)))
            if got:
                raise GuestErr(got)
            return 0
        raise GuestErr(errno.EROFS if isinstance(f, F.RootFile) else errno.EBADF)

    def tmp(rel):
        node, _, _ = k.files.tmp.lookup(rel)
        if node is None:
            raise GuestErr(errno.ENOENT)
        return _tmp_utime(node, mt)
    return _mutate(k, dirfd, path, lambda p: _host_utime(p, at, mt, follow), tmp)


# --- descriptors ------------------------------------------------------------------------------

@syscall("dup", "fd", family="files")
def sys_dup(k, fd):
    return k.files.install(k.files.get(fd))


@syscall("dup3", "fd", "fd", "hex", family="files")
def sys_dup3(k, old, new, flags):
    fs = k.files
    f = fs.get(old)
    new = _s32(new)
    if _s32(old) == new:
        raise GuestErr(errno.EINVAL)
    if not 0 <= new < FD_MAX:
        raise GuestErr(errno.EBADF)
    if new in fs.fds:
        sys_close(k, new)
    fs.fds[new] = f
    if flags & O_CLOEXEC:
        fs.cloexec.add(new)
    else:
        fs.cloexec.discard(new)
    return new


@syscall("dup2", "fd", "fd", family="files")
def sys_dup2(k, old, new):
    if _s32(old) == _s32(new):
        k.files.get(old)
        return _s32(new)
    return sys_dup3(k, old, new, 0)


@syscall("fcntl", "fd", "int", "hex", family="files")
def sys_fcntl(k, fd, cmd, arg):
    fs = k.files
    f = fs.get(fd)
    fd = _s32(fd)
    if cmd in (F_DUPFD, F_DUPFD_CLOEXEC):
        return fs.install(f, cloexec=cmd == F_DUPFD_CLOEXEC, low=_s32(arg))
    if cmd == F_GETFD:
        return FD_CLOEXEC if fd in fs.cloexec else 0
    if cmd == F_SETFD:
        (fs.cloexec.add if arg & FD_CLOEXEC else fs.cloexec.discard)(fd)
        return 0
    if cmd == F_GETFL:
        return f.flags & ~O_CLOEXEC
    if cmd == F_SETFL:
        f.flags = (f.flags & ~(O_NONBLOCK | 0o2000)) | (arg & (O_NONBLOCK | 0o2000))
        return 0
    if cmd in (F_GETLK,):
        return 0
    if cmd in (F_SETLK, F_SETLKW):
        return 0          # one process: every lock is granted
    raise GuestErr(errno.EINVAL)


@syscall("ioctl", "fd", "hex", "hex", family="files",
         note="TCGETS and TIOCGWINSZ answer ENOTTY: the console is a stream, never a terminal")
def sys_ioctl(k, fd, req, arg):
    f = k.files.get(fd)
    if req == 0x5421:              # FIONBIO
        on = int.from_bytes(k.read_mem(arg, 4), "little")
        f.flags = (f.flags | O_NONBLOCK) if on else (f.flags & ~O_NONBLOCK)
        return 0
    if req in (0x5451, 0x5450):     # FIOCLEX, FIONCLEX
        (k.files.cloexec.add if req == 0x5451 else k.files.cloexec.discard)(_s32(fd))
        return 0
    raise GuestErr(errno.ENOTTY)


# Extended attributes: the guest's files have none, and cannot be given any (as on a file
# system without xattr support). shutil.copy2 and copytree list them on every copy.
def _xattr_target(k, path, nofollow):
    stat_path(k, AT_FDCWD, path, AT_SYMLINK_NOFOLLOW if nofollow else 0)


@syscall("listxattr", "path", "ptr", "size", family="files", note="no extended attributes")
def sys_listxattr(k, path, lst, size):
    _xattr_target(k, path, False)
    return 0


@syscall("llistxattr", "path", "ptr", "size", family="files", note="no extended attributes")
def sys_llistxattr(k, path, lst, size):
    _xattr_target(k, path, True)
    return 0


@syscall("flistxattr", "fd", "ptr", "size", family="files", note="no extended attributes")
def sys_flistxattr(k, fd, lst, size):
    k.files.get(fd)
    return 0


@syscall("getxattr", "path", "path", "ptr", "size", family="files", note="no extended attributes: ENODATA")
def sys_getxattr(k, path, name, value, size):
    _xattr_target(k, path, False)
    raise GuestErr(errno.ENODATA)


@syscall("lgetxattr", "path", "path", "ptr", "size", family="files", note="no extended attributes: ENODATA")
def sys_lgetxattr(k, path, name, value, size):
    _xattr_target(k, path, True)
    raise GuestErr(errno.ENODATA)


@syscall("fgetxattr", "fd", "path", "ptr", "size", family="files", note="no extended attributes: ENODATA")
def sys_fgetxattr(k, fd, name, value, size):
    k.files.get(fd)
    raise GuestErr(errno.ENODATA)


@syscall("setxattr", "path", "path", "ptr", "size", "hex", family="files", note="not supported: EOPNOTSUPP")
def sys_setxattr(k, path, name, value, size, flags):
    _xattr_target(k, path, False)
    raise GuestErr(errno.EOPNOTSUPP)


@syscall("lsetxattr", "path", "path", "ptr", "size", "hex", family="files", note="not supported: EOPNOTSUPP")
def sys_lsetxattr(k, path, name, value, size, flags):
    _xattr_target(k, path, True)
    raise GuestErr(errno.EOPNOTSUPP)


@syscall("fsetxattr", "fd", "path", "ptr", "size", "hex", family="files", note="not supported: EOPNOTSUPP")
def sys_fsetxattr(k, fd, name, value, size, flags):
    k.files.get(fd)
    raise GuestErr(errno.EOPNOTSUPP)


@syscall("removexattr", "path", "path", family="files", note="no extended attributes: ENODATA")
def sys_removexattr(k, path, name):
    _xattr_target(k, path, False)
    raise GuestErr(errno.ENODATA)


@syscall("lremovexattr", "path", "path", family="files", note="no extended attributes: ENODATA")
def sys_lremovexattr(k, path, name):
    _xattr_target(k, path, True)
    raise GuestErr(errno.ENODATA)


@syscall("fremovexattr", "fd", "path", family="files", note="no extended attributes: ENODATA")
def sys_fremovexattr(k, fd, name):
    k.files.get(fd)
    raise GuestErr(errno.ENODATA)


@syscall("pipe2", "ptr", "hex", family="files")
def sys_pipe2(k, fds, flags):
    p = F.Pipe()
    r, w = F.PipeEnd(p, True), F.PipeEnd(p, False)
    r.flags |= flags & O_NONBLOCK
    w.flags |= flags & O_NONBLOCK
    a = k.files.install(r, cloexec=bool(flags & O_CLOEXEC))
    b = k.files.install(w, cloexec=bool(flags & O_CLOEXEC))
    k.write_mem(fds, struct.pack("<ii", a, b))
    return 0


@syscall("pipe", "ptr", family="files")
def sys_pipe(k, fds):
    return sys_pipe2(k, fds, 0)


@syscall("umask", "hex", family="files")
def sys_umask(k, mask):
    old, k.files.umask = k.files.umask, mask & 0o777
    return old


@syscall("fadvise64", "fd", "int", "int", "int", family="files")
def sys_fadvise64(k, fd, off, length, advice):
    k.files.get(fd)
    return 0


@syscall("flock", "fd", "int", family="files")
def sys_flock(k, fd, op):
    k.files.get(fd)
    return 0


@syscall("sync", family="files")
def sys_sync(k):
    return 0


def _statfs_bytes():
    # struct statfs: type, bsize, blocks, bfree, bavail, files, ffree, fsid, namelen, frsize, flags, spare
    return struct.pack("<qqQQQQQ2iqqq4q", 0xEF53, 4096, 1 << 20, 1 << 19, 1 << 19, 1 << 16, 1 << 15, 0, 0, 255, 4096,
                       0, 0, 0, 0, 0)


@syscall("statfs", "path", "ptr", family="files", note="fixed answer")
def sys_statfs(k, path, buf):
    k.write_mem(buf, _statfs_bytes())
    return 0


@syscall("fstatfs", "fd", "ptr", family="files", note="fixed answer")
def sys_fstatfs(k, fd, buf):
    k.files.get(fd)
    k.write_mem(buf, _statfs_bytes())
    return 0


@syscall("sendfile", "fd", "fd", "ptr", "size", family="files")
def sys_sendfile(k, out_fd, in_fd, offp, count):
    src, dst = k.files.get(in_fd), k.files.get(out_fd)
    if offp:
        off = int.from_bytes(k.read_mem(offp, 8), "little")
        data = src.pread(k, min(count, 1 << 20), off)
        k.write_mem(offp, (off + len(data)).to_bytes(8, "little"))
    else:
        data = src.read(k, min(count, 1 << 20))
    return dst.write(k, data) if data else 0


_ = (host_stat, O_DIRECTORY)
