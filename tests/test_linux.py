"""Unmodified Linux programs under ftvm, byte for byte (issue 10, "Real programs").

Every program is recorded and replayed through the real CLI: record == replay byte for
byte with the same exit status, and the output equals a native run of the same program
(lines starting with "nondet:" dropped: they differ from run to run by design). The
native runs get ftvm's fixed default environment, so that `hello`'s environment listing
compares too. Then a negative control (one changed recorded system-call result is a
divergence naming the call) and bad input (one clear line, a distinct exit status).

The guest's /tmp is a private in-memory file system: inputs come from tests/linux_data
(under the real root) and writable host directories are passed with --data.
"""
import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, log_records, run_ftvm
from logging_channel import records as R

sys.path.insert(0, str(ROOT / "tests" / "linux_data"))
import busybox_cases  # noqa: E402

from hypervisor.linux.spec import DEFAULT_ENV  # noqa: E402
from hypervisor.linux.sysnames import NAMES  # noqa: E402

LINUX = ROOT / "guest_programs" / "build" / "linux"
DATA = ROOT / "tests" / "linux_data"
VARIANTS = ("static", "dyn", "spie", "musl")
NATIVE_ENV = dict(e.split("=", 1) for e in DEFAULT_ENV)
BUSYBOX = "/bin/busybox"
BASH = "/bin/bash-static"
PYTHON = "/usr/bin/python3"
SYS = {name: nr for nr, name in NAMES.items()}


PROGRAMS = ("hello", "files", "timerand", "mmapper", "stdin_cat", "unsupported")


@pytest.fixture(scope="session")
def progs():
    """Builds the programs these tests run (only those: a program being written elsewhere
    in guest_programs/linux must not stop them); a variant that cannot be built (no
    musl-gcc) is skipped by ``prog``."""
    targets = [f"../build/linux/{n}.{v}" for n in PROGRAMS for v in VARIANTS]
    subprocess.run(["make", "-s", "-k", "-C", str(ROOT / "guest_programs" / "linux"), *targets],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return LINUX


def prog(progs, name, variant):
    p = progs / f"{name}.{variant}"
    if not p.exists():
        pytest.skip(f"{p.name} not built (musl-gcc missing?)")
    return p


def native(argv, stdin=b"", env=None, cwd=None):
    """A native run: (exit status, stdout and stderr together, as the guest console has them)."""
    env = NATIVE_ENV if env is None else env
    if "/" not in str(argv[0]):
        argv = [shutil.which(argv[0], path=env["PATH"])] + list(argv[1:])
    p = subprocess.run([str(a) for a in argv], input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       env=env, timeout=60, cwd=cwd)
    return p.returncode, p.stdout


def det(out: bytes) -> bytes:
    """The output without its nondet: lines."""
    return b"".join(line for line in out.splitlines(keepends=True) if not line.startswith(b"nondet:"))


def record_replay(tmp_path, *args, input=b"", name="run", notes=False):
    """ftvm record then ftvm replay; checks record == replay and returns the record run.
    Unless ``notes``, the program must not have met an unsupported system call."""
    log = tmp_path / f"{name}.ftlog"
    rec = run_ftvm("record", "-o", log, *args, input=input)
    assert "Traceback" not in rec.stderr, rec.stderr
    assert "guest exited with status" in rec.stderr, rec.stderr
    if not notes:
        assert "not supported" not in rec.stderr and "unsupported" not in rec.stderr, rec.stderr
    rep = run_ftvm("replay", log)
    assert "Traceback" not in rep.stderr, rep.stderr
    assert rep.returncode == rec.returncode, rep.stderr
    assert rep.stdout == rec.stdout
    assert "identical to the recording" in rep.stderr, rep.stderr
    rec.log = log
    return rec


def tree(d):
    """{relative path: sha256} of every file under d."""
    out = {}
    for base, _dirs, files in os.walk(d):
        for f in files:
            p = os.path.join(base, f)
            if os.path.islink(p):
                out[os.path.relpath(p, d)] = "-> " + os.readlink(p)
                continue
            with open(p, "rb") as fh:
                out[os.path.relpath(p, d)] = hashlib.sha256(fh.read()).hexdigest()
    return out


# --- 1. the C test programs, four ways each ---------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_hello(progs, tmp_path, variant):
    p = prog(progs, "hello", variant)
    args = [p, "one", "two words", ""]
    rec = record_replay(tmp_path, "--", *args)
    assert rec.returncode == 3
    assert native(args) == (3, rec.stdout)


@pytest.mark.parametrize("variant", VARIANTS)
def test_hello_env_option_adds_and_overrides(progs, tmp_path, variant):
    p = prog(progs, "hello", variant)
    rec = record_replay(tmp_path, "--env", "FTVM_TEST=yes", "--env", "TERM=xterm", "--", p)
    env = dict(NATIVE_ENV)
    del env["TERM"]
    env.update(FTVM_TEST="yes", TERM="xterm")
    assert native([p], env=env) == (3, rec.stdout)
    assert b"env FTVM_TEST=yes\n" in rec.stdout and b"env TERM=dumb" not in rec.stdout


@pytest.mark.parametrize("where", ["data", "tmp"])
@pytest.mark.parametrize("name,status", [("files", 4), ("mmapper", 6)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_files_and_mmapper(progs, tmp_path, variant, name, status, where):
    p = prog(progs, name, variant)
    d = tmp_path / "d"
    d.mkdir()
    (d / "keep.txt").write_bytes(b"already here\n")
    if where == "data":
        rec = record_replay(tmp_path, "--data", f"{d}:/data", "--", p, "/data")
    else:
        rec = record_replay(tmp_path, "--", p, "/tmp")
    assert rec.returncode == status, rec.stdout
    assert b"FAILED" not in rec.stdout
    nd = tmp_path / "native"
    nd.mkdir()
    (nd / "keep.txt").write_bytes(b"already here\n")
    assert native([p, nd]) == (status, rec.stdout)
    # The program cleans up after itself: the data directory is as it was.
    assert tree(d) == tree(nd) == {"keep.txt": hashlib.sha256(b"already here\n").hexdigest()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_timerand(progs, tmp_path, variant):
    p = prog(progs, "timerand", variant)
    rec = record_replay(tmp_path, "--", p)
    assert rec.returncode == 5
    assert b"nondet: random hash" in rec.stdout
    status, out = native([p])
    assert status == 5 and det(out) == det(rec.stdout)
    assert b"FAILED" not in rec.stdout and b": no\n" not in rec.stdout


def test_timerand_randomness_differs_between_recordings(progs, tmp_path, timerand_run):
    a = timerand_run
    b = record_replay(tmp_path, "--", prog(progs, "timerand", "static"), name="b")
    hashes = [[line for line in r.stdout.splitlines() if line.startswith(b"nondet: random hash")] for r in (a, b)]
    assert hashes[0] != hashes[1], "getrandom and /dev/urandom come from the host at record time"


def test_calls_run_in_the_hook_log_what_a_stop_logs(progs, tmp_path, timerand_run):
    """Clock reads recorded in C write the frames the Python handlers would (byte for
    byte), and a log recorded with calls run inside the syscall hook replays with every
    call run at a stop instead (FTVM_INHOOK=0), and the other way round."""
    import os
    import subprocess
    from conftest import FTVM
    from logging_channel.logfile import LogReader
    data = timerand_run.log.read_bytes()
    clocks = 0
    with LogReader(timerand_run.log) as r:
        for _, off, rec in r:
            if rec.kind == R.SYSCALL and rec.nr in (SYS["gettimeofday"], SYS["clock_gettime"], SYS["time"]):
                clocks += 1
                frame = R.encode(rec)
                assert data[off:off + len(frame)] == frame, rec
    assert clocks >= 3
    stop_env = dict(os.environ, FTVM_INHOOK="0")
    rep = subprocess.run([str(FTVM), "replay", str(timerand_run.log)], capture_output=True, env=stop_env, timeout=120)
    assert rep.stdout == timerand_run.stdout and b"identical to the recording" in rep.stderr, rep.stderr
    log = tmp_path / "stops.ftlog"
    p = prog(progs, "timerand", "static")
    rec = subprocess.run([str(FTVM), "record", "-o", str(log), "--", str(p)], capture_output=True, env=stop_env,
                         timeout=120)
    rep = run_ftvm("replay", log)
    assert rep.stdout == rec.stdout and "identical to the recording" in rep.stderr, rep.stderr


@pytest.mark.parametrize("field", ["pc", "nr"])
def test_a_clock_read_replayed_in_c_still_diverges_on_a_mismatch(progs, tmp_path, timerand_run, field):
    """A log whose clock-read record does not match the call the guest makes (another
    pc, another call) is a divergence naming the call, though such reads are replayed
    in C."""
    import dataclasses
    from logging_channel.logfile import LogWriter
    recs = log_records(timerand_run.log)
    i = next(i for i, r in enumerate(recs) if r.kind == R.SYSCALL and r.nr == SYS["clock_gettime"])
    r = recs[i]
    recs[i] = dataclasses.replace(r, pc=r.pc + 1) if field == "pc" else dataclasses.replace(r, nr=SYS["gettimeofday"])
    bad = tmp_path / "bad.ftlog"
    w = LogWriter(bad)
    for rec in recs:
        w.append(rec)
    w.close()
    rep = run_ftvm("replay", bad)
    assert rep.returncode == 5, rep.stderr
    assert "clock_gettime" in rep.stderr and "Traceback" not in rep.stderr, rep.stderr


STDIN = b"".join(b"line %d: the quick brown fox jumps over the lazy dog\n" % i for i in range(400)) + b"\xc3\xa9 no newline"


@pytest.mark.parametrize("variant", VARIANTS)
def test_stdin_cat(progs, tmp_path, variant):
    p = prog(progs, "stdin_cat", variant)
    rec = record_replay(tmp_path, "--", p, input=STDIN)
    assert rec.returncode == 7
    assert native([p], stdin=STDIN) == (7, rec.stdout)
    assert rec.stdout.startswith(STDIN[:100].upper())


@pytest.mark.parametrize("variant", VARIANTS)
def test_stdin_cat_empty_input(progs, tmp_path, variant):
    p = prog(progs, "stdin_cat", variant)
    rec = record_replay(tmp_path, "--", p, input=b"")
    assert native([p], stdin=b"") == (7, rec.stdout)


# --- 2. Debian's busybox-static and bash-static -----------------------------------------

BB_CASES = busybox_cases.cases(str(DATA))


@pytest.mark.parametrize("argv,stdin", BB_CASES, ids=[f"{i:02d}-{c[0][0]}" for i, c in enumerate(BB_CASES)])
def test_busybox_applet(tmp_path, argv, stdin):
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static not installed")
    data = open(stdin, "rb").read() if stdin else b""
    rec = record_replay(tmp_path, "--env", "LC_ALL=C", "--", BUSYBOX, *argv, input=data)
    status, out = busybox_cases.run_native(argv, stdin)
    assert (rec.returncode, rec.stdout) == (status, out)
    assert out, "every case prints something"


# More applets, for what the personality adds: device files, stat, exit statuses of
# failing commands, gzip (which stores the input's mtime), symlink-free path resolution.
BB_EXTRA = [
    ["od", "-A", "d", "-t", "x1", "-N", "16", "/dev/zero"],
    ["wc", "-c", "/dev/null"],
    ["sha1sum", "/dev/null"],
    ["stat", "-c", "%s %n %F %a", "{data}/text.txt", "{data}/tree"],
    ["test", "-d", "{data}/tree"],
    ["test", "-f", "{data}/no-such-file"],
    ["cat", "{data}/no-such-file"],
    ["cmp", "{data}/text.txt", "{data}/words.txt"],
    ["diff", "{data}/tree/alpha.txt", "{data}/tree/beta.txt"],
    ["gzip", "-c", "{data}/text.txt"],
    ["readlink", "-f", "{data}/../linux_data/./tree/alpha.txt"],
    ["du", "-s", "{data}/tree"],
    ["readlink", "/proc/self/exe"],
    ["realpath", "{data}/tree/../tree/./alpha.txt"],
]


@pytest.mark.parametrize("argv", BB_EXTRA, ids=[f"{i:02d}-{a[0]}" for i, a in enumerate(BB_EXTRA)])
def test_busybox_more(tmp_path, argv):
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static not installed")
    argv = [a.replace("{data}", str(DATA)) for a in argv]
    rec = record_replay(tmp_path, "--env", "LC_ALL=C", "--", BUSYBOX, *argv)
    assert (rec.returncode, rec.stdout) == native([BUSYBOX] + argv, env={"LC_ALL": "C"})


def test_cwd_and_path_lookup(tmp_path):
    """--cwd sets the working directory; a bare program name is found in the root's PATH
    and is argv[0] as given, as a shell would run it."""
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static not installed")
    rec = record_replay(tmp_path, "--cwd", DATA, "--", "busybox", "md5sum", "text.txt", "tree/alpha.txt", name="md5")
    assert (rec.returncode, rec.stdout) == native(["busybox", "md5sum", "text.txt", "tree/alpha.txt"], cwd=DATA)
    rec = record_replay(tmp_path, "--cwd", DATA / "tree", "--", "busybox", "pwd", name="pwd")
    assert rec.stdout == f"{DATA / 'tree'}\n".encode()


def test_busybox_writes_to_the_data_directory(tmp_path):
    """Several runs over one data directory (at a guest path of our choosing): each
    run's writes are there for the next, and the result equals the same commands run
    natively."""
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static not installed")
    d, nd = tmp_path / "d", tmp_path / "native"
    nd.mkdir()
    steps = [["mkdir", "-p", "{d}/a/b"], ["cp", str(DATA / "text.txt"), "{d}/a/b/t.txt"],
             ["cp", "-r", str(DATA / "tree"), "{d}/tree"], ["mv", "{d}/tree/beta.txt", "{d}/a/beta.txt"],
             ["rm", "{d}/tree/gamma.log"], ["rmdir", "{d}/a/b"], ["rm", "-r", "{d}/a/b"],
             ["sed", "-i", "s/e/E/g", "{d}/a/beta.txt"],
             ["touch", "-d", "2020-01-02 03:04:05", "{d}/a/beta.txt"],
             ["chmod", "600", "{d}/a/b/../beta.txt"], ["chmod", "640", "{d}/tree/../a/beta.txt/../beta.txt"],
             ["ln", "-s", "beta.txt", "{d}/a/link"], ["ln", "{d}/a/beta.txt", "{d}/a/hard"],
             ["stat", "-c", "%Y %a %h %s %N", "{d}/a/beta.txt"], ["stat", "-c", "%h %s %N", "{d}/a/link"],
             ["rm", "{d}/a/beta.txt"],
             ["tar", "-cf", "{d}/x.tar", "-C", str(DATA), "tree"], ["mkdir", "{d}/ex"],
             ["tar", "-xvf", "{d}/x.tar", "-C", "{d}/ex"], ["rm", "-r", "{d}/ex", "{d}/x.tar"],
             ["ls", "-1", "{d}", "{d}/a", "{d}/tree"], ["cat", "{d}/a/hard"]]
    for i, step in enumerate(steps):
        rec = record_replay(tmp_path, "--data", f"{d}:/srv/state", "--", BUSYBOX,
                            *[a.replace("{d}", "/srv/state") for a in step], name=f"s{i}")
        status, out = native([BUSYBOX] + [a.replace("{d}", str(nd)) for a in step])
        assert (rec.returncode, rec.stdout.replace(b"/srv/state", b"D")) == (status, out.replace(str(nd).encode(), b"D")), step
    assert tree(d) == tree(nd) and sorted(tree(d)) == ["a/hard", "a/link", "tree/alpha.txt", "tree/notes.md"]


def test_bash_script(tmp_path):
    if not os.path.exists(BASH):
        pytest.skip("bash-static not installed")
    args = [BASH, DATA / "script.sh", DATA / "data.csv"]
    rec = record_replay(tmp_path, "--", *args)
    assert rec.returncode == 0
    assert b"nondet: unseeded RANDOM" in rec.stdout and rec.stdout.endswith(b"done\n")
    status, out = native(args)
    assert status == 0 and det(out) == det(rec.stdout)


# --- 3. the system's python3 with a data directory ---------------------------------------

@pytest.fixture(scope="module")
def py_run(tmp_path_factory):
    t = tmp_path_factory.mktemp("py")
    d = t / "d"
    rec = record_replay(t, "--data", f"{d}:/data", "--", PYTHON, DATA / "data_script.py", "/data")
    return t, d, rec


def test_python3_data_script(py_run):
    t, d, rec = py_run
    assert rec.returncode == 0, rec.stdout
    assert b"json round trip equal: True" in rec.stdout and b"nondet: time" in rec.stdout
    nd = t / "native"
    nd.mkdir()
    status, out = native([PYTHON, DATA / "data_script.py", nd])
    assert status == 0 and det(out) == det(rec.stdout)
    files = tree(d)
    assert sorted(files) == ["pydata/blob-renamed.bin", "pydata/notes.txt", "pydata/record.json"]
    assert files == tree(nd)


def test_python3_replay_does_not_touch_the_data_directory(py_run):
    t, d, rec = py_run
    before = tree(d)
    (d / "pydata" / "notes.txt").write_bytes(b"changed after the recording\n")
    (d / "pydata" / "extra").write_bytes(b"x")
    rep = run_ftvm("replay", rec.log)
    assert rep.returncode == 0 and rep.stdout == rec.stdout, rep.stderr
    assert (d / "pydata" / "notes.txt").read_bytes() == b"changed after the recording\n"
    assert (d / "pydata" / "extra").exists(), "replay takes the data directory's answers from the log"
    assert before["pydata/notes.txt"] != tree(d)["pydata/notes.txt"]


SQLITE_SCRIPT = """
import hashlib, os, shutil, sqlite3, sys
d = sys.argv[1]
for path in ("/tmp/ftvm-test.db", d + "/t.db"):
    c = sqlite3.connect(path)
    c.execute("create table t(a integer primary key, b text)")
    c.executemany("insert into t(b) values (?)", [(str(i) * 20,) for i in range(800)])
    c.commit()
    c.execute("delete from t where a % 3 = 0")
    c.commit()
    c.execute("vacuum")
    print(c.execute("select count(*), sum(length(b)) from t").fetchone())
    c.close()
    os.unlink(path) if path == "/tmp/ftvm-test.db" else None
shutil.copytree(sys.argv[2], d + "/tree")
shutil.copy2(d + "/tree/alpha.txt", d + "/alpha-copy.txt")
for base, dirs, files in sorted(os.walk(d)):
    for f in sorted(files):
        print(os.path.relpath(os.path.join(base, f), d), os.stat(os.path.join(base, f)).st_size)
"""


def test_python3_sqlite_and_copytree(tmp_path):
    """sqlite3 (pwrite, fsync, locks, a journal) on /tmp and the data directory, and
    shutil.copytree/copy2 (which list extended attributes and copy times): the files
    are byte for byte those of a native run."""
    d, nd = tmp_path / "d", tmp_path / "native"
    nd.mkdir()
    rec = record_replay(tmp_path, "--data", f"{d}:/data", "--", PYTHON, "-c", SQLITE_SCRIPT, "/data", DATA / "tree")
    assert rec.returncode == 0, rec.stdout
    assert native([PYTHON, "-c", SQLITE_SCRIPT, nd, DATA / "tree"]) == (0, rec.stdout)
    assert tree(d) == tree(nd) and "t.db" in tree(d)
    # copy2 kept the modification time, as natively.
    assert os.stat(d / "alpha-copy.txt").st_mtime_ns == os.stat(DATA / "tree" / "alpha.txt").st_mtime_ns


# --- 4. negative control: one changed system-call result ----------------------------------

def rewrite(path, out, fn):
    """Re-encode every record of ``path`` into ``out``, passing each through ``fn``."""
    data = path.read_bytes()
    blob = bytearray(R.FILE_MAGIC)
    for rec in log_records(path):
        if rec.kind == R.HEADER:
            blob += data[len(R.FILE_MAGIC): len(R.FILE_MAGIC) + R.FRAME.size + R.FRAME.unpack_from(data, 8)[2]]
        else:
            blob += R.encode(fn(rec))
    out.write_bytes(bytes(blob))


def change_one(log, out, name, change, which=0):
    """Apply ``change`` to the ``which``-th SYSCALL record of system call ``name``;
    returns that record (unchanged)."""
    calls = [r for r in log_records(log) if r.kind == R.SYSCALL and r.nr == SYS[name]]
    target = calls[which]
    rewrite(log, out, lambda r: change(r) if r is target or r == target else r)
    return target


def assert_divergence_names(p, call, target):
    assert p.returncode == 5, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert "replay diverged at" in line and call in line, line
    assert f"block {target.blocks} " in line, f"the divergence is at the changed call's point: {line}"
    return line


@pytest.fixture(scope="module")
def timerand_run(progs, tmp_path_factory):
    """One recording of timerand.static (replayed once) for the negative controls."""
    t = tmp_path_factory.mktemp("timerand")
    return record_replay(t, "--", prog(progs, "timerand", "static"))


def test_changed_getrandom_result_is_a_divergence_at_that_call(timerand_run, tmp_path):
    rec = timerand_run
    bad = tmp_path / "bad.ftlog"
    # The host answered 16 random bytes; the doctored log says it gave 15.
    target = change_one(rec.log, bad, "getrandom",
                        lambda r: R.Syscall(r.blocks, r.pc, r.nr, r.args, r.ret, [r.values[0][:15]], r.strings),
                        which=-1)
    assert target.args[1] == 16
    assert_divergence_names(run_ftvm("replay", bad), "getrandom", target)


def test_changed_clock_gettime_return_is_a_divergence_at_that_call(timerand_run, tmp_path):
    rec = timerand_run
    bad = tmp_path / "bad.ftlog"
    target = change_one(rec.log, bad, "clock_gettime",
                        lambda r: R.Syscall(r.blocks, r.pc, r.nr, r.args, 2**64 - 22, r.values, r.strings))
    line = assert_divergence_names(run_ftvm("replay", bad), "clock_gettime", target)
    assert "EINVAL" in line, line


def test_changed_read_data_is_a_divergence(tmp_path):
    """A read of a data-directory file that returned other bytes (same length): the
    program prints other output; replay must not pass it off as identical."""
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static not installed")
    d = tmp_path / "d"
    d.mkdir()
    (d / "in.txt").write_bytes(b"abc\n")
    rec = record_replay(tmp_path, "--data", f"{d}:/data", "--digest-every-events", "1", "--",
                        BUSYBOX, "cat", "/data/in.txt")
    assert rec.stdout == b"abc\n"
    bad = tmp_path / "bad.ftlog"

    def change(r):
        return R.Syscall(r.blocks, r.pc, r.nr, r.args, r.ret, [b"abd\n"], r.strings)
    # busybox cat reads the file with sendfile: the bytes it read are that call's value.
    target = change_one(rec.log, bad, "sendfile", change)
    assert target.values == [b"abc\n"], target
    p = run_ftvm("replay", bad)
    assert p.returncode == 5, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert "replay diverged at" in line, line


def test_changed_clock_value_is_a_divergence(timerand_run, tmp_path):
    """A clock read that answered another time: the value itself cannot be checked at the
    call (replay has nothing to compare it with), but what the program does with it is."""
    rec = timerand_run
    bad = tmp_path / "bad.ftlog"
    change_one(rec.log, bad, "clock_gettime",
               lambda r: R.Syscall(r.blocks, r.pc, r.nr, r.args, r.ret, [r.values[0] + 10**9], r.strings), which=-1)
    p = run_ftvm("replay", bad)
    assert p.returncode == 5, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    assert "replay diverged at" in p.stderr.strip().splitlines()[-1]


def test_untouched_rewrite_replays(timerand_run, tmp_path):
    """The control of the control: re-encoding alone changes nothing."""
    rec = timerand_run
    same = tmp_path / "same.ftlog"
    rewrite(rec.log, same, lambda r: r)
    rep = run_ftvm("replay", same)
    assert rep.returncode == 5 and rep.stdout == rec.stdout, rep.stderr
    assert "identical to the recording" in rep.stderr


# --- 5. bad input ---------------------------------------------------------------------------

def one_error_line(p):
    assert "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, p.stderr
    return errors[0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_unsupported_system_call_gets_enosys_and_one_note(progs, tmp_path, variant):
    p = prog(progs, "unsupported", variant)
    rec = record_replay(tmp_path, "--", p, notes=True)
    assert rec.returncode == 0
    assert rec.stdout == b"io_uring_setup: -1 ENOSYS\nnfsservctl: -1 ENOSYS\nstill running\n"
    notes = [line for line in rec.stderr.splitlines() if "unsupported system call" in line]
    assert len(notes) == 2, rec.stderr
    assert "io_uring_setup" in notes[0] and "nfsservctl" in notes[1]
    assert all("ENOSYS" in n for n in notes)
    # The call is in the log, and replay does not note it again.
    calls = [r for r in log_records(rec.log) if r.kind == R.SYSCALL and r.nr == SYS["io_uring_setup"]]
    assert len(calls) == 1 and calls[0].ret == 2**64 - 38
    rep = run_ftvm("replay", rec.log)
    assert "unsupported system call" not in rep.stderr


def test_refused_calls_are_noted_once_each(tmp_path):
    """fork and execve fail with ENOSYS (one process per run); the program carries on,
    and each refused call is named once however often it is tried."""
    code = ("import os\n"
            "for i in range(3):\n"
            "    try: os.fork()\n"
            "    except OSError as e: print('fork', e.errno)\n"
            "for i in range(2):\n"
            "    try: os.execv('/bin/true', ['true'])\n"
            "    except OSError as e: print('execve', e.errno)\n"
            "print('still here')\n")
    rec = record_replay(tmp_path, "--", PYTHON, "-c", code, notes=True)
    assert rec.returncode == 0
    assert rec.stdout == b"fork 38\n" * 3 + b"execve 38\n" * 2 + b"still here\n"
    notes = [line for line in rec.stderr.splitlines() if "not supported" in line or "unsupported" in line]
    assert len(notes) == 2, rec.stderr
    assert ("clone" in notes[0] or "fork" in notes[0]) and notes[1].startswith("ftvm: execve "), notes
    assert all("ENOSYS" in n for n in notes)


def make_root(tmp_path, files):
    root = tmp_path / "root"
    for guest, host in files.items():
        dst = root / guest.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(host, dst)
    return root


def test_missing_interpreter(progs, tmp_path):
    root = make_root(tmp_path, {"/hello.dyn": prog(progs, "hello", "dyn")})
    p = run_ftvm("record", "-o", tmp_path / "m.ftlog", "--root", root, "--", "/hello.dyn")
    line = one_error_line(p)
    assert p.returncode == 2, p.stderr
    assert "/lib64/ld-linux-x86-64.so.2" in line and "interpreter" in line, line
    assert p.stdout == b""


@pytest.mark.parametrize("program,what", [("/nonexistent/prog", "No such file"),
                                          ("no-such-program-anywhere", "not found"),
                                          (str(DATA / "text.txt"), "not an ELF"),
                                          (str(DATA / "script.sh"), "")])
def test_not_a_program(tmp_path, program, what):
    p = run_ftvm("record", "-o", tmp_path / "x.ftlog", "--", program)
    line = one_error_line(p)
    assert p.returncode == 2, p.stderr
    assert program in line and what in line, line
    assert p.stdout == b""


def test_root_without_the_libraries(progs, tmp_path):
    """The loader is there, libc is not: the loader itself says so and exits 127, as it
    does natively in such a root."""
    loader = "/lib64/ld-linux-x86-64.so.2"
    root = make_root(tmp_path, {"/hello.dyn": prog(progs, "hello", "dyn"), loader: os.path.realpath(loader)})
    rec = record_replay(tmp_path, "--root", root, "--", "/hello.dyn")
    assert rec.returncode == 127
    msg = b"/hello.dyn: error while loading shared libraries: libc.so.6: cannot open shared object file: " \
          b"No such file or directory\n"
    assert rec.stdout == msg
    assert "Traceback" not in rec.stderr
    chroot = shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if os.geteuid() == 0 and chroot:
        assert native([chroot, root, "/hello.dyn"]) == (127, msg)


def test_root_file_changed_between_record_and_replay(tmp_path):
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static not installed")
    root = make_root(tmp_path, {"/bin/busybox": BUSYBOX})
    (root / "etc").mkdir()
    (root / "etc" / "motd").write_bytes(b"original contents\n")
    rec = record_replay(tmp_path, "--root", root, "--", "/bin/busybox", "cat", "/etc/motd")
    assert rec.returncode == 0 and rec.stdout == b"original contents\n"
    (root / "etc" / "motd").write_bytes(b"changed contents!\n")     # same size
    p = run_ftvm("replay", rec.log)
    line = one_error_line(p)
    assert p.returncode == 10, p.stderr
    assert "/etc/motd" in line, line
    assert b"changed" not in p.stdout, "refused before the guest sees a wrong byte"


def test_root_library_changed_between_record_and_replay(progs, tmp_path):
    """libc on the replaying host differs from the recording's (an upgrade): refused with
    the path before the program runs on it."""
    loader, libc = "/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6"
    root = make_root(tmp_path, {"/hello.dyn": prog(progs, "hello", "dyn"), loader: os.path.realpath(loader),
                                libc: os.path.realpath(libc)})
    rec = record_replay(tmp_path, "--root", root, "--", "/hello.dyn")
    assert rec.returncode == 3 and rec.stdout.startswith(b"hello from a Linux program\n")
    with open(root / libc.lstrip("/"), "ab") as f:
        f.write(b"\0")
    p = run_ftvm("replay", rec.log)
    line = one_error_line(p)
    assert p.returncode == 10, p.stderr
    assert libc in line, line
    assert p.stdout == b""


def test_root_program_changed_between_record_and_replay(progs, tmp_path):
    root = make_root(tmp_path, {"/hello": prog(progs, "hello", "static")})
    rec = record_replay(tmp_path, "--root", root, "--", "/hello")
    assert rec.returncode == 3
    shutil.copy(prog(progs, "hello", "musl"), root / "hello")
    p = run_ftvm("replay", rec.log)
    line = one_error_line(p)
    assert p.returncode == 10, p.stderr
    assert "/hello" in line, line
    assert p.stdout == b""



def test_epoll_interest_keeps_its_order_through_a_state_transfer(progs):
    """epoll_wait reports ready files in registration order, so the state a new backup
    restores must keep that order (sorted by fd, a backup read another connection first
    and diverged after a state transfer under redis-server)."""
    from hypervisor.console import Console
    from hypervisor.guest import open_guest
    from hypervisor.linux import net as N
    from hypervisor.linux import state as S
    from hypervisor.machine import Config
    from hypervisor.snapshot import _ctx_bytes, _ctx_from

    def kernel():
        g = open_guest(str(prog(progs, "hello", "static")))
        return g.machine(Config(), "record", Console()).kernel
    k = kernel()
    ep, a, b = N.Epoll(0), N.EventFd(0, 0), N.EventFd(0, 0)
    epfd, fa, fb = k.files.install(ep), k.files.install(a), k.files.install(b)
    ep.interest[fb] = [b, N.EPOLLIN, 2, None]       # registered first, the higher fd
    ep.interest[fa] = [a, N.EPOLLIN, 1, None]
    st = S.capture(k, _ctx_bytes)
    k2 = kernel()
    S.restore(k2, st, lambda data: _ctx_from(k2.m.vcpu.uc, data))
    assert list(k2.files.get(epfd).interest) == [fb, fa]
