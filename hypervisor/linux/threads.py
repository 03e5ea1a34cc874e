"""Threads of a Linux process, on the one emulated CPU, one at a time.

Scheduling rule (docs/linux.md): the running thread keeps the CPU until it makes a
system call that must wait (futex, read, accept, epoll_wait, a sleep), exits, or has
run BUDGET_BLOCKS blocks while another thread is runnable. The next thread is the
first runnable one after it in tid order (round robin); a waiting thread whose wait is
over (woken, data arrived, timed out) is runnable. When recording, each switch is
logged as a SCHED record and each call that must wait as a WAIT record, so replay and
a backup switch at exactly the same execution points without deciding anything.

A thread that spins waiting for another one is preempted after BUDGET_BLOCKS blocks,
so it cannot hang the guest.
"""
from __future__ import annotations

import errno
import struct

from .fs import GuestErr
from .kernel import Blocked
from .table import syscall

BUDGET_BLOCKS = 50_000
TID_FIRST = 100            # the main thread's tid is the pid

CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_THREAD, CLONE_SYSVSEM, CLONE_SETTLS = 0x10000, 0x40000, 0x80000
CLONE_PARENT_SETTID, CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID = 0x100000, 0x200000, 0x1000000
FUTEX_WAIT, FUTEX_WAKE, FUTEX_REQUEUE, FUTEX_CMP_REQUEUE = 0, 1, 3, 4
FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET = 9, 10
FUTEX_PRIVATE, FUTEX_CLOCK_REALTIME = 128, 256
BITSET_ANY = 0xFFFFFFFF


class Thread:
    def __init__(self, tid):
        self.tid = tid
        self.ctx = None              # saved CPU context while not running
        self.pending = None          # (nr, args, pc) of a call not yet completed
        self.intent = None
        self.blocked = None          # the Blocked of the call it waits in
        self.clear_child_tid = 0
        self.robust_list = 0
        self.futex = None            # [uaddr, bitset, deadline_ns or None] while queued
        self.futex_woken = False
        self.sigmask = 0
        self.altstack = bytes(24)
        self.exited = False
        self.sleep_deadline = None
        self.sigframes = []          # CPU contexts saved at signal delivery (for rt_sigreturn)

    def runnable(self):
        return not self.exited and self.blocked is None

    def state(self):
        return {"tid": self.tid, "pending": list(self.pending) if self.pending else None, "intent": self.intent,
                "blocked": None if self.blocked is None else [self.blocked.what, self.blocked.until_ns],
                "ctid": self.clear_child_tid, "robust": self.robust_list, "futex": self.futex,
                "woken": self.futex_woken, "sigmask": self.sigmask, "altstack": self.altstack}


class Threads:
    """The thread table and the scheduler's state (part of the guest's state)."""

    def __init__(self, kernel):
        self.k = kernel
        main = Thread(TID_FIRST)
        self.all = {main.tid: main}
        self.cur = main
        self.next_tid = TID_FIRST + 1
        self.slice_start = 0          # block count when the running thread got the CPU
        self.futexes = {}             # uaddr -> [tid, ...] in arrival order

    # --- choosing ----------------------------------------------------------------------
    def order_after(self, tid):
        tids = sorted(self.all)
        i = 0
        while i < len(tids) and tids[i] <= tid:
            i += 1
        return [self.all[t] for t in tids[i:] + tids[:i]]

    def ready(self, t, now_ns):
        """A waiting thread whose wait is over (recording decides; replay follows the log)."""
        b = t.blocked
        if b is None or t.exited:
            return False
        if b.until_ns is not None and now_ns >= b.until_ns:
            return True
        return b.ready is not None and b.ready()

    def pick(self, now_ns, preempt=False):
        """The thread to run next, or None if every thread waits. Record side only."""
        cur = self.cur
        if cur.runnable() and not preempt:
            return cur
        for t in self.order_after(cur.tid):
            if t is cur:
                continue
            if t.runnable() or self.ready(t, now_ns):
                return t
        if cur.runnable() or self.ready(cur, now_ns):
            return cur
        return None

    def others_runnable(self, now_ns=None):
        return any(t.runnable() or (now_ns is not None and self.ready(t, now_ns))
                   for t in self.all.values() if t is not self.cur)

    def preempt_at(self, now_ns=None):
        """Block count at which the running thread's slice ends, or None (no other
        thread can run). Record side: ``now_ns`` counts threads whose wait is over."""
        if len(self.all) < 2 or not self.others_runnable(now_ns):
            return None
        return self.slice_start + BUDGET_BLOCKS

    def earliest_deadline(self):
        ds = [t.blocked.until_ns for t in self.all.values() if t.blocked is not None and t.blocked.until_ns]
        if self.k.itimer[0]:
            ds.append(self.k.itimer[0])
        return min(ds) if ds else None

    def all_wait_forever(self):
        return all(t.blocked is not None and t.blocked.forever for t in self.all.values() if not t.exited)

    # --- switching (both sides) ------------------------------------------------------------
    def switch_to(self, t):
        v = self.k.m.vcpu
        if t is self.cur:
            return
        self.cur.ctx = v.context()
        v.restore_context(t.ctx)
        t.ctx = None
        self.cur = t
        self.slice_start = self.k.m.blocks

    def get(self, tid):
        return self.all.get(tid)


# --- the calls ---------------------------------------------------------------------------

def _now(k):
    """Guest time (a logged input that also moves the replayed clock: calls_time.now)."""
    from .calls_time import now
    return now(k)


def _read_u32(k, addr):
    return struct.unpack("<I", k.read_mem(addr, 4))[0]


def _new_thread(k, flags, stack, ptid, ctid, tls):
    if not (flags & CLONE_VM and flags & CLONE_THREAD):
        k.note_once("fork", "fork-like clone is not supported (one process per run); the program gets ENOSYS")
        raise GuestErr(errno.ENOSYS)
    th = k.threads
    t = Thread(th.next_tid)
    th.next_tid += 1
    v = k.m.vcpu
    # The child starts as the parent is now (after the syscall instruction), with
    # RAX 0, its own stack and TLS.
    saved_rax, saved_rsp, saved_fs = v.reg("rax"), v.reg("rsp"), v.reg("fs_base")
    v.set_reg("rax", 0)
    if stack:
        v.set_reg("rsp", stack)
    if flags & CLONE_SETTLS:
        v.set_reg("fs_base", tls)
    t.ctx = v.context()
    v.set_reg("rax", saved_rax)
    v.set_reg("rsp", saved_rsp)
    v.set_reg("fs_base", saved_fs)
    t.sigmask = th.cur.sigmask
    if flags & CLONE_PARENT_SETTID:
        k.write_mem(ptid, struct.pack("<I", t.tid))
    if flags & CLONE_CHILD_SETTID:
        k.write_mem(ctid, struct.pack("<I", t.tid))
    if flags & CLONE_CHILD_CLEARTID:
        t.clear_child_tid = ctid
    th.all[t.tid] = t
    return t.tid


@syscall("clone", "hex", "ptr", "ptr", "ptr", "hex", family="threads",
         note="threads only (CLONE_VM|CLONE_THREAD); fork-like clones get ENOSYS")
def sys_clone(k, flags, stack, ptid, ctid, tls):
    return _new_thread(k, flags, stack, ptid, ctid, tls)


@syscall("clone3", "ptr", "size", family="threads", note="threads only, as clone")
def sys_clone3(k, args, size):
    if size < 64:
        raise GuestErr(errno.EINVAL)
    flags, _pidfd, child_tid, parent_tid, _exit_signal, stack, stack_size, tls = struct.unpack(
        "<8Q", k.read_mem(args, 64))
    return _new_thread(k, flags, stack + stack_size if stack else 0, parent_tid, child_tid, tls)


def futex_wake(k, uaddr, n, bitset=BITSET_ANY):
    th = k.threads
    q = th.futexes.get(uaddr, [])
    woken = 0
    for tid in list(q):
        if woken >= n:
            break
        t = th.all.get(tid)
        if t is None or t.futex is None or not (t.futex[1] & bitset):
            continue
        q.remove(tid)
        t.futex = None
        t.futex_woken = True
        woken += 1
    if not q:
        th.futexes.pop(uaddr, None)
    return woken


def futex_unqueue(k, t):
    if t.futex is not None:
        q = k.threads.futexes.get(t.futex[0], [])
        if t.tid in q:
            q.remove(t.tid)
        t.futex = None
    t.futex_woken = False


def thread_exit(k, t):
    """A thread ends: clear_child_tid is zeroed and woken (what pthread_join waits on)."""
    t.exited = True
    if t.clear_child_tid:
        try:
            k.write_mem(t.clear_child_tid, bytes(4))
        except GuestErr:
            pass
        futex_wake(k, t.clear_child_tid, 1)
    if t.futex is not None:
        q = k.threads.futexes.get(t.futex[0], [])
        if t.tid in q:
            q.remove(t.tid)
    del k.threads.all[t.tid]


@syscall("futex", "ptr", "int", "int", "ptr", "ptr", "int", family="threads",
         note="WAIT, WAKE, WAIT_BITSET, WAKE_BITSET, REQUEUE, CMP_REQUEUE; timeouts in guest time")
def sys_futex(k, uaddr, op, val, timeout, uaddr2, val3):
    th = k.threads
    t = th.cur
    cmd = op & ~(FUTEX_PRIVATE | FUTEX_CLOCK_REALTIME)
    val &= 0xFFFFFFFF
    if cmd in (FUTEX_WAIT, FUTEX_WAIT_BITSET):
        if t.futex_woken:                  # a retry after a wake
            t.futex_woken = False
            return 0
        if t.futex is not None:            # a retry: the deadline passed, or a go-live asked
            deadline = t.futex[2]
            if deadline is not None and _now(k) >= deadline:
                q = th.futexes.get(t.futex[0], [])
                if t.tid in q:
                    q.remove(t.tid)
                t.futex = None
                raise GuestErr(errno.ETIMEDOUT)
            raise Blocked("futex", until_ns=deadline, ready=lambda: t.futex_woken)
        bitset = val3 & 0xFFFFFFFF if cmd == FUTEX_WAIT_BITSET else BITSET_ANY
        if bitset == 0:
            raise GuestErr(errno.EINVAL)
        if _read_u32(k, uaddr) != val:
            raise GuestErr(errno.EAGAIN)
        deadline = None
        if timeout:
            sec, nsec = struct.unpack("<qq", k.read_mem(timeout, 16))
            if cmd == FUTEX_WAIT_BITSET:       # absolute
                deadline = sec * 10**9 + nsec - (k.realtime_base_ns if op & FUTEX_CLOCK_REALTIME else 0)
            else:
                deadline = _now(k) + sec * 10**9 + nsec
        t.futex = [uaddr, bitset, deadline]
        th.futexes.setdefault(uaddr, []).append(t.tid)
        raise Blocked("futex", until_ns=deadline, ready=lambda: t.futex_woken)
    if cmd in (FUTEX_WAKE, FUTEX_WAKE_BITSET):
        bitset = val3 & 0xFFFFFFFF if cmd == FUTEX_WAKE_BITSET else BITSET_ANY
        return futex_wake(k, uaddr, val, bitset)
    if cmd in (FUTEX_REQUEUE, FUTEX_CMP_REQUEUE):
        if cmd == FUTEX_CMP_REQUEUE and _read_u32(k, uaddr) != val3 & 0xFFFFFFFF:
            raise GuestErr(errno.EAGAIN)
        woken = futex_wake(k, uaddr, val)
        moved = 0
        limit = timeout & 0xFFFFFFFF          # val2 rides in the timeout argument
        q = th.futexes.get(uaddr, [])
        while q and moved < limit:
            tid = q.pop(0)
            w = th.all.get(tid)
            if w is None or w.futex is None:
                continue
            w.futex[0] = uaddr2
            th.futexes.setdefault(uaddr2, []).append(tid)
            moved += 1
        if not q:
            th.futexes.pop(uaddr, None)
        return woken + moved if cmd == FUTEX_CMP_REQUEUE else woken
    raise GuestErr(errno.ENOSYS)


@syscall("set_tid_address", "ptr", family="threads")
def sys_set_tid_address(k, ptr):
    k.threads.cur.clear_child_tid = ptr
    return k.threads.cur.tid


@syscall("set_robust_list", "ptr", "size", family="threads")
def sys_set_robust_list(k, head, size):
    if size != 24:
        raise GuestErr(errno.EINVAL)
    k.threads.cur.robust_list = head
    return 0


@syscall("gettid", family="threads")
def sys_gettid(k):
    return k.threads.cur.tid


@syscall("sched_yield", family="threads", note="ends the running thread's slice if another thread is runnable")
def sys_sched_yield(k):
    k.yield_wanted = True
    return 0


@syscall("exit", "int", family="threads")
def sys_exit(k, status):
    """One thread ends (the last one's exit ends the process, before dispatch)."""
    thread_exit(k, k.threads.cur)
    return 0


@syscall("exit_group", "int", family="threads")
def sys_exit_group(k, status):
    raise AssertionError("exit_group is handled by the kernel before dispatch")
