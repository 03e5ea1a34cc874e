"""`ftvm log show --kind syscall`, `ftvm log stats` and `ftvm replay --to sys:N` on logs
of Linux programs (issue 10, "Inspection")."""
import dataclasses
import json
import re

import pytest

from conftest import GUESTS, ROOT, run_ftvm

BUSYBOX = "/bin/busybox"
WORDS = "tests/linux_data/words.txt"          # relative to ROOT, the guest's working directory
WORDS_SIZE = (ROOT / WORDS).stat().st_size


def _record(tmp_path_factory, name, *program, data=None, status=0):
    log = tmp_path_factory.mktemp("lv") / f"{name}.ftlog"
    extra = ["--data", f"{data}:/data"] if data else []
    p = run_ftvm("record", "-q", "-o", log, *extra, "--", *program, cwd=ROOT)
    assert p.returncode == status, p.stderr
    return log, p.stdout


@pytest.fixture(scope="module")
def cat_log(tmp_path_factory):
    log, out = _record(tmp_path_factory, "cat", BUSYBOX, "cat", WORDS)
    assert out == (ROOT / WORDS).read_bytes()
    return log


@pytest.fixture(scope="module")
def head_log(tmp_path_factory):
    """busybox head reads /data/words.txt (data directory: the bytes read are in the log) and writes."""
    log, out = _record(tmp_path_factory, "head", BUSYBOX, "head", "-n", "2", "/data/words.txt",
                       data=ROOT / "tests" / "linux_data")
    assert out == b"".join((ROOT / WORDS).read_bytes().splitlines(keepends=True)[:2])
    return log, out


def _show(log, *args):
    p = run_ftvm("log", "show", log, *args)
    assert p.returncode == 0, p.stderr
    return p.stdout.decode()


def _syscall_records(log):
    from logging_channel import records as R
    from logging_channel.logfile import LogReader
    with LogReader(log) as reader:
        return [rec for _i, _o, rec in reader if rec.kind == R.SYSCALL]


def test_show_syscalls_like_strace(cat_log):
    text = _show(cat_log, "--kind", "syscall")
    lines = text.splitlines()
    recs = _syscall_records(cat_log)
    assert len(lines) == len(recs)
    # The call's index in the run, from 0, and its execution point.
    for n, (line, rec) in enumerate(zip(lines, recs)):
        assert f"  #{n} " in line
        assert f"block {rec.blocks:>12} pc {rec.pc:#x}" in line
        assert " syscall " in line
    assert f'openat(AT_FDCWD, "{WORDS}", O_RDONLY) = 3' in text
    assert f"sendfile(1, 3, NULL, 16777216) = {WORDS_SIZE}" in text
    assert "close(3) = 0" in text
    # Errors by name, flags and constants decoded.
    assert re.search(r'newfstatat\(AT_FDCWD, "/etc/busybox.conf", 0x[0-9a-f]+, 0\) = -1 ENOENT '
                     r'\(No such file or directory\)', text)
    assert "arch_prctl(ARCH_SET_FS, 0x" in text
    assert "prlimit64(0, RLIMIT_STACK, NULL, 0x" in text
    assert re.search(r'getrandom\(".*", 8, GRND_NONBLOCK\) = 8', text)
    assert "brk(0) = 0x" in text
    # The program on this host gives the PC a place.
    assert "<busybox+0x" in text


def test_show_reads_show_data_and_writes_their_size(head_log):
    log, out = head_log
    text = _show(log, "--kind", "syscall")
    assert 'openat(AT_FDCWD, "/data/words.txt", O_RDONLY) = 3' in text
    # The data directory's bytes are in the log: the first 32 shown, then "..."
    first = (ROOT / WORDS).read_bytes()[:32].decode().replace("\n", "\\n")
    assert f'read(3, "{first}"..., 4096) = {WORDS_SIZE}' in text
    assert re.search(rf"write\(1, 0x[0-9a-f]+, {len(out)}\) = {len(out)}", text)
    assert re.search(r"newfstatat\(3, \"\", \{st_mode=S_IFREG\|0644, st_size=%d, \.\.\.\}, AT_EMPTY_PATH\) = 0"
                     % WORDS_SIZE, text)


def test_show_all_kinds_on_a_linux_log(cat_log):
    text = _show(cat_log)
    first = text.splitlines()[0]
    assert "header Linux program /bin/busybox" in first and f"cat {WORDS}" in first
    assert " input " in text and " end " in text and "syscall" in text
    assert "[xor ebp, ebp]" in text           # the instruction at the entry point, from the root's program


def test_show_json(cat_log):
    rows = [json.loads(line) for line in _show(cat_log, "--kind", "syscall", "--json").splitlines()]
    recs = _syscall_records(cat_log)
    assert [r["syscall_index"] for r in rows] == list(range(len(recs)))
    for r, rec in zip(rows, recs):
        assert r["kind"] == "syscall"
        assert (r["blocks"], r["pc"], r["nr"], r["raw_args"], r["ret"]) == (rec.blocks, rec.pc, rec.nr,
                                                                           list(rec.args), rec.ret)
        assert r["point"] == f"block {rec.blocks} pc {rec.pc:#x}"
        assert r["insn"] == "syscall"
    op = next(r for r in rows if r["name"] == "openat" and r["strings"])
    assert op["args"] == ["AT_FDCWD", f'"{WORDS}"', "O_RDONLY"]
    assert op["result"] == 3 and op["errno"] is None
    assert op["text"] == f'openat(AT_FDCWD, "{WORDS}", O_RDONLY) = 3'
    err = next(r for r in rows if r["errno"])
    assert err["result"] < 0 and err["errno"].startswith("E")
    sf = [r for r in rows if r["name"] == "sendfile"]
    assert sum(r["bytes_out"] for r in sf) == WORDS_SIZE
    rnd = next(r for r in rows if r["name"] == "getrandom")
    assert rnd["bytes_in"] == 8 and rnd["data"].startswith('"')
    # --limit and the block filter still apply.
    assert len(_show(cat_log, "--kind", "syscall", "-n", "3").splitlines()) == 3
    mid = recs[len(recs) // 2].blocks
    some = [json.loads(line) for line in _show(cat_log, "-k", "syscall", "--json", "--from-block", mid).splitlines()]
    assert some and all(r["blocks"] >= mid for r in some)
    assert some[0]["syscall_index"] == next(i for i, rec in enumerate(recs) if rec.blocks >= mid)


def test_stats_per_system_call(cat_log, head_log):
    for log in (cat_log, head_log[0]):
        p = run_ftvm("log", "stats", log, "--json")
        assert p.returncode == 0, p.stderr
        st = json.loads(p.stdout)
        rows = [json.loads(line) for line in _show(log, "--kind", "syscall", "--json").splitlines()]
        counts = {}
        for r in rows:
            c = counts.setdefault(r["name"], {"calls": 0, "errors": 0, "bytes_in": 0, "bytes_out": 0})
            c["calls"] += 1
            c["errors"] += r["errno"] is not None
            c["bytes_in"] += r["bytes_in"]
            c["bytes_out"] += r["bytes_out"]
        assert {n: {k: v for k, v in c.items() if k != "log_bytes"} for n, c in st["syscalls"].items()} == counts
        assert st["syscall_totals"]["calls"] == len(rows) == st["kinds"]["syscall"]["records"]
        assert st["syscall_totals"]["log_bytes"] == st["kinds"]["syscall"]["bytes"]
        assert st["guest_read_time"] is False
    st = json.loads(run_ftvm("log", "stats", cat_log, "--json").stdout)
    assert st["syscalls"]["sendfile"]["bytes_out"] == WORDS_SIZE
    assert st["syscalls"]["openat"] == {"calls": 1, "errors": 0, "bytes_in": 0, "bytes_out": 0,
                                        "log_bytes": st["syscalls"]["openat"]["log_bytes"]}
    st = json.loads(run_ftvm("log", "stats", head_log[0], "--json").stdout)
    assert st["syscalls"]["read"]["bytes_in"] == WORDS_SIZE
    assert st["syscalls"]["write"]["bytes_out"] == len(head_log[1])

    text = run_ftvm("log", "stats", cat_log).stdout.decode()
    assert "system calls" in text and "bytes in" in text and "log bytes" in text
    assert re.search(r"sendfile\s*│\s*2\s*│\s*0\s*│\s*0\s*│\s*%d\s*│" % WORDS_SIZE, text)
    assert "guest time: not read" in text and "guest time: 0.000 ms" not in text


def test_replay_to_a_system_call(cat_log):
    recs = _syscall_records(cat_log)
    n = next(i for i, rec in enumerate(recs) if rec.nr == 257 and rec.strings)      # openat of words.txt
    p = run_ftvm("replay", cat_log, "--to", f"sys:{n}")
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert out.startswith("")                  # nothing printed by cat yet: it has not opened the file
    assert "apple" not in out
    assert f"stopped before system call #{n}" in out
    assert f"block {recs[n].blocks}" in out
    assert f'pending: system call #{n} at block {recs[n].blocks} pc {recs[n].pc:#x}: ' \
           f'openat(AT_FDCWD, "{WORDS}", O_RDONLY)' in out
    assert f'the recording: openat(AT_FDCWD, "{WORDS}", O_RDONLY) = 3' in out
    rax = re.search(r"│ rax\s*│\s*(0x[0-9a-f]+)", out)
    assert rax and int(rax.group(1), 16) == 257
    rip = re.search(r"│ rip\s*│\s*(0x[0-9a-f]+)", out)
    assert rip and int(rip.group(1), 16) == recs[n].pc + 2

    # The call after the file is read: the output is out, and sys:0 stops at once.
    p = run_ftvm("replay", cat_log, "--to", f"sys:{n + 2}")
    assert p.returncode == 0 and p.stdout.startswith((ROOT / WORDS).read_bytes())
    p = run_ftvm("replay", cat_log, "--to", "syscall:0")
    assert p.returncode == 0 and "pending: system call #0 " in p.stdout.decode() and "brk(0)" in p.stdout.decode()

    # The exit call has no SYSCALL record but is call #len(recs).
    p = run_ftvm("replay", cat_log, "--to", f"sys:{len(recs)}")
    assert p.returncode == 0
    assert f"pending: system call #{len(recs)} " in p.stdout.decode() and "exit_group(0)" in p.stdout.decode()
    # Past the end: replays to the end and says so.
    p = run_ftvm("replay", cat_log, "--to", f"sys:{len(recs) + 5}")
    assert p.returncode == 0 and f"no system call #{len(recs) + 5}" in p.stderr
    assert "identical to the recording" in p.stderr


def test_replay_to_a_system_call_bad_input(cat_log, guests, tmp_path):
    p = run_ftvm("replay", cat_log, "--to", "sys:x")
    assert p.returncode == 2 and "sys:N" in p.stderr and "Traceback" not in p.stderr
    p = run_ftvm("replay", cat_log, "--to", "sys:-1")
    assert p.returncode == 2
    log = tmp_path / "hello.ftlog"
    assert run_ftvm("record", "-q", guests / "hello.elf", "-o", log).returncode == 0
    p = run_ftvm("replay", log, "--to", "sys:0")
    assert p.returncode == 2 and "ftvm-ABI guest" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_symbols_without_the_program_do_not_crash(cat_log):
    from hypervisor.logview import Symbols
    from logging_channel.logfile import LogReader
    with LogReader(cat_log) as reader:
        header = next(iter(reader))[2]
    recs = _syscall_records(cat_log)
    syms = Symbols(header)
    assert syms.symbol(recs[0].pc).startswith("<busybox+") and syms.insn(recs[0].pc) == "syscall"
    for program, sha in (("/no/such/program", ""), ("/bin/busybox", "0" * 64)):
        linux = dict(header.config["linux"], program=program, program_sha256=sha)
        h = dataclasses.replace(header, config=dict(header.config, linux=linux))
        syms = Symbols(h)
        for rec in recs:
            syms.observe(rec)
        assert syms.symbol(recs[0].pc) == "" and syms.insn(recs[0].pc) == ""
    h = dataclasses.replace(header, config=dict(header.config, linux={}))
    assert Symbols(h).symbol(0x401000) == ""


def test_dynamic_program_symbols_in_libraries(tmp_path_factory):
    prog = GUESTS / "linux" / "hello.dyn"
    if not prog.exists():
        pytest.skip("guest_programs/build/linux/hello.dyn is not built")
    log, _out = _record(tmp_path_factory, "hellodyn", prog.relative_to(ROOT), status=3)   # hello exits 3
    text = _show(log, "--kind", "syscall")
    assert "<ld-linux-x86-64.so.2" in text                    # the interpreter, placed as the loader places it
    assert re.search(r"<libc\.so\.6!write\+0x[0-9a-f]+>  #\d+ write\(1, 0x[0-9a-f]+, \d+\) = \d+", text)
    assert re.search(r'openat\(AT_FDCWD, "/[^"]*libc\.so\.6", O_RDONLY\|O_CLOEXEC\) = 3', text)
    assert re.search(r"mmap\(NULL, \d+, PROT_READ, MAP_PRIVATE\|MAP_DENYWRITE, 3, 0\) = 0x7", text)


def test_decoders():
    from hypervisor.linux import decode
    from hypervisor.linux.sysnames import NUMBERS as N
    d = decode.describe
    assert d(N["clock_gettime"], (1, 0x7ffc0), 0) == "clock_gettime(CLOCK_MONOTONIC, 0x7ffc0) = 0"
    assert d(N["fcntl"], (3, 2, 1), 0) == "fcntl(3, F_SETFD, FD_CLOEXEC) = 0"
    assert d(N["fcntl"], (3, 3, 0), 0o100002) == "fcntl(3, F_GETFL) = 0x8002 (flags O_RDWR|O_LARGEFILE)"
    assert d(N["fcntl"], (0, 1030, 10), 10) == "fcntl(0, F_DUPFD_CLOEXEC, 10) = 10"
    assert d(N["ioctl"], (1, 0x5401, 0x7ff0), 2**64 - 25) == \
        "ioctl(1, TCGETS, 0x7ff0) = -1 ENOTTY (Inappropriate ioctl for device)"
    assert d(N["ioctl"], (0, 0x5413, 0x10), None) == "ioctl(0, TIOCGWINSZ, 0x10)"
    assert d(N["ioctl"], (0, 0x5421, 0x10), 0).startswith("ioctl(0, FIONBIO,")
    assert d(N["ioctl"], (0, 0x5451, 0), 0).startswith("ioctl(0, FIOCLEX,")
    assert d(N["lseek"], (3, 2**64 - 10, 2), 90) == "lseek(3, -10, SEEK_END) = 90"
    assert d(N["rt_sigaction"], (13, 0x10, 0, 8), 0) == "rt_sigaction(SIGPIPE, 0x10, NULL, 8) = 0"
    assert d(N["rt_sigprocmask"], (2, 0x10, 0, 8), 0) == "rt_sigprocmask(SIG_SETMASK, 0x10, NULL, 8) = 0"
    assert d(N["kill"], (100, 34), 0) == "kill(100, SIGRT_2) = 0"
    assert d(N["openat"], (2**32 - 100, 0x10, 0o1101, 0o644), 4, ((1, "out.txt"),)) == \
        'openat(AT_FDCWD, "out.txt", O_WRONLY|O_CREAT|O_TRUNC, 0644) = 4'
    assert d(N["mmap"], (0, 4096, 3, 0x22, 2**64 - 1, 0), 0x7ffff7ff0000) == \
        "mmap(NULL, 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7ffff7ff0000"
    assert d(N["read"], (0, 0x1000, 100), 6, (), [b"hello\n"]) == 'read(0, "hello\\n", 100) = 6'
    assert d(N["read"], (0, 0x1000, 100), 40, (), [b"x" * 40]) == f'read(0, "{"x" * 32}"..., 100) = 40'
    assert d(N["read"], (9, 0x1000, 100), 2**64 - 9) == "read(9, 0x1000, 100) = -1 EBADF (Bad file descriptor)"
    assert d(N["futex"], (0x10, 0x81, 1, 0, 0, 0), 0).startswith("futex(0x10, FUTEX_WAKE_PRIVATE, 1,")
    assert d(N["access"], (0x10, 0), 0, ((0, "/x\n\"y"),)) == 'access("/x\\n\\"y", F_OK) = 0'
    assert decode.quote(b"\x00\xff\t") == '"\\x00\\xff\\t"'
    assert decode.bytes_moved(N["write"], 5) == (0, 5) and decode.bytes_moved(N["read"], 7) == (7, 0)
    assert decode.bytes_moved(N["read"], 2**64 - 2) == (0, 0)
