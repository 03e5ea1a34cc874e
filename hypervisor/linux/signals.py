"""Signals of the Linux personality: dispositions (rt_sigaction), masks, the
alternate stack, delivery through a real x86-64 signal frame, rt_sigreturn, kill and
tgkill to itself, alarm and setitimer in guest time.

An asynchronous signal (Ctrl-C or `ftvm kill --signal TERM` reaching ftvm, an expired
timer) is delivered at a stop: recording decides the thread and logs a SIGNAL record
(after a SCHED record if it switches threads), replay and the backup deliver it at the
same execution point. A thread waiting in a system call leaves it with EINTR. A
signal whose disposition is the default ends the process with status 128 + signo.
"""
from __future__ import annotations

import errno
import struct

from .fs import GuestErr
from .table import syscall

SIGHUP, SIGINT, SIGQUIT, SIGILL, SIGABRT, SIGFPE, SIGKILL, SIGSEGV = 1, 2, 3, 4, 6, 8, 9, 11
SIGPIPE, SIGALRM, SIGTERM, SIGCHLD, SIGCONT, SIGSTOP, SIGURG, SIGWINCH = 13, 14, 15, 17, 18, 19, 23, 28
SIG_DFL, SIG_IGN = 0, 1
SA_SIGINFO, SA_ONSTACK, SA_RESTART, SA_NODEFER, SA_RESETHAND = 4, 0x08000000, 0x10000000, 0x40000000, 0x80000000
SS_ONSTACK, SS_DISABLE = 1, 2
DEFAULT_IGNORE = {SIGCHLD, SIGCONT, SIGURG, SIGWINCH}
SIGTRAP = 5
FAULT_SIGNALS = {139: SIGSEGV, 132: SIGILL, 136: SIGFPE, 133: SIGTRAP}   # ftvm's fault status -> signal
_GREGS = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi", "rbp", "rbx", "rdx", "rax", "rcx",
          "rsp", "rip", "rflags")
FRAME_SIZE = 8 + 304 + 128       # pretcode, ucontext, siginfo


def action(k, signo):
    """(handler, flags, restorer, mask) of ``signo``."""
    raw = k.sigactions.get(signo)
    if raw is None:
        return SIG_DFL, 0, 0, 0
    return struct.unpack("<QQQQ", raw)


def disposition(k, signo):
    """'handle', 'ignore' or 'terminate'."""
    handler = action(k, signo)[0]
    if handler == SIG_IGN or (handler == SIG_DFL and signo in DEFAULT_IGNORE):
        return "ignore"
    if handler == SIG_DFL:
        return "terminate"
    return "handle"


def target_thread(k, signo):
    """Record side: the thread a process-directed signal goes to (the running one
    unless it blocks the signal; else the first in tid order that does not)."""
    th = k.threads
    bit = 1 << (signo - 1)
    if not th.cur.exited and not th.cur.sigmask & bit:
        return th.cur
    for tid in sorted(th.all):
        t = th.all[tid]
        if not t.sigmask & bit:
            return t
    return None


def deliver(k, signo):
    """Deliver ``signo`` to the running thread (both sides). Returns an exit status if
    the signal ends the process, else None."""
    disp = disposition(k, signo)
    if disp == "ignore":
        return None
    if disp == "terminate":
        return 128 + signo
    t = k.threads.cur
    v = k.m.vcpu
    if t.pending is not None:
        _interrupt_call(k, t)
    handler, flags, restorer, mask = action(k, signo)
    t.sigframes.append(v.context())
    rsp = v.reg("rsp")
    on_alt = False
    ss_sp, ss_flags, ss_size = struct.unpack("<Qi4xQ", t.altstack) if len(t.altstack) == 24 else (0, SS_DISABLE, 0)
    if flags & SA_ONSTACK and not ss_flags & SS_DISABLE and ss_size and not (ss_sp <= rsp < ss_sp + ss_size):
        rsp = ss_sp + ss_size
        on_alt = True
    frame = ((rsp - 128 - FRAME_SIZE) & ~0xF) - 8
    uc = frame + 8
    info = uc + 304
    gregs = [v.reg(r) for r in _GREGS]
    sigctx = struct.pack("<18Q", *gregs) + struct.pack("<HHHH", 0x33, 0, 0, 0x2B) + struct.pack("<QQQQ", 0, 0, t.sigmask, 0)
    sigctx += struct.pack("<Q", 0) + bytes(64)
    stack_t = struct.pack("<QI4xQ", ss_sp, SS_ONSTACK if on_alt else (ss_flags & SS_DISABLE), ss_size)
    ucontext = struct.pack("<QQ", 0, 0) + stack_t + sigctx + struct.pack("<Q", t.sigmask)
    siginfo = struct.pack("<iii4xii", signo, 0, 0, 100, 1000).ljust(128, b"\0")    # SI_USER from pid 100
    k.write_mem(frame, struct.pack("<Q", restorer) + ucontext + siginfo)
    v.set_reg("rsp", frame)
    v.set_reg("rip", handler)
    v.set_reg("rdi", signo)
    v.set_reg("rsi", info)
    v.set_reg("rdx", uc)
    v.set_reg("rax", 0)
    if not flags & SA_NODEFER:
        mask |= 1 << (signo - 1)
    t.sigmask |= mask & ~((1 << (SIGKILL - 1)) | (1 << (SIGSTOP - 1)))
    if flags & SA_RESETHAND:
        k.sigactions.pop(signo, None)
    return None


def _interrupt_call(k, t):
    """The thread was waiting in a system call: it returns EINTR."""
    from .threads import futex_unqueue
    futex_unqueue(k, t)
    t.pending = None
    t.blocked = None
    t.intent = None
    t.sleep_deadline = None
    k.m.vcpu.set_reg("rax", (-errno.EINTR) & (2**64 - 1))
    k.calls += 1


# --- calls --------------------------------------------------------------------------------

@syscall("rt_sigaction", "int", "ptr", "ptr", "size", family="signals")
def sys_rt_sigaction(k, sig, act, oldact, size):
    if not 1 <= sig <= 64 or (sig in (SIGKILL, SIGSTOP) and act):
        raise GuestErr(errno.EINVAL)
    if oldact:
        k.write_mem(oldact, k.sigactions.get(sig, bytes(32)))
    if act:
        k.sigactions[sig] = k.read_mem(act, 32)
    return 0


@syscall("rt_sigprocmask", "int", "ptr", "ptr", "size", family="signals")
def sys_rt_sigprocmask(k, how, new, old, size):
    t = k.threads.cur
    if old:
        k.write_mem(old, struct.pack("<Q", t.sigmask))
    if new:
        m = struct.unpack("<Q", k.read_mem(new, 8))[0] & ~((1 << (SIGKILL - 1)) | (1 << (SIGSTOP - 1)))
        if how == 0:
            t.sigmask |= m
        elif how == 1:
            t.sigmask &= ~m
        elif how == 2:
            t.sigmask = m
        else:
            raise GuestErr(errno.EINVAL)
    return 0


@syscall("sigaltstack", "ptr", "ptr", family="signals")
def sys_sigaltstack(k, new, old):
    t = k.threads.cur
    if old:
        k.write_mem(old, t.altstack)
    if new:
        t.altstack = k.read_mem(new, 24)
    return 0


@syscall("rt_sigreturn", family="signals")
def sys_rt_sigreturn(k):
    """Back from a handler: the registers and mask saved in the frame (at RSP, the
    ucontext), and the FPU/SSE state saved at delivery."""
    t = k.threads.cur
    v = k.m.vcpu
    uc = v.reg("rsp")
    raw = k.read_mem(uc, 304)
    gregs = struct.unpack_from("<18Q", raw, 40)
    mask = struct.unpack_from("<Q", raw, 296)[0]
    if t.sigframes:
        v.restore_context(t.sigframes.pop())
    for name, value in zip(_GREGS, gregs):
        v.set_reg(name, value)
    t.sigmask = mask
    k.restored_regs = True          # the call's own result must not overwrite RAX/RCX/R11
    return gregs[13]


@syscall("kill", "int", "int", family="signals", note="to itself only (pid 100); others get ESRCH")
def sys_kill(k, pid, sig):
    from .calls_process import PID
    if pid not in (PID, 0, 2**64 - 1) and (pid & 0xFFFFFFFF) not in (PID, 0):
        raise GuestErr(errno.ESRCH)
    if sig == 0:
        return 0
    if not 1 <= sig <= 64:
        raise GuestErr(errno.EINVAL)
    k.signals_pending.append(sig)
    return 0


@syscall("tgkill", "int", "int", "int", family="signals")
def sys_tgkill(k, tgid, tid, sig):
    if k.threads.get(tid) is None:
        raise GuestErr(errno.ESRCH)
    if sig:
        k.signals_pending.append(sig)
    return 0


@syscall("tkill", "int", "int", family="signals")
def sys_tkill(k, tid, sig):
    return sys_tgkill(k, 100, tid, sig)


def _itimer(k):
    t = k.itimer
    if not t[0]:
        return 0, 0
    from .calls_time import now
    left = max(1, t[0] - now(k))
    return left, t[1]


@syscall("setitimer", "int", "ptr", "ptr", family="signals", note="ITIMER_REAL in guest time (SIGALRM)")
def sys_setitimer(k, which, new, old):
    if which != 0:
        raise GuestErr(errno.EINVAL)
    if old:
        left, interval = _itimer(k)
        k.write_mem(old, struct.pack("<qqqq", interval // 10**9, interval % 10**9 // 1000,
                                     left // 10**9, left % 10**9 // 1000))
    if new:
        isec, iusec, vsec, vusec = struct.unpack("<qqqq", k.read_mem(new, 32))
        value = vsec * 10**9 + vusec * 1000
        interval = isec * 10**9 + iusec * 1000
        if value:
            from .calls_time import now
            k.itimer = [now(k) + value, interval]
        else:
            k.itimer = [0, 0]
    return 0


@syscall("getitimer", "int", "ptr", family="signals")
def sys_getitimer(k, which, cur):
    if which != 0:
        raise GuestErr(errno.EINVAL)
    left, interval = _itimer(k)
    k.write_mem(cur, struct.pack("<qqqq", interval // 10**9, interval % 10**9 // 1000, left // 10**9,
                                 left % 10**9 // 1000))
    return 0


@syscall("alarm", "int", family="signals")
def sys_alarm(k, seconds):
    left, _ = _itimer(k)
    if seconds:
        from .calls_time import now
        k.itimer = [now(k) + seconds * 10**9, 0]
    else:
        k.itimer = [0, 0]
    return (left + 10**9 - 1) // 10**9


def timer_fired(k, now_ns):
    """The interval timer fired at guest time ``now_ns``: rearm it for its next period
    after that (periods missed meanwhile give one signal, as on Linux) or disarm it."""
    t = k.itimer
    if not t[0]:
        return
    if not t[1]:
        t[0] = 0
        return
    nxt = t[0] + t[1]
    if nxt <= now_ns:
        nxt += (now_ns - nxt) // t[1] * t[1] + t[1]
    t[0] = nxt


def apply_signal(k, signo, vtime=0):
    """Deliver a signal to the running thread, recording and replaying alike (the
    SIGNAL record's two sides); returns an exit status if it ends the process.
    ``vtime``: a timer's signal fired then."""
    if vtime:
        k.vtime_seen(vtime)
        timer_fired(k, vtime)
    elif signo in k.signals_pending:
        k.signals_pending.remove(signo)
    return deliver(k, signo)
