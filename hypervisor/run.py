"""What `ftvm record` and `ftvm replay` do, between the CLI and the machine."""
from __future__ import annotations

import dataclasses
import os
import sys

from logging_channel.logfile import LogWriter

from . import elf_loader
from .console import Console, fd_sink
from .machine import Config
from .record import PlainOutput, Recorder
from .sources.interrupts import HostEvents
from .replay import Replayer


@dataclasses.dataclass
class Devices:
    """The optional devices of guest ABI v2, as the command line gave them."""
    listen: str | None = None        # HOST:PORT of the TCP front end
    disk: str | None = None          # disk image path
    disk_sectors: int = 0
    disk_reads: str = "log"


def record_guest(guest, log_path, *, stack_size, mem_limit, digest_interval_ms, digest_every_events, say,
                 stdin_fd=0, devices: Devices | None = None):
    """Record ``guest`` (a guest.AbiGuest or LinuxGuest, or an ftvm-ABI ELF path)."""
    devices = devices or Devices()
    if isinstance(guest, (str, os.PathLike)):
        data, image = elf_loader.load_file(guest, mem_limit=mem_limit, stack_size=stack_size)
        from .guest import AbiGuest
        guest = AbiGuest(data, image, os.path.basename(guest))
    if guest.personality == "linux" and devices.disk:
        from .errors import FtvmError
        raise FtvmError("--disk is a device of ftvm-ABI guests; a Linux program uses --data")
    config = Config(stack_size=stack_size, mem_limit=mem_limit, digest_interval_ms=digest_interval_ms,
                    digest_every_events=digest_every_events, disk_sectors=devices.disk_sectors,
                    disk_reads=devices.disk_reads)
    writer = LogWriter(log_path)
    say(f"recording {guest.name} to {log_path}")
    front = None
    try:
        host = HostEvents(None, stdin_fd)
        net_write = None
        if devices.listen:
            from .frontend import FrontEnd
            front = FrontEnd(devices.listen, host.push_net, say=say)
            host.net_attached = True
            net_write = front.deliver
            say(f"listening on {front.address} (clients reach the guest's network device)")
        console = Console(fd_sink(1))
        rec = Recorder.start(guest, writer, config, console, out=PlainOutput(fd_sink(1), net_write), host=host)
        if devices.disk:
            rec.attach_disk(devices.disk)
            say(f"disk {devices.disk}: {devices.disk_sectors} sectors of 4096 bytes "
                f"({'read data in the log' if devices.disk_reads == 'log' else 'reads from the shared image'})")
        if front is not None:
            front.start()
        end = rec.run()
    finally:
        if front is not None:
            front.close()
        writer.close()
    _report_end(say, end, f"{rec.events} events, log {writer.records} records, {writer.bytes} bytes")
    return end.status


def _report_end(say, end, extra):
    if end.reason == "exit":
        say(f"{end.detail} after {end.blocks} blocks; {extra}")
    else:
        say(f"{end.detail} at block {end.blocks} pc {end.pc:#x}; {extra}")


def replay_log(log_path, point, say, disk=None):
    to_blocks = point[1] if point and point[0] == "blocks" else None
    to_event = point[1] if point and point[0] == "event" else None
    to_syscall = point[1] if point and point[0] == "syscall" else None
    rp = Replayer(log_path, Console(fd_sink(1)), to_blocks=to_blocks, to_event=to_event, to_syscall=to_syscall)
    if to_syscall is not None and rp.kernel is None:
        from .logview import NotLinux
        raise NotLinux(f"{log_path}: sys:{to_syscall} names a system call, and this is the log of an "
                       "ftvm-ABI guest (it makes none); use a block count or #N")
    rp.disk_path = disk
    res = rp.run()
    if res.stopped_at is not None:
        print_registers(res.stopped_at, res.message)
        if to_syscall is not None:
            from .logview import pending_call_lines
            for line in pending_call_lines(rp, log_path):
                print(line)
        return 0
    if to_syscall is not None and rp.kernel is not None:
        say(f"no system call #{to_syscall}: the run made {rp.kernel.calls} before it ended "
            f"(#0-#{rp.kernel.calls - 1}, then the exit call, if any, as #{rp.kernel.calls}); replayed to the end")
    if res.end is not None:
        say(f"{res.message} ({res.end.blocks} blocks, {rp.events} events; identical to the recording)")
    else:
        say(res.message)
    return res.status


def print_registers(regs, title):
    from rich.console import Console as RichConsole
    from rich.table import Table
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("register")
    t.add_column("value", justify="right")
    for name, value in regs.items():
        width = 34 if name.startswith("xmm") else 18
        t.add_row(name, f"{value:#0{width}x}")
    RichConsole(file=sys.stdout).print(t)
