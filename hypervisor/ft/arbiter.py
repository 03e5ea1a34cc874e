"""Atomic test-and-set on a shared directory, one token per view.

A node that wants to be the only primary of view ``v`` creates the file
``view-<v>.claim`` with O_CREAT|O_EXCL: the filesystem lets exactly one creator win,
whatever the race (this holds on local filesystems and on NFSv3+). The winner writes
its name into the file and fsyncs the file and the directory, so the decision survives
a crash. The view number is the fencing token: a node that finds a claim for a view
at or above the one it wants knows it is stale.
"""
from __future__ import annotations

import errno
import os
import re

from ..errors import IoFailure

_CLAIM = re.compile(r"^view-(\d{8})\.claim$")


class Arbiter:
    def __init__(self, directory):
        self.dir = str(directory)
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as e:
            raise IoFailure(f"{self.dir}: cannot use as shared disk: {e.strerror}") from None

    def _path(self, view):
        return os.path.join(self.dir, f"view-{view:08d}.claim")

    def claim(self, view: int, node: str) -> bool:
        """Test-and-set the token of ``view``. True: this node won it."""
        path = self._path(view)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise IoFailure(f"{path}: test-and-set failed: {e.strerror}") from None
        try:
            os.write(fd, f"{node}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._sync_dir()
        return True

    def owner(self, view: int):
        try:
            with open(self._path(view)) as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None

    def highest(self):
        """(view, owner) of the highest claimed view, or (0, None)."""
        best = 0
        try:
            names = os.listdir(self.dir)
        except OSError as e:
            raise IoFailure(f"{self.dir}: cannot list shared disk: {e.strerror}") from None
        for name in names:
            m = _CLAIM.match(name)
            if m:
                best = max(best, int(m.group(1)))
        return best, (self.owner(best) if best else None)

    def _sync_dir(self):
        try:
            fd = os.open(self.dir, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EBADF):
                raise
        finally:
            os.close(fd)
