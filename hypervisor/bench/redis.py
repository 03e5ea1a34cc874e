"""`ftvm bench --only redis`: Debian's redis-server, unmodified, with redis-benchmark
(50 clients, SET and GET), natively, under qemu-user, under `ftvm record` and under
`ftvm run`; and the pause a connected client sees when the primary is killed.

Runs alternate within each round (native, qemu-user, record, run) and ratios are the
medians of the rounds' ratios: this machine's speed drifts 10-20% over minutes.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import time

from .kv import BenchError, _ftvm, client_pause, free_port, redis_benchmark, wait_ready

REDIS = "/usr/bin/redis-server"
REQUESTS = 20000


class RedisServer:
    """redis-server on a free port: mode native, qemu, record or run."""

    def __init__(self, mode, tmp, nodes=2):
        if not os.path.exists(REDIS):
            raise BenchError("redis-server is not installed (Debian: apt-get install redis-server; `make setup`)")
        self.mode = mode
        self.port = free_port()
        tmp = pathlib.Path(tmp)
        self.data = tmp / f"data-{mode}-{self.port}"
        self.data.mkdir(parents=True)
        self.run_dir = tmp / f"run-{self.port}"
        args = ["--port", str(self.port), "--appendonly", "yes", "--save", ""]
        if mode in ("native", "qemu"):
            cmd = [REDIS, *args, "--dir", str(self.data), "--bind", "127.0.0.1"]
            if mode == "qemu":
                cmd = [shutil.which("qemu-x86_64") or "qemu-x86_64"] + cmd
        else:
            common = ["--listen", f"127.0.0.1:{self.port}", "--data", f"{self.data}:/data"]
            if mode == "record":
                cmd = [*_ftvm(), "record", "-q", "-o", str(tmp / f"redis-{self.port}.ftlog"), *common]
            else:
                cmd = [*_ftvm(), "run", "--run-dir", str(self.run_dir), "--nodes", str(nodes), *common]
            cmd += ["--", REDIS, *args, "--dir", "/data"]
        self.err = open(tmp / f"redis-{mode}-{self.port}.stderr", "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.err)

    def __enter__(self):
        wait_ready(self.port, self.proc, timeout=120)
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()

    def primary_pid(self):
        import json
        st = json.loads((self.run_dir / "run.json").read_text())
        return st["pids"]["A"]


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else None


def run_redis_bench(runs, tmp, say, requests=REQUESTS):
    res = {mode: {"SET": [], "GET": []} for mode in ("native", "qemu", "record", "run")}
    lat = {"SET": [], "GET": []}
    for r in range(runs):
        for mode in ("native", "qemu", "record", "run"):
            say(f"redis: redis-benchmark -c 50 -n {requests} -t set,get, {mode} (round {r + 1} of {runs})")
            with RedisServer(mode, tmp) as srv:
                got = redis_benchmark(srv.port, requests=requests)
            for test in ("SET", "GET"):
                res[mode][test].append(got[test]["rps"])
                if mode == "run":
                    lat[test].append(got[test]["p99_ms"])
    pause = []
    for r in range(max(3, runs)):
        say(f"redis: pause a connected client sees at a primary kill ({r + 1})")
        with RedisServer("run", tmp) as srv:
            pid = srv.primary_pid()
            pause.append(client_pause(srv.port, lambda: os.kill(pid, signal.SIGKILL), duration=6.0) * 1000)
    return {"rps": res, "p99_ms": lat, "pause_ms": pause, "requests": requests}


def redis_rows(b):
    rows = []
    rps = b["rps"]
    for test in ("SET", "GET"):
        rounds = len(rps["record"][test])
        q = [rps["record"][test][i] / rps["qemu"][test][i] for i in range(rounds)]
        f = [rps["run"][test][i] / rps["record"][test][i] for i in range(rounds)]
        med = {m: _median(rps[m][test]) for m in rps}
        rows.append((f"redis {test}: record / qemu-user (rps, median of rounds)",
                     f"qemu {med['qemu']:.0f} (native {med['native']:.0f})", f"{med['record']:.0f}",
                     f"{_median(q):.2f}", ">= 0.25", _median(q) >= 0.25))
        rows.append((f"redis {test}: ftvm run / ftvm record", f"{med['record']:.0f}", f"{med['run']:.0f}",
                     f"{_median(f):.2f}", ">= 0.7", _median(f) >= 0.7))
        rows.append((f"redis {test}: p99 latency under ftvm run", "", f"{_median(b['p99_ms'][test]):.1f} ms", "",
                     "printed", None))
    p = sorted(b["pause_ms"])
    med = _median(p)
    rows.append(("pause a connected client sees at a primary kill", "", f"median {med:.0f} ms",
                 " ".join(f"{x:.0f}" for x in p), "<= 300 ms median", med <= 300))
    return rows


_ = time
