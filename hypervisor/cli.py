"""The `ftvm` command line.

Guest console output goes to stdout; ftvm's own messages go to stderr, one line each,
prefixed "ftvm:". Operating errors (bad ELF, damaged log, ...) print one line and exit
with the status documented in hypervisor/errors.py; they never show a traceback.
"""
from __future__ import annotations

import functools
import os
import sys

import click

from . import __version__
from .errors import EXIT_INTERRUPTED, FtvmError


def say(msg):
    click.echo(f"ftvm: {msg}", err=True)


def operating_errors(fn):
    """Turn FtvmError and Ctrl-C into one line on stderr and an exit status."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except FtvmError as e:
            say(f"error: {e}")
            sys.exit(e.exit_status)
        except KeyboardInterrupt:
            say("interrupted")
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            sys.exit(0)
    return wrapper


def _size(text):
    """'1M', '512K', '1048576' -> bytes."""
    t = str(text).strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        return int(t[:-1] if t[-1:] in "KMG" else t) * mult
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size (examples: 1048576, 512K, 4M, 1G)") from None


class SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return _size(value)
        except click.BadParameter as e:
            self.fail(str(e), param, ctx)


SIZE = SizeType()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ftvm")
def main():
    """ftvm runs static x86-64 guest programs on an emulated CPU, records every source
    of nondeterminism into a log, and replays that log bit for bit.

    \b
    Typical session:
      ftvm record guest_programs/build/echo.elf -o echo.ftlog   (type lines, then Ctrl-D)
      ftvm log show echo.ftlog
      ftvm replay echo.ftlog
      ftvm log stats echo.ftlog

    Fault tolerance: `ftvm run GUEST` (primary + backup), `--nodes 3` and more with the
    view service; `ftvm kill`, `ftvm status`; `ftvm node` / `ftvm observe` across hosts.

    Exit statuses: the guest's own, or 2 bad usage/ELF, 3 damaged log, 4 truncated log,
    5 replay diverged, 6 guest stuck in HLT, 7 I/O error, 8 every node died (logs kept),
    9 a stale node halted, 130 interrupted, 132 guest invalid instruction, 136 guest
    divide error, 139 guest memory fault.
    """
    _stoppable()


def _stoppable():
    """SIGINT and SIGTERM stop ftvm cleanly (the guest told, the log closed, exit 130).
    A process started with them ignored or blocked (a script's background job, a test
    runner's worker) would never see them, and a run could then only be killed, its
    log unfinished: take them back."""
    import signal
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _device_options(fn):
    for opt in reversed([
        click.option("--listen", metavar="HOST:PORT", default=None,
                     help="Open a TCP front end here; each client connection reaches the guest's network "
                          "device (ABI v2). Port 0 picks a free port (printed)."),
        click.option("--disk", metavar="PATH", type=click.Path(dir_okay=False), default=None,
                     help="Attach a block device backed by this image file (created if missing; "
                          "in `ftvm run`, relative to the run directory's shared disk)."),
        click.option("--disk-size", metavar="SIZE", default=None,
                     help="Size of a new disk image, e.g. 64M (must match an existing one)."),
        click.option("--disk-reads", type=click.Choice(["log", "shared"]), default="log", show_default=True,
                     help="log: data read travels in the log; shared: only its CRC does, and the backup "
                          "reads the shared image itself (less logging bandwidth)."),
    ]):
        fn = opt(fn)
    return fn


def _devices(listen, disk, disk_size, disk_reads):
    from .sources.disk import open_image, parse_size
    from .run import Devices
    if disk_size is not None and disk is None:
        raise click.UsageError("--disk-size needs --disk PATH")
    sectors = 0
    if disk is not None:
        sectors = open_image(disk, parse_size(disk_size) if disk_size else None)
    return Devices(listen=listen, disk=disk, disk_sectors=sectors, disk_reads=disk_reads)


def _linux_options(fn):
    for opt in reversed([
        click.option("--root", metavar="DIR", default="/", show_default=True,
                     help="Linux programs: the read-only root the program, its loader and libraries come from "
                          "(identical on every host of a run)."),
        click.option("--data", metavar="HOST[:GUEST]", default=None,
                     help="Linux programs: a writable data directory, seen by the guest at GUEST (default /data); "
                          "in `ftvm run` it is shared storage, written only by the primary under the Output Rule."),
        click.option("--cwd", metavar="DIR", default=None,
                     help="Linux programs: the working directory (default: the current one, with --root /)."),
        click.option("--env", "env", metavar="NAME=VALUE", multiple=True,
                     help="Linux programs: add to the fixed default environment (the host's does not leak in)."),
        click.option("--personality", type=click.Choice(["auto", "abi", "linux"]), default="auto", show_default=True,
                     help="How to run the ELF: as an ftvm-ABI guest or as a Linux program (auto: see docs/linux.md)."),
    ]):
        fn = opt(fn)
    return fn


def _guest(program, personality, root, data, cwd, env, **kw):
    from .guest import open_guest
    if not program:
        raise click.UsageError("name the program to run: ftvm record -o LOG -- PROGRAM [ARGS...]")
    return open_guest(program[0], list(program[1:]), personality=None if personality == "auto" else personality,
                      root=root, data=data, cwd=cwd, env=env, **kw)


@main.command(context_settings={"allow_interspersed_args": True})
@click.argument("program", nargs=-1, type=click.UNPROCESSED, metavar="[--] PROGRAM [ARGS]...")
@click.option("-o", "--output", "log_path", type=click.Path(dir_okay=False),
              help="Log file to write. Default: PROGRAM's name with .ftlog, in the current directory.")
@click.option("--stack-size", type=SIZE, default="1M", show_default=True, help="ftvm-ABI guests: stack size (at least 1M).")
@click.option("--mem-limit", type=SIZE, default="1G", show_default=True,
              help="ftvm-ABI guests: refuse guests whose memory (segments + stack) exceeds this.")
@click.option("--digest-interval-ms", type=click.IntRange(0), default=250, show_default=True,
              help="Log a state digest every this many ms of guest time (0: only at the end).")
@click.option("--digest-every-events", type=click.IntRange(0), default=1000, show_default=True,
              help="... and every this many events (0: off).")
@click.option("-q", "--quiet", is_flag=True, help="No ftvm messages on stderr unless something goes wrong.")
@_device_options
@_linux_options
@operating_errors
def record(program, log_path, stack_size, mem_limit, digest_interval_ms, digest_every_events, quiet,
           listen, disk, disk_size, disk_reads, root, data, cwd, env, personality):
    """Run PROGRAM and record everything nondeterministic it sees into a log.

    PROGRAM is an unmodified Linux x86-64 program (static, static-pie or dynamically
    linked; its arguments follow it, after `--`) or an ftvm-ABI guest. The choice is
    automatic (docs/linux.md); --personality forces it.

    \b
      ftvm record -o ls.ftlog -- /bin/busybox ls /
      ftvm record -o py.ftlog --data ./state:/data -- /usr/bin/python3 script.py
      ftvm record guest_programs/build/echo.elf -o echo.ftlog

    The program's stdout and stderr are on stdout. Bytes arriving on stdin reach it as
    they arrive. ftvm exits with the program's exit status. Ctrl-C stops it and closes
    the log properly (exit 130); the log still replays.

    ftvm-ABI guests: with --listen HOST:PORT, TCP clients that connect there reach the
    guest's network device; with --disk PATH the guest has a block device.
    """
    from .run import record_guest
    from .abi import STACK_SIZE_MIN
    if stack_size < STACK_SIZE_MIN:
        raise click.BadParameter(f"at least {STACK_SIZE_MIN >> 20}M", param_hint="--stack-size")
    guest = _guest(program, personality, root, data, cwd, env, mem_limit=mem_limit, stack_size=stack_size,
                   listen=listen)
    if log_path is None:
        log_path = os.path.splitext(os.path.basename(program[0]))[0] + ".ftlog"
    status = record_guest(guest, log_path, stack_size=stack_size, mem_limit=mem_limit,
                          digest_interval_ms=digest_interval_ms, digest_every_events=digest_every_events,
                          say=(lambda m: None) if quiet else say,
                          devices=_devices(listen, disk, disk_size, disk_reads))
    sys.exit(status)


def _parse_point(text):
    """'123456' -> ('blocks', 123456); '#12' or 'event:12' -> ('event', 12);
    'sys:12' or 'syscall:12' -> ('syscall', 12)."""
    t = text.strip()
    try:
        for prefix in ("sys:", "syscall:"):
            if t.startswith(prefix):
                n = int(t[len(prefix):])
                if n < 0:
                    raise ValueError
                return "syscall", n
        if t.startswith("#"):
            return "event", int(t[1:])
        if t.startswith("event:"):
            return "event", int(t[6:])
        if t.startswith("block:"):
            return "blocks", int(t[6:])
        return "blocks", int(t, 0)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use a block count (123456), #N / event:N for the Nth event, "
                                 "or sys:N for the Nth system call (from 0)") from None


@main.command()
@click.argument("log", type=click.Path(dir_okay=False))
@click.option("--to", "to", metavar="POINT",
              help="Stop at an execution point and print the registers: a block count (e.g. 120000) "
                   "or #N / event:N to stop just before the Nth event, or sys:N to stop where the Nth system "
                   "call of a Linux program (from 0, as `ftvm log show --kind syscall` numbers them) is pending.")
@click.option("-q", "--quiet", is_flag=True, help="No ftvm messages on stderr unless something goes wrong.")
@operating_errors
@click.option("--disk", metavar="PATH", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The disk image, for a log recorded with --disk-reads shared (read data not in the log).")
@click.option("--gdb", "gdb_listen", metavar="[HOST:]PORT", default=None,
              help="Serve the gdb remote protocol on this port (loopback unless a HOST is given) and let a "
                   "debugger drive the replay, backwards too. Prints the gdb command to use.")
@click.option("--snapshot-interval-ms", type=click.IntRange(10), default=250, show_default=True,
              help="With --gdb: take a snapshot for reverse execution after this much replay time.")
@click.option("--snapshot-mem", type=SIZE, default="1G", show_default=True,
              help="With --gdb: memory for snapshots at most (older ones are thinned out past it).")
@click.option("--gdb-once", is_flag=True, hidden=True, help="Exit when the first debugger detaches (tests).")
def replay(log, to, quiet, disk, gdb_listen, snapshot_interval_ms, snapshot_mem, gdb_once):
    """Replay LOG: print the same console output and end with the same exit status.

    Exits 5 if the replay diverged from the recording, naming the execution point and
    what differs; 4 if the log was cut short (after replaying everything before the cut).
    A guest's network replies and disk writes are reproduced and checked, not sent.
    """
    if gdb_listen is not None:
        from .debug.server import serve
        sys.exit(serve(log, gdb_listen, say, interval_ms=snapshot_interval_ms, mem_max_bytes=snapshot_mem,
                       once=gdb_once))
    from .run import replay_log
    point = _parse_point(to) if to else None
    status = replay_log(log, point, say=(lambda m: None) if quiet else say, disk=disk)
    sys.exit(status)


@main.group()
def log():
    """Inspect logs: show records, print statistics."""


@log.command("show")
@click.argument("log_path", metavar="LOG", type=click.Path(dir_okay=False))
@click.option("-k", "--kind", "kinds", multiple=True,
              type=click.Choice(list(__import__("logging_channel.records", fromlist=["KIND_NAMES"]).KIND_NAMES.values())),
              help="Only records of this kind (repeatable).")
@click.option("--from-block", type=int, default=None, help="Only records at or after this block count.")
@click.option("--to-block", type=int, default=None, help="Only records at or before this block count.")
@click.option("-n", "--limit", type=click.IntRange(1), default=None, help="Show at most this many records.")
@click.option("--expand-tsc", is_flag=True, help="One line per RDTSC result instead of one per batch.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of text.")
@operating_errors
def log_show(log_path, kinds, from_block, to_block, limit, expand_tsc, as_json):
    """One line per record: index, kind, execution point, the instruction at the PC, details."""
    from .logview import show
    show(log_path, set(kinds), from_block, to_block, limit, expand_tsc, as_json)


@log.command("stats")
@click.argument("log_path", metavar="LOG", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@operating_errors
def log_stats(log_path, as_json):
    """Counts and bytes per record kind, bytes per event, events and blocks per second."""
    from .logview import stats
    stats(log_path, as_json)


@log.command("plot")
@click.argument("log_path", metavar="LOG", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="The picture to write: .svg, .png or .pdf.")
@operating_errors
def log_plot(log_path, out):
    """Draw a run on one time axis: which node was primary and which backup, failovers,
    state transfers, output and input rates, event rates, faults."""
    from .plot import plot_log
    plot_log(log_path, out, say=say)


def _ft_options(fn):
    fn = click.option("--hb-interval-ms", type=click.IntRange(1), default=20, show_default=True,
                      help="Heartbeat interval on the logging channel.")(fn)
    fn = click.option("--fail-timeout-ms", type=click.IntRange(10), default=150, show_default=True,
                      help="A peer silent this long is declared dead.")(fn)
    fn = click.option("--max-lag-ms", type=click.IntRange(1), default=100, show_default=True,
                      help="The primary slows down when the backup trails by more guest progress than this.")(fn)
    return fn


def _opts(hb_interval_ms, fail_timeout_ms, max_lag_ms):
    from .ft.node import FtOptions
    return FtOptions(hb_interval_ms=hb_interval_ms, fail_timeout_ms=fail_timeout_ms, max_lag_ms=max_lag_ms)


@main.command(context_settings={"allow_interspersed_args": True})
@click.argument("program", nargs=-1, type=click.UNPROCESSED, metavar="[--] PROGRAM [ARGS]...")
@click.option("--log", "log_path", type=click.Path(dir_okay=False),
              help="When the run ends, write a replay log of the whole run (across failovers) here.")
@click.option("--kill-primary-after", "kill_after", type=float, multiple=True, metavar="SECONDS",
              help="SIGKILL whichever node is primary this many seconds after the first primary "
                   "started the guest (repeatable). With --nodes 3 or more, a kill waits until the "
                   "primary has an up-to-date backup.")
@click.option("--progress", is_flag=True, help="Show a live status table on stderr.")
@click.option("--run-dir", type=click.Path(file_okay=False),
              help="Directory for the nodes' logs, status and the shared disk (default: a new temporary one).")
@click.option("--nodes", type=click.IntRange(2, 26), default=2, show_default=True,
              help="Nodes to run. More than 2 starts the view service, which restores redundancy "
                   "after a failure by transferring state to an idle node.")
@click.option("--coordinator", metavar="etcd://HOST:PORT[,...]|etcd-local", default=None,
              help="Keep the views, membership and go-live in etcd instead of the embedded view service "
                   "(no process of the run is then a single point of failure). etcd-local starts a "
                   "three-member etcd cluster in the run directory and stops it with the run.")
@_device_options
@_linux_options
@_ft_options
@operating_errors
def run(program, log_path, kill_after, progress, run_dir, nodes, coordinator, hb_interval_ms, fail_timeout_ms,
        max_lag_ms, listen, disk, disk_size, disk_reads, root, data, cwd, env, personality):
    """Run PROGRAM fault-tolerantly: a primary and a backup process joined by the logging
    channel, and this process as the observer.

    \b
      ftvm run -- /usr/bin/python3 script.py
      ftvm run --data ./state:/data --kill-primary-after 1.0 -- /bin/busybox md5sum /data/f
      ftvm run guest_programs/build/lines.elf --nodes 3

    PROGRAM is a Linux program (its arguments follow it, after `--`) or an ftvm-ABI guest.
    A Linux program's data directory (--data) is shared storage: only the primary writes
    it, under the Output Rule; the root (--root) must be identical on every node.

    The guest's console is on stdout, exactly once, whatever fails; stdin goes to the
    guest's input device through the primary. ftvm exits with the guest's exit status,
    or 8 if every node died first (the logs stay in the run directory).

    With --listen HOST:PORT this process is also the network front end (it plays the
    network switch): clients connect there and reach whichever node is primary; across
    a failover they see only a pause. --disk PATH gives the guest a block device on an
    image all nodes reach (put it on shared storage when the nodes are on several hosts);
    only the primary writes it, under the Output Rule. A server guest runs until Ctrl-C.
    """
    from .ft.observer import run_local
    import tempfile
    _coordinator_ok(coordinator, allow_local=True)
    g = _guest(program, personality, root, data, cwd, env, listen=listen)
    guest = program[0]
    if g.personality == "linux":
        if disk:
            raise click.UsageError("--disk is a device of ftvm-ABI guests; a Linux program has --data")
        run_dir = run_dir or tempfile.mkdtemp(prefix="ftvm-run-")
        os.makedirs(run_dir, exist_ok=True)
        from .linux.spec import SPEC_SUFFIX
        guest = os.path.join(os.path.abspath(run_dir), "guest" + SPEC_SUFFIX)
        g.spec.save(guest)
    status = run_local(guest, log_path=log_path, kill_after=kill_after, progress=progress, run_dir=run_dir,
                       opts=_opts(hb_interval_ms, fail_timeout_ms, max_lag_ms), say=say, nodes=nodes,
                       devices=_devices(listen, disk, disk_size, disk_reads), coordinator=coordinator)
    sys.exit(status)


def _coordinator_ok(url, allow_local=False):
    """A --coordinator value that cannot be an etcd address: a usage error, one line."""
    if url is None or (allow_local and url == "etcd-local"):
        return
    from .ft.etcd import BadAddress, parse_url
    try:
        parse_url(url)
    except BadAddress as e:
        raise click.BadParameter(str(e), param_hint="--coordinator") from None


def _use_key(key_file):
    """The channel key for this process's endpoint (transport.ChannelKey reads it)."""
    if key_file:
        from .ft.transport import KEY_ENV
        os.environ[KEY_ENV] = os.path.abspath(key_file)


@main.command()
@click.option("--name", required=True, help="This node's name (A, B, ...).")
@click.option("--role", type=click.Choice(["primary", "backup"]), help="Fixed role (a pair without view service).")
@click.option("--viewservice", metavar="ADDR", help="Take roles from the view service at ADDR instead.")
@click.option("--coordinator", metavar="etcd://HOST:PORT[,...][/PREFIX]", default=None,
              help="Take roles from views kept in etcd under PREFIX (the run's; default /ftvm/default); "
                   "go-live is a transaction there instead of the shared-directory test-and-set.")
@click.option("--listen", required=True, metavar="ADDR", help="ZeroMQ address to bind, e.g. tcp://0.0.0.0:7001.")
@click.option("--peer", metavar="ADDR", help="The other node's address (with --role).")
@click.option("--peer-name", default=None, help="The other node's name (default: B for A, A otherwise).")
@click.option("--observer", required=True, metavar="ADDR", help="The observer's address.")
@click.option("--shared-dir", required=True, type=click.Path(file_okay=False),
              help="Directory on storage both nodes share (the test-and-set lives here).")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="Where to write status.")
@click.option("--log", "log_path", required=True, type=click.Path(dir_okay=False), help="This node's log file.")
@click.option("--guest", type=click.Path(dir_okay=False), help="The guest ELF (primary only).")
@click.option("--disk", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The guest's disk image, on storage every node reaches (create it with `ftvm run --disk`).")
@click.option("--disk-reads", type=click.Choice(["log", "shared"]), default="log", show_default=True,
              help="Whether read data travels in the log or the backup reads the shared image.")
@click.option("--net", is_flag=True, help="The observer runs a network front end (`ftvm observe --listen-net`).")
@click.option("--key-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The run's channel key (same file on every node and the observer): messages without "
                   "its tag are refused.")
@click.option("--first-backup-wait-ms", type=click.IntRange(0), default=0, show_default=True,
              help="With --coordinator: the first view waits this long for a second node and names it "
                   "backup (as `ftvm viewservice --first-backup-wait-ms`); 0 starts the first node alone.")
@_ft_options
@operating_errors
def node(name, role, viewservice, coordinator, listen, peer, peer_name, observer, shared_dir, run_dir, log_path,
         guest, disk, disk_reads, net, key_file, first_backup_wait_ms, hb_interval_ms, fail_timeout_ms, max_lag_ms):
    """Run one node (used by `ftvm run`; start nodes by hand to put them on different
    machines). Either a fixed --role with its --peer, or --viewservice."""
    from logging_channel.messages import sender_name_ok

    from .ft.node import Node
    if not sender_name_ok(name):
        raise click.BadParameter(f"{name!r}: a node's name has 1 to 16 bytes (UTF-8, no NUL)", param_hint="--name")
    _use_key(key_file)
    os.makedirs(run_dir, exist_ok=True)
    if coordinator:
        if viewservice or role:
            raise click.UsageError("--coordinator replaces --viewservice and --role; give only one")
        _coordinator_ok(coordinator)
        from .ft.etcd import check_reachable
        check_reachable(coordinator)
        viewservice = coordinator
    if viewservice:
        from .ft.managed import ManagedNode
        if not guest:
            raise click.UsageError("--guest is needed with --viewservice (any node may have to start it)")
        n = ManagedNode(name, listen, observer, shared_dir, run_dir, log_path, guest, viewservice,
                        opts=_opts(hb_interval_ms, fail_timeout_ms, max_lag_ms), disk=disk, disk_reads=disk_reads,
                        net=net, first_backup_wait_ms=first_backup_wait_ms)
        sys.exit(n.run())
    if not role or not peer:
        raise click.UsageError("give --role and --peer, or --viewservice")
    if role == "primary" and not guest:
        raise click.UsageError("--guest is needed with --role primary")
    n = Node(name, role, listen, peer, observer, shared_dir, run_dir, log_path, guest=guest,
             opts=_opts(hb_interval_ms, fail_timeout_ms, max_lag_ms), peer_name=peer_name, disk=disk,
             disk_reads=disk_reads, net=net)
    sys.exit(n.run())


@main.command()
@click.option("--listen", required=True, metavar="ADDR", help="Address to bind for the nodes' messages.")
@click.option("--node", "nodes", multiple=True, required=True, metavar="NAME=ADDR",
              help="A node to follow (repeat for each).")
@click.option("--run-dir", type=click.Path(file_okay=False), default=".", show_default=True)
@click.option("--progress", is_flag=True)
@click.option("--listen-net", metavar="HOST:PORT", default=None,
              help="Also be the network front end here (start the nodes with --net).")
@click.option("--key-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The run's channel key (the nodes' --key-file).")
@operating_errors
def observe(listen, nodes, run_dir, progress, listen_net, key_file):
    """Attach to nodes started by hand (`ftvm node`): print the console, forward stdin."""
    from .ft.observer import Observer
    _use_key(key_file)
    addrs = {}
    for spec in nodes:
        if "=" not in spec:
            raise click.BadParameter(f"{spec!r}: use NAME=ADDR", param_hint="--node")
        k, v = spec.split("=", 1)
        addrs[k] = v
    obs = Observer(listen, addrs, run_dir, progress=progress, say=say, listen_net=listen_net)
    sys.exit(obs.run())


@main.command()
@click.option("--listen", required=True, metavar="ADDR", help="Address to bind, e.g. tcp://0.0.0.0:7000.")
@click.option("--ping-interval-ms", type=click.IntRange(5), default=50, show_default=True,
              help="How often nodes ping; a node is dead after --dead-pings missed intervals.")
@click.option("--dead-pings", type=click.IntRange(1), default=6, show_default=True)
@click.option("--state-file", type=click.Path(dir_okay=False), help="Keep the current view and its history here (JSON).")
@click.option("--first-backup-wait-ms", type=click.IntRange(0), default=0, show_default=True,
              help="Make the first view only once a second node pinged (or this long after the first): that "
                   "node is a backup from the guest's first instruction, so a primary that dies early is "
                   "replaced. 0: the first node starts alone. `ftvm run --nodes 3` uses 5000.")
@operating_errors
def viewservice(listen, ping_interval_ms, dead_pings, state_file, first_backup_wait_ms):
    """Run the view service: decides which node is primary and which is backup.

    It is a single point of failure (the classic primary/backup view service); nodes
    reach it through a small interface so that a replicated store can replace it.
    """
    from .ft.viewservice import serve
    serve(listen, ping_interval_ms, dead_pings, state_file=state_file, first_backup_wait_ms=first_backup_wait_ms)


@main.command()
@click.argument("which", type=click.Choice(["primary", "backup", "guest"]))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--signal", "signame", type=click.Choice(["TERM"]), default="TERM", show_default=True,
              help="With `guest`: the signal the guest program receives (the run's stop request reaches the "
                   "primary, which delivers SIGTERM).")
@operating_errors
def kill(which, run_dir, signame):
    """SIGKILL the node that is now primary (or backup) of the run in RUN_DIR; or, with
    `guest`, send the guest program a signal (a Linux program's handler runs, as for
    Ctrl-C: redis-server shuts down cleanly; a program without one is stopped and
    the log closed)."""
    import json as _json
    import signal as _signal

    if which == "guest":
        try:
            with open(os.path.join(run_dir, "run.json")) as f:
                pid = _json.load(f)["observer_pid"]
        except (OSError, ValueError, KeyError):
            raise FtvmError(f"{run_dir}: no run.json naming the run's observer (is this an `ftvm run` directory?)")
        # The observer passes the stop to the primary, which delivers SIGTERM to the guest.
        try:
            os.kill(pid, _signal.SIGTERM)
        except ProcessLookupError:
            raise FtvmError(f"the run in {run_dir} is over (observer pid {pid} is gone)") from None
        say(f"sent SIGTERM to the guest of the run in {run_dir}")
        return

    from .ft.observer import read_status
    live = [s for s in read_status(run_dir) if s["alive"]]
    if which == "primary":
        cands = sorted((s for s in live if s["role"] == "primary"), key=lambda s: -s["view"])
    else:
        cands = [s for s in live if s["role"] == "backup"]
    if not cands:
        raise FtvmError(f"no live {which} in {run_dir} (nodes: "
                        f"{', '.join(s['name'] + ':' + s['role'] for s in read_status(run_dir)) or 'none'})")
    s = cands[0]
    os.kill(s["pid"], _signal.SIGKILL)
    say(f"killed {which} {s['name']} (pid {s['pid']}, view {s['view']})")


@main.command()
@click.option("--run-dir", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Instead of the table, draw the run (its most complete log) into this .svg/.png file.")
@click.option("--coordinator", metavar="etcd://HOST:PORT[,...][/PREFIX]", default=None,
              help="Also show this etcd coordinator: members, leader, revision, views (default: the run's, "
                   "from its run.json, if it has one).")
@operating_errors
def status(run_dir, as_json, plot_path, coordinator):
    """Role, view, lag, log, held output, failovers and clock offset of each node."""
    import json as _json
    if plot_path:
        from .plot import plot_run_dir
        plot_run_dir(run_dir, plot_path, say=say)
        return

    from .ft.observer import read_status, transfer_cell
    _coordinator_ok(coordinator)
    sts = read_status(run_dir)
    if coordinator is None:
        try:
            with open(os.path.join(run_dir, "run.json")) as f:
                coordinator = _json.load(f).get("coordinator")
        except (OSError, ValueError):
            pass
    coord = None
    if coordinator:
        from .ft.etcd import describe
        coord = describe(coordinator)
    if as_json:
        click.echo(_json.dumps({"nodes": sts, "coordinator": coord} if coord else sts, indent=2))
        return
    from rich.console import Console as RichConsole
    from rich.table import Table
    t = Table(title=f"ftvm nodes in {run_dir}")
    for col in ("node", "pid", "alive", "role", "view", "lag ms", "log records", "log kbit/s", "held B",
                "failovers", "clock offset us", "garbage", "stale", "transfer", "net events", "disk w/r/err"):
        t.add_column(col, justify="right")
    for s in sts:
        d = s.get("disk")
        t.add_row(s["name"], str(s["pid"]), "yes" if s["alive"] else "no", s["role"], str(s["view"]),
                  "-" if s["lag_ms"] is None else f"{s['lag_ms']:.1f}", str(s["log_records"]),
                  f"{s.get('log_rate_kbps', 0):.0f}",
                  str(s["held_bytes"]), str(s["failovers"]), f"{s['clock_offset_us']:.0f}",
                  str(s["garbage"]), str(s["stale"]), transfer_cell(s), str(s.get("net_events", 0)),
                  f"{d['writes']}/{d['reads']}/{d['errors']}" if d else "-")
    import shutil
    con = RichConsole(width=max(150, shutil.get_terminal_size().columns))
    con.print(t)
    vs_file = os.path.join(run_dir, "viewservice.json")
    if os.path.exists(vs_file):
        with open(vs_file) as f:
            vs = _json.load(f)
        h = Table(title=f"view history (now: view {vs['view'][0]}, primary {vs['view'][1]}, backup {vs['view'][2] or '-'})")
        for col in ("view", "primary", "backup", "why", "ms after missed ping"):
            h.add_column(col)
        for e in vs["history"]:
            h.add_row(str(e["num"]), e["primary"] or "-", e["backup"] or "-", e["why"],
                      "" if e["after_missed_ping_ms"] is None else f"{e['after_missed_ping_ms']:.0f}")
        con.print(h)
    if coord:
        _print_coordinator(con, coord)


def _print_coordinator(con, coord):
    from rich.table import Table
    t = Table(title=f"coordinator: etcd, prefix {coord['prefix']}, revision {coord.get('revision') or '-'}"
                    + (f" ({coord['error']})" if coord.get("error") else ""))
    for col in ("member", "reachable", "leader", "revision", "raft term", "version"):
        t.add_column(col)
    for m in coord["members"]:
        t.add_row(m["endpoint"], "yes" if m["reachable"] else f"no ({m.get('error', '')})",
                  "leader" if m.get("is_leader") else "", str(m.get("revision", "")), str(m.get("raft_term", "")),
                  m.get("version") or "")
    con.print(t)
    v = coord.get("view")
    h = Table(title=f"views in etcd (now: view {v[0]}, primary {v[1]}, backup {v[2] or '-'})" if v else
              "views in etcd (none yet)")
    for col in ("view", "primary", "backup", "why", "decided by", "went live"):
        h.add_column(col)
    golive = coord.get("golive", {})
    for e in coord["history"]:
        h.add_row(str(e["num"]), e.get("primary") or "-", e.get("backup") or "-", e.get("why", ""),
                  e.get("by", ""), golive.get(e["num"], "") or "")
    con.print(h)


@main.command()
@click.option("--runs", type=click.IntRange(1), default=3, show_default=True,
              help="Runs of each measurement (interleaved; medians are reported).")
@click.option("--guest-dir", type=click.Path(file_okay=False), default=None,
              help="Where the built guests are (default: guest_programs/build in the checkout).")
@click.option("--only", type=click.Choice(["record", "ft", "views", "kv", "linux", "redis", "debug"]), default=None,
              help="Only the record/replay figures, the fault-tolerance figures, or the view-service ones.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.option("--counter", type=click.Choice(["inline", "hook"]), default=None,
              help="Block counter to measure (default: inline when built; same as FTVM_COUNTER).")
@operating_errors
def bench(runs, guest_dir, only, as_json, counter):
    """Measure recording, replay and fault tolerance against plain Unicorn, side by side.

    Record/replay: plain/record speed on the CPU-bound and the RDTSC-heavy guest,
    replay speed, bytes per RDTSC, peak memory. Fault tolerance: plain/`ftvm run`
    speed, what the Output Rule adds per output, failover outage, logging bandwidth.
    Plain is the stock Unicorn wheel; runs alternate and ratios are medians.
    """
    if counter is not None:
        os.environ["FTVM_COUNTER"] = counter     # this process and the nodes it starts
    from .bench import run_bench
    run_bench(runs, guest_dir, as_json, say, only)


if __name__ == "__main__":
    main()
