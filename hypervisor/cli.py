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
from .errors import EXIT_INTERRUPTED, EXIT_USAGE, FtvmError


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

    Exit statuses: the guest's own, or 2 bad usage/ELF, 3 damaged log, 4 truncated log,
    5 replay diverged, 6 guest stuck in HLT, 7 I/O error, 130 interrupted, 132 guest
    invalid instruction, 136 guest divide error, 139 guest memory fault.
    """


@main.command()
@click.argument("guest", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "log_path", type=click.Path(dir_okay=False),
              help="Log file to write. Default: GUEST's name with .ftlog, in the current directory.")
@click.option("--stack-size", type=SIZE, default="1M", show_default=True, help="Guest stack size (at least 1M).")
@click.option("--mem-limit", type=SIZE, default="1G", show_default=True,
              help="Refuse guests whose memory (segments + stack) exceeds this.")
@click.option("--digest-interval-ms", type=click.IntRange(0), default=250, show_default=True,
              help="Log a state digest every this many ms of guest time (0: only at the end).")
@click.option("--digest-every-events", type=click.IntRange(0), default=1000, show_default=True,
              help="... and every this many events (0: off).")
@click.option("-q", "--quiet", is_flag=True, help="No ftvm messages on stderr unless something goes wrong.")
@operating_errors
def record(guest, log_path, stack_size, mem_limit, digest_interval_ms, digest_every_events, quiet):
    """Run GUEST and record everything nondeterministic it sees into a log.

    The guest's console is on stdout. Bytes arriving on stdin reach the guest's input
    device as they arrive. ftvm exits with the guest's exit status. Ctrl-C stops the
    guest and closes the log properly (exit 130); the log still replays.
    """
    from .run import record_guest
    from .abi import STACK_SIZE_MIN
    if stack_size < STACK_SIZE_MIN:
        raise click.BadParameter(f"at least {STACK_SIZE_MIN >> 20}M", param_hint="--stack-size")
    if log_path is None:
        log_path = os.path.splitext(os.path.basename(guest))[0] + ".ftlog"
    status = record_guest(guest, log_path, stack_size=stack_size, mem_limit=mem_limit,
                          digest_interval_ms=digest_interval_ms, digest_every_events=digest_every_events,
                          say=(lambda m: None) if quiet else say)
    sys.exit(status)


def _parse_point(text):
    """'123456' -> ('blocks', 123456); '#12' or 'event:12' -> ('event', 12)."""
    t = text.strip()
    try:
        if t.startswith("#"):
            return "event", int(t[1:])
        if t.startswith("event:"):
            return "event", int(t[6:])
        if t.startswith("block:"):
            return "blocks", int(t[6:])
        return "blocks", int(t, 0)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use a block count (123456), or #N / event:N for the Nth event") from None


@main.command()
@click.argument("log", type=click.Path(dir_okay=False))
@click.option("--to", "to", metavar="POINT",
              help="Stop at an execution point and print the registers: a block count (e.g. 120000) "
                   "or #N / event:N to stop just before the Nth event.")
@click.option("-q", "--quiet", is_flag=True, help="No ftvm messages on stderr unless something goes wrong.")
@operating_errors
def replay(log, to, quiet):
    """Replay LOG: print the same console output and end with the same exit status.

    Exits 5 if the replay diverged from the recording, naming the execution point and
    what differs; 4 if the log was cut short (after replaying everything before the cut).
    """
    from .run import replay_log
    point = _parse_point(to) if to else None
    status = replay_log(log, point, say=(lambda m: None) if quiet else say)
    sys.exit(status)


@main.group()
def log():
    """Inspect logs: show records, print statistics."""


@log.command("show")
@click.argument("log_path", metavar="LOG", type=click.Path(dir_okay=False))
@click.option("-k", "--kind", "kinds", multiple=True,
              type=click.Choice(["header", "input", "irq", "tsc", "rng", "digest", "end"]),
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


@main.command()
@click.option("--runs", type=click.IntRange(1), default=3, show_default=True,
              help="Runs of each measurement; the best is reported.")
@click.option("--guest-dir", type=click.Path(file_okay=False), default=None,
              help="Where the built guests are (default: guest_programs/build in the checkout).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@operating_errors
def bench(runs, guest_dir, as_json):
    """Measure recording and replay against plain Unicorn, side by side."""
    from .bench import run_bench
    run_bench(runs, guest_dir, as_json, say)


if __name__ == "__main__":
    main()
