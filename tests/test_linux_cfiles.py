"""Data-directory files served in C inside the syscall hook (fastpath_files.c,
linux/cfiles.py): the log is the one the Python handlers write at stops, byte for byte,
and it replays either way; C really served the calls; the cases C leaves to Python (a
symbolic link, a "..", a read over its limit, a file C opened that Python took over at
a stop) come out the same."""
import hashlib
import os
import subprocess

from conftest import FTVM
from logging_channel import records as R
from logging_channel.logfile import LogReader, LogWriter

BUSYBOX = "/bin/busybox"
FILE_CALLS = (0, 3, 257)    # read, close, openat

ARGVS = {
    # relative and absolute paths, a link and a ".." (Python's)
    "md5sum": ["md5sum", "a/f00", "b/f01", "/data/a/f02", "link", "a/../b/f03", "big", "a/f04"],
    # fstat and writes to stdout between reads: Python takes C's file over at a stop,
    # C reads on, Python closes it
    "od": ["od", "-c", "a/f10"],
    # dup2 of C's file (its position back to Python), a read over C's limit
    "dd": ["dd", "if=big", "bs=2M", "count=1", "of=/dev/null"],
}
C_CALLS_MIN = {"md5sum": 6 * 4, "od": 5, "dd": 1}      # what C must have served


def make_data(tmp_path):
    data = tmp_path / "data"
    for d in ("a", "b"):
        (data / d).mkdir(parents=True)
    for i in range(12):
        body = hashlib.sha256(str(i).encode()).hexdigest().encode() * (40 * i + 1)
        (data / "ab"[i % 2] / f"f{i:02d}").write_bytes(body)
    (data / "big").write_bytes(bytes(range(256)) * 6000)    # 1.5 MiB
    os.symlink("a/f00", data / "link")
    return data


def record(monkeypatch, tmp_path, data, name, argv, inhook):
    """Records in this process; returns (log, stdout, the recorder)."""
    from hypervisor.console import Console
    from hypervisor.guest import open_guest
    from hypervisor.machine import Config
    from hypervisor.record import PlainOutput, Recorder
    monkeypatch.setenv("FTVM_INHOOK", "1" if inhook else "0")
    out = bytearray()
    guest = open_guest(BUSYBOX, argv, data=f"{data}:/data", cwd="/data")
    log = tmp_path / f"{name}.ftlog"
    writer = LogWriter(log)
    rec = Recorder.start(guest, writer, Config(), Console(out.extend), out=PlainOutput(out.extend))
    end = rec.run()
    writer.close()
    assert end.status == 0, end
    return log, bytes(out), rec


def syscall_frames(path):
    """The frames of openat, read and close (byte for byte), and of every other call
    its number, arguments and result (their host values differ from run to run: a
    file's access time in a stat, getrandom's bytes)."""
    blob = path.read_bytes()
    out = []
    with LogReader(path) as r:
        for _, off, rec in r:
            if rec.kind == R.SYSCALL:
                out.append(blob[off:off + len(R.encode(rec))] if rec.nr in FILE_CALLS else (rec.nr, rec.args, rec.ret))
    return out


def test_file_calls_in_c_log_what_the_python_handlers_log(tmp_path, monkeypatch):
    from hypervisor.linux import files as F
    from hypervisor.uc import ffi
    data = make_data(tmp_path)
    logs = {}
    for name, argv in ARGVS.items():
        fast, out_fast, rec = record(monkeypatch, tmp_path, data, name + "-c", argv, True)
        slow, out_slow, _ = record(monkeypatch, tmp_path, data, name + "-py", argv, False)
        native = subprocess.run([BUSYBOX, *[a.replace("/data", str(data)) for a in argv]], cwd=data,
                                capture_output=True, check=True)
        # (the guest's stderr joins its stdout; only dd writes there)
        assert out_fast == out_slow == (native.stdout + native.stderr).replace(str(data).encode(), b"/data")
        assert syscall_frames(fast) == syscall_frames(slow), name
        assert rec.m.cpu.sys_fast_calls >= C_CALLS_MIN[name], "C served openat, read and close"
        files = rec.m.kernel.files
        assert files.fds.mirror is None and rec.m.cpu.sys_fs == ffi.NULL, "the recorder let go of the mirror"
        assert all(not isinstance(f, F.DataFile) or f._cslot is None for f in files.fds.values())
        logs[name] = (fast, slow, out_fast)
    # A log made with C's calls replays with every call at a stop, and the other way round.
    fast, slow, out = logs["md5sum"]
    for log, env in ((fast, "0"), (slow, "1")):
        rep = subprocess.run([str(FTVM), "replay", str(log)], capture_output=True, timeout=120,
                             env=dict(os.environ, FTVM_INHOOK=env))
        assert rep.stdout == out and b"identical to the recording" in rep.stderr, rep.stderr
