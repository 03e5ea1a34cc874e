"""The record side of the Linux personality's point records, by family: system calls
(SYSCALL, INTENT before a data-directory change, WAIT for a blocking call, run at the
stop or inside the syscall hook), signals (SIGNAL) and thread switches (SCHED). Their
replay sides are in replay_sides.py. ``LinuxRecording`` is mixed into the Recorder
(record.py), whose loop calls these at its stops; they log through its ``_event``.
"""
from __future__ import annotations

from logging_channel import records as R

from ..errors import EXIT_INTERRUPTED, GuestStuck
from ..uc import lib
from . import inhook
from . import signals as S
from .signals import apply_signal, target_thread


class LinuxRecording:
    def _linux_after_run(self):
        """After the engine stops: pick up a system call; exit and exit_group end the
        guest here (the END record says so). Returns a Fault for HLT."""
        from ..vcpu import Fault
        k, m = self.kernel, self.m
        k.take_hook()
        status = k.exit_pending()
        if status is not None:
            m.exit_status = status
        elif m.vcpu.halted and k.pending is None:
            return Fault("hlt instruction (privileged in a Linux process)", None, m.vcpu.reg("rip") - 1, 139)
        return None

    def _linux_resume(self):
        """Gone live from a replay: the running thread may be stopped in a system call.
        Finish it first, doing its change again if the old primary may have made it
        (its Intent is logged); a call that was waiting goes back to the scheduler."""
        k = self.kernel
        if k.pending is None:
            return None
        if k.threads.cur.blocked is not None:
            return self._linux_schedule()
        if k.intent is not None:
            k.redo(k.intent)
        return self._linux_syscall()

    def _linux_stop(self):
        """At a stop: run the system call the running thread made, deliver signals
        that are due, or end the running thread's slice."""
        k, th = self.kernel, self.kernel.threads
        if self._sched_after_hook:
            self._sched_after_hook = False
            end = self._linux_schedule(preempt=k.yield_wanted)
            if end is not None:
                return end
        elif k.pending is not None:
            end = self._linux_syscall()
            if end is not None:
                return end
        end = self._linux_signals()
        if end is not None:
            return end
        due = th.preempt_at(self.m.vtime.now())
        if due is not None and self.m.blocks >= due:
            return self._linux_schedule(preempt=True)
        return None

    def _linux_signals(self):
        """Signals due at this stop: the guest's own (kill, tgkill), an expired interval
        timer, and SIGINT/SIGTERM that reached ftvm. Each becomes a SIGNAL record."""
        k, m, cpu = self.kernel, self.m, self.m.cpu
        for signo in list(k.signals_pending):
            if target_thread(k, signo) is None:
                continue            # blocked by every thread: it stays pending, as on Linux
            end = self._linux_signal(signo)
            if end is not None:
                return end
        if k.itimer[0] and m.vtime.now() >= k.itimer[0]:
            end = self._linux_signal(S.SIGALRM, vtime=m.vtime.now())
            if end is not None:
                return end
        if cpu.signal:
            signo, cpu.signal = int(cpu.signal), 0
            if S.disposition(k, signo) != "handle":
                return self._end("interrupted", EXIT_INTERRUPTED, f"recording stopped by signal {signo}")
            return self._linux_signal(signo)
        return None

    def _linux_fault_to_handler(self, fault):
        """A synchronous fault goes to the guest's handler if it installed one (SIGSEGV,
        SIGILL, SIGFPE, SIGTRAP), at the faulting instruction. Returns True if it did."""
        signo = S.FAULT_SIGNALS.get(fault.status)
        k, m = self.kernel, self.m
        if signo is None or S.disposition(k, signo) != "handle" or k.threads.cur.sigmask & (1 << (signo - 1)):
            return False
        self._event(R.Signal(m.blocks, m.vcpu.reg("rip"), k.threads.cur.tid, signo, 0))
        apply_signal(k, signo)
        return True

    def _linux_signal(self, signo, vtime=0):
        k, m = self.kernel, self.m
        th = k.threads
        t = S.target_thread(k, signo)
        if t is None:               # every thread blocks it: it waits, as Linux keeps it pending
            if signo not in k.signals_pending:
                k.signals_pending.append(signo)
            return None
        if t is not th.cur:
            self._event(R.Sched(m.blocks, m.vcpu.reg("rip"), th.cur.tid, t.tid))
            th.switch_to(t)
        self._event(R.Signal(m.blocks, m.vcpu.reg("rip"), t.tid, signo, vtime))
        status = apply_signal(k, signo, vtime)
        if status is not None:
            m.exit_status = status
            return self._end("exit", status, f"guest killed by signal {signo}")
        return None

    def _linux_syscall(self):
        """Run the running thread's pending call (a SYSCALL or WAIT record); if it must
        wait, exited or yielded, let the scheduler pick the next thread."""
        k = self.kernel
        rec, waits = k.run_record()
        self._event(rec)
        if waits or k.threads.cur.exited or k.yield_wanted:
            return self._linux_schedule(preempt=k.yield_wanted)
        return None

    def _hook_call(self):
        """Inside the syscall hook (linux/inhook.py): run the call there if it is one
        that may, as ``_linux_syscall`` would at the stop. Returns STOP, DONE or
        DONE_STOP (the call must wait, exited or yielded: the stop schedules)."""
        k, cpu = self.kernel, self.m.cpu
        if self._cfiles.t.fresh:
            self._cfiles.sync()         # files C opened, before Python looks at an fd
        r = cpu.sys_regs
        if not inhook.eligible(k, r[0], r[1]):
            return inhook.STOP
        if cpu.tsc_len:
            self._drain_frames()
            self._drain_tsc()       # RDTSC results before this call come first in the log
        nr, args, pc = r[0], (r[1], r[2], r[3]), cpu.sys_pc
        ret = inhook.socket_io(k, nr, args, pc)
        if ret is not None:
            cpu.sys_pending = 0
            # Its SYSCALL record (no host values) is encoded in C, after the clock
            # reads made there; it is counted when the frames go into the log.
            k.calls -= 1
            if not lib.ftvm_log_syscall3(cpu, pc, nr, args[0], args[1], args[2], ret):
                self._drain_frames()
                lib.ftvm_log_syscall3(cpu, pc, nr, args[0], args[1], args[2], ret)
            return inhook.DONE
        if cpu.sys_frames_count:
            self._drain_frames()
        k.take_hook()
        k.hook_rip = k.pending[2] + 2
        try:
            rec, waits = k.run_record()
        finally:
            k.hook_rip = None
        self._event(rec)
        if waits or k.threads.cur.exited or k.yield_wanted:
            self._sched_after_hook = True
            return inhook.DONE_STOP
        return inhook.DONE

    def _drain_frames(self):
        """SYSCALL records of clock reads made in C (fastpath.c) go into the log, in
        order, before anything else is logged."""
        got = self._inhook.take_frames()
        if got is None:
            return
        blob, n = got
        add = getattr(self.sink, "append_frames", None)
        if add is not None:
            add(blob, n)
        else:
            off = 0
            while off < len(blob):
                rec, size = R.decode(blob, off)
                self.sink.append(rec)
                off += size
        self.kernel.calls += n
        self.events += n
        self._logged_at_stop = True

    def _linux_schedule(self, preempt=False):
        """Pick the thread to run (threads.py's rule); log a SCHED record for a switch.
        A waiting thread whose wait is over runs its call again. When every thread
        waits, wait as a halted guest does for what the host brings. Returns an End
        record if the run ends while waiting."""
        m, k = self.m, self.kernel
        th = k.threads
        k.yield_wanted = False
        while True:
            t = th.pick(m.vtime.now(), preempt)
            preempt = False
            if t is not None:
                if t is not th.cur:
                    self._event(R.Sched(m.blocks, m.vcpu.reg("rip"), th.cur.tid, t.tid))
                    th.switch_to(t)
                else:
                    th.slice_start = m.blocks
                if t.blocked is not None:          # its wait is over: try the call again
                    rec, waits = k.run_record()
                    self._event(rec)
                    if waits or t.exited:
                        continue
                return None
            if th.earliest_deadline() is None and not self.host.input_may_come() and not self.host.net_attached:
                return self._end("stuck", GuestStuck.exit_status,
                                 "every thread of the guest waits and nothing can wake it: " + ", ".join(
                                     f"thread {x.tid} in {x.blocked.what}" for x in th.all.values() if x.blocked))
            self._stop_to_wait()
            timeout = 0.05
            deadline = th.earliest_deadline()
            if deadline is not None:
                timeout = min(timeout, max(0.0, (deadline - m.vtime.now()) / 1e9))
            if timeout > 0:
                self.host.wait(timeout)
            self._take_host_events()
            end = self._linux_signals()
            if end is not None:
                return end

    def _output_gate(self, values):
        """Before a change to the data directory: the backup must have the log up to
        this call, by the Output Rule. The Intent record marks the point and carries the
        host values the call has used so far (for a redo after a failover)."""
        self._flush_console()
        k, m = self.kernel, self.m
        self._append(R.Intent(m.blocks, k.pending[2], k.pending[0], list(values)))
        self._logged_at_stop = True
        wait = getattr(self.out, "file_output", None)
        if wait is not None:
            wait(self)
