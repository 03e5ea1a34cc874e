"""Operating errors and the exit statuses they map to.

Assertions are for bugs in ftvm; these exceptions are for the world (a bad ELF, a
damaged log, a guest that faults). The CLI turns each into one line on stderr and the
exit status below, never a traceback. Guest exit statuses (0-255) are the guest's own,
so a guest can in principle exit with a number that also names an error here; ftvm's
message on stderr tells the two apart.
"""

EXIT_USAGE = 2            # bad command line or malformed guest ELF
EXIT_LOG_DAMAGED = 3      # a log record failed its checks
EXIT_LOG_TRUNCATED = 4    # the log ends before its end record
EXIT_DIVERGED = 5         # replay did not reproduce the recording
EXIT_GUEST_STUCK = 6      # the guest halted and no interrupt can ever wake it
EXIT_IO = 7               # ftvm could not read or write a file (disk full, ...)
EXIT_COORDINATOR = 11     # the coordinator (etcd) is unreachable, or is not an etcd ftvm can use
EXIT_INTERRUPTED = 130    # SIGINT/SIGTERM: stopped on request, log closed
EXIT_GUEST_ILLEGAL = 132  # guest executed an invalid instruction (as SIGILL would give)
EXIT_GUEST_SEGV = 139     # guest touched unmapped or protected memory (as SIGSEGV would give)


class FtvmError(Exception):
    """Base of every operating error; ``exit_status`` is what the CLI exits with."""

    exit_status = 1


class BadElf(FtvmError):
    """The guest file is not a static x86-64 ELF executable ftvm can load.

    Raised by the loader before any guest code runs, with what is wrong and where."""

    exit_status = EXIT_USAGE


class LogDamaged(FtvmError):
    """A log record failed a check (checksum, version, framing, content).

    Carries the record index and byte offset; nothing after it is trusted."""

    exit_status = EXIT_LOG_DAMAGED

    def __init__(self, path, index, offset, reason):
        self.path, self.index, self.offset, self.reason = path, index, offset, reason
        super().__init__(f"{path}: record {index} at byte {offset}: {reason}")


class LogTruncated(FtvmError):
    """The log stops in the middle of a record or before its end record.

    Unlike LogDamaged, everything before the cut is whole and usable: a recorder that
    was killed leaves exactly this."""

    exit_status = EXIT_LOG_TRUNCATED

    def __init__(self, path, index, offset, reason):
        self.path, self.index, self.offset, self.reason = path, index, offset, reason
        super().__init__(f"{path}: cut short at record {index} (byte {offset}): {reason}")


class Divergence(FtvmError):
    """Replay did not reproduce the recorded run at some execution point."""

    exit_status = EXIT_DIVERGED

    def __init__(self, point, what):
        self.point, self.what = point, what
        super().__init__(f"replay diverged at {point}: {what}")


class GuestStuck(FtvmError):
    """The guest executed HLT but no interrupt can ever arrive."""

    exit_status = EXIT_GUEST_STUCK


class IoFailure(FtvmError):
    """A file ftvm needs could not be read or written (missing, disk full, ...)."""

    exit_status = EXIT_IO


class CoordinatorFailed(FtvmError):
    """The coordinator given by --coordinator (an etcd cluster) cannot be used: no
    endpoint answers, it is not etcd, or the run's prefix holds values ftvm did not
    write. Raised at start, before a node takes any role; once a run is going, an
    unreachable etcd only delays view changes (see docs/views.md)."""

    exit_status = EXIT_COORDINATOR
