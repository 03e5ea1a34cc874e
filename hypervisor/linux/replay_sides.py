"""The replay sides of the Linux personality's point records, by family: system calls
(SYSCALL, with INTENT and WAIT for data-directory changes and blocking calls),
signals (SIGNAL) and thread switches (SCHED). Their record sides are the recorder's
Linux stops (record.py) and the calls' own code; the kernel (kernel.py) runs the call
itself, in record and replay alike, and the log supplies only what the host decided.

Each side returns None or what does not match, as a sentence; the replay loop turns
that into a divergence at the current execution point.
"""
from __future__ import annotations

from logging_channel import records as R

from .signals import apply_signal


def sides(k, check_pc):
    """{kind: (apply, counts as an event, at the logged pc)} for ``Replayer._apply``.
    ``check_pc(ev)`` raises the divergence for a record met at another pc; the sides
    call it after their own checks, which say more."""

    def syscall(ev):
        k.run_replay(ev)

    def intent(ev):
        if k.pending is None or k.pending[0] != ev.nr:
            return "the log has a data-directory change here, but the guest is not in that system call"
        k.intent = list(ev.values)
        return None

    def wait(ev):
        k.run_replay_wait(ev)

    def signal(ev):
        th = k.threads
        if th is None or th.cur.tid != ev.tid:
            return (f"the log delivers signal {ev.signo} to thread {ev.tid} here, but the running thread is "
                    f"{th.cur.tid if th else '-'}")
        check_pc(ev)
        status = apply_signal(k, ev.signo, ev.vtime)
        if status is not None:
            k.m.exit_status = status
        return None

    def sched(ev):
        th = k.threads
        if th is None or th.cur.tid != ev.prev or th.get(ev.next) is None:
            return (f"the log switches from thread {ev.prev} to {ev.next} here, but the running thread is "
                    f"{th.cur.tid if th else '-'}")
        if th.cur.pending is not None and th.cur.blocked is None and not th.cur.exited:
            return f"the log switches threads here, but thread {th.cur.tid} is in {k.describe_pending()}"
        check_pc(ev)
        th.switch_to(th.get(ev.next))
        return None

    return {
        R.SYSCALL: (syscall, True, False),
        R.INTENT: (intent, False, False),
        R.WAIT: (wait, False, False),
        R.SIGNAL: (signal, False, False),
        R.SCHED: (sched, False, False),
    }
