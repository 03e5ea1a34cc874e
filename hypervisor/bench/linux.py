"""`ftvm bench --only linux`: Linux programs under ftvm against native runs and
Debian's qemu-user, in one run.

Every figure is a whole-process wall time, median of ``runs`` interleaved rounds
(this machine's speed drifts 10-20% over minutes): in each round the native run,
qemu-x86_64, `ftvm record`, the same engine and loader with no logging, and
`ftvm replay` run one after the other. The busybox workload (native, qemu-user,
record) runs BB_REPEAT times a round.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time

from ..errors import FtvmError

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "linux_data"
PY = "/usr/bin/python3"
BUSYBOX = "/bin/busybox"
QEMU = shutil.which("qemu-x86_64")
FTVM = [sys.executable, "-m", "hypervisor.cli"]
# The busybox runs take well under a second: each round runs them this many times
# (interleaved), so that their medians stand on more runs than the python3 ones.
BB_REPEAT = 3


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def timed(cmd, cwd=None, env=None):
    """(wall seconds, stdout, peak RSS of the process in KiB, from GNU time)."""
    import tempfile
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as f:
        t = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", f.name] + list(map(str, cmd)), cwd=cwd, env=env,
                           capture_output=True)
        dt = time.perf_counter() - t
        rss = int((f.read().strip().splitlines() or ["0"])[-1] or 0)
    if p.returncode != 0:
        raise FtvmError(f"bench: {' '.join(map(str, cmd))} failed ({p.returncode}): "
                        f"{p.stderr.decode(errors='replace').strip()[-300:]}")
    return dt, p.stdout, rss


def nolog_main(argv):
    """The same engine and loader with no logging: record into a sink that keeps
    nothing (no encoding, no file). ``python -m hypervisor.bench.linux nolog PROG ARGS``."""
    from ..console import Console, fd_sink
    from ..guest import open_guest
    from ..machine import Config
    from ..record import PlainOutput, Recorder

    class NullSink:
        records = 0

        def append(self, rec):
            self.records += 1

    guest = open_guest(argv[0], argv[1:])
    console = Console(fd_sink(1))
    rec = Recorder.start(guest, NullSink(), Config(), console, out=PlainOutput(fd_sink(1)), stdin_fd=None)
    end = rec.run()
    return end.status


def run_linux_bench(runs, tmp, say, scale="0.5"):
    tmp = pathlib.Path(tmp)
    if QEMU is None:
        raise FtvmError("bench: qemu-x86_64 is missing (Debian's qemu-user; `make setup` installs it)")
    script = [PY, str(DATA / "cpu_bench.py"), scale]
    res = {"native": [], "qemu": [], "record": [], "nolog": [], "replay": [], "rss_native": [], "rss_ftvm": [],
           "pass_wall": [], "pass_log": 0, "bb_native": [], "bb_qemu": [], "bb_record": []}
    log = tmp / "cpu.ftlog"
    data = tmp / "data"
    sys.path.insert(0, str(DATA))
    import busybox_bench
    tree = busybox_bench.make_tree(str(data), 3000)
    rel = [os.path.relpath(f, data) for f in busybox_bench.files(tree)]
    for i in range(runs):
        say(f"bench linux: round {i + 1}/{runs}: python3 CPU-bound (native, qemu-user, record, no log, replay)")
        t, out_n, rss_n = timed(script)
        res["native"].append(t)
        res["rss_native"].append(rss_n)
        t, out_q, _ = timed([QEMU] + script)
        res["qemu"].append(t)
        t, out_r, rss_f = timed(FTVM + ["record", "-q", "-o", str(log), "--"] + script)
        res["record"].append(t)
        res["rss_ftvm"].append(rss_f)
        t, out_0, _ = timed([sys.executable, "-m", "hypervisor.bench.linux", "nolog"] + script)
        res["nolog"].append(t)
        t, out_p, _ = timed(FTVM + ["replay", "-q", str(log)])
        res["replay"].append(t)
        if not (out_n == out_q == out_r == out_0 == out_p):
            raise FtvmError("bench linux: the CPU-bound script printed different results")
        say(f"bench linux: round {i + 1}/{runs}: python3 -c pass, busybox md5sum over {len(rel)} files")
        t, _, _ = timed(FTVM + ["record", "-q", "-o", str(tmp / "pass.ftlog"), "--", PY, "-c", "pass"])
        res["pass_wall"].append(t)
        res["pass_log"] = (tmp / "pass.ftlog").stat().st_size
        for _ in range(BB_REPEAT):
            t, out_bn, _ = timed([BUSYBOX, "md5sum"] + rel, cwd=data)
            res["bb_native"].append(t)
            t, out_bq, _ = timed([QEMU, BUSYBOX, "md5sum"] + rel, cwd=data)
            res["bb_qemu"].append(t)
            t, out_br, _ = timed(FTVM + ["record", "-q", "-o", str(tmp / "bb.ftlog"), "--data", f"{data}:/data",
                                         "--cwd", "/data", "--", BUSYBOX, "md5sum"] + rel)
            res["bb_record"].append(t)
            if not (out_bn == out_bq == out_br):
                raise FtvmError("bench linux: busybox md5sum printed different results")
    m = {k: median(v) for k, v in res.items() if isinstance(v, list)}
    m["pass_log"] = res["pass_log"]
    m["runs"] = res
    return m


def linux_rows(r):
    def s(x):
        return f"{x:.2f} s"
    rss_extra = (r["rss_ftvm"] - r["rss_native"]) / 1024
    return [
        ("python3 CPU-bound: record / qemu-user", f"qemu {s(r['qemu'])} (native {s(r['native'])})",
         s(r["record"]), f"{r['record'] / r['qemu']:.2f}", "<= 2.5", r["record"] / r["qemu"] <= 2.5),
        ("same: record / engine with no logging", s(r["nolog"]), s(r["record"]),
         f"{r['record'] / r['nolog']:.3f}", "<= 1.1", r["record"] / r["nolog"] <= 1.1),
        ("same: replay / record", s(r["record"]), s(r["replay"]), f"{r['replay'] / r['record']:.3f}",
         "<= 1 (no slower)", r["replay"] <= r["record"] * 1.02),
        ("python3 -c pass under record: wall", "", s(r["pass_wall"]), "", "<= 1.5 s", r["pass_wall"] <= 1.5),
        ("python3 -c pass: log size", "", f"{r['pass_log'] / 1024:.0f} KiB", "", "<= 256 KiB",
         r["pass_log"] <= 256 * 1024),
        ("busybox md5sum, 3000 files: record / qemu-user", f"qemu {s(r['bb_qemu'])} (native {s(r['bb_native'])})",
         s(r["bb_record"]), f"{r['bb_record'] / r['bb_qemu']:.2f}", "<= 3", r["bb_record"] / r["bb_qemu"] <= 3),
        ("ftvm process memory (peak RSS)", f"guest natively {r['rss_native'] / 1024:.0f} MiB",
         f"{r['rss_ftvm'] / 1024:.0f} MiB", f"+{rss_extra:.0f} MiB", "<= guest + 150 MiB", rss_extra <= 150),
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["nolog"]:
        sys.exit(nolog_main(sys.argv[2:]))
