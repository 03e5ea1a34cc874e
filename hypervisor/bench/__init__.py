"""`ftvm bench`: recording and replay measured against plain Unicorn, in one run.

Plain means the same guest on the stock Unicorn wheel (not the patched build ftvm
counts blocks with) with no block counting, no RDTSC hook and no log: only the console
and exit ports are hooked, because the guest cannot run without them. It runs in a
child process that loads the stock library (see ``plain_run_stock``).

This machine's speed drifts 10-20% over minutes, so plain, record and replay runs
alternate and each ratio is the median of the per-run ratios.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from logging_channel import records as R
from logging_channel.logfile import LogReader, LogWriter

from .. import abi, counter, elf_loader
from ..console import Console
from ..errors import FtvmError
from ..machine import Config
from ..record import Recorder
from ..replay import Replayer
from ..uc import UC, X86, unicorn
from ..vcpu import _uc_perms

ROOT = pathlib.Path(__file__).resolve().parents[2]


def plain_run(image, stack_size=abi.STACK_SIZE_DEFAULT):
    """Run the guest on bare Unicorn. Returns (seconds, console bytes, exit status)."""
    uc = unicorn.Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
    for start, size, flags in image.pages():
        uc.mem_map(start, size, _uc_perms(flags))
    uc.mem_map(abi.STACK_TOP - stack_size, stack_size, UC.UC_PROT_READ | UC.UC_PROT_WRITE)
    for seg in image.segments:
        uc.mem_write(seg.vaddr, seg.data)
    uc.reg_write(X86.UC_X86_REG_RSP, abi.STACK_TOP - 8)
    out = bytearray()
    status = []

    def on_out(uc, port, size, value, user):
        if port == abi.PORT_CONSOLE:
            out.append(value & 0xFF)
        elif port == abi.PORT_EXIT:
            status.append(value & 0xFF)
            uc.emu_stop()

    uc.hook_add(UC.UC_HOOK_INSN, on_out, None, 1, 0, X86.UC_X86_INS_OUT)
    t = time.perf_counter()
    uc.emu_start(image.entry, (1 << 64) - 1)
    return time.perf_counter() - t, bytes(out), status[0] if status else None


def plain_run_stock(path):
    """plain_run of the guest at ``path`` on the stock Unicorn wheel, in a child process
    (one process cannot hold two libunicorn.so.2). Returns (seconds, console bytes, exit
    status, what ran it). Without a stock library at hand (the patched build failed, so
    the loaded one is stock already, or setup could not fetch it) it runs here."""
    stock = counter.build_info().get("stock_lib")
    if not stock or not pathlib.Path(stock).is_file() or not counter.inline_available():
        _, image = elf_loader.load_file(path)
        t, out, status = plain_run(image)
        return t, out, status, "loaded Unicorn" if counter.inline_available() else "stock Unicorn"
    env = dict(os.environ, LIBUNICORN_PATH=str(pathlib.Path(stock).parent))
    p = subprocess.run([sys.executable, "-m", "hypervisor.bench.plain", str(path)], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, cwd=str(ROOT))
    if p.returncode != 0:
        raise FtvmError(f"bench: plain run of {path.name} on the stock Unicorn failed: "
                        f"{p.stderr.decode().strip()[-300:]}")
    r = json.loads(p.stdout)
    if r["inline"]:
        raise FtvmError(f"bench: LIBUNICORN_PATH={env['LIBUNICORN_PATH']} did not load the stock Unicorn")
    return r["seconds"], bytes.fromhex(r["out"]), r["status"], "stock Unicorn"


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def record_run(data, image, name, log_path):
    out = bytearray()
    writer = LogWriter(log_path)
    rec = Recorder.new(data, image, name, writer, Config(), Console(out.extend))
    t = time.perf_counter()
    end = rec.run()
    elapsed = time.perf_counter() - t
    writer.close()
    return elapsed, bytes(out), end


def replay_run(log_path):
    out = bytearray()
    rp = Replayer(log_path, Console(out.extend))
    t = time.perf_counter()
    res = rp.run()
    return time.perf_counter() - t, bytes(out), res


def peak_rss_of_record(guest, log_path):
    """Peak RSS (bytes) of a real `ftvm record` process, read from its VmHWM while it
    runs (getrusage would count the pages it shared with this process before exec)."""
    ftvm = pathlib.Path(sys.executable).parent / "ftvm"
    cmd = [str(ftvm)] if ftvm.exists() else [sys.executable, "-m", "hypervisor.cli"]
    p = subprocess.Popen(cmd + ["record", "-q", str(guest), "-o", str(log_path)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(0.01)
    if p.returncode != 0:
        raise FtvmError(f"bench: ftvm record failed: {p.stderr.read().decode().strip()}")
    return peak


def tsc_count(log_path):
    n = size = 0
    with LogReader(log_path) as r:
        for _, _, rec in r:
            if rec.kind == R.TSC:
                n += rec.count
                size += len(R.encode(rec))
    return n, size


def ft_run(guest, tmp, tag, kill_after=None, nodes=2):
    """One `ftvm run` as a user would start it; returns (observer summary, node status, log path)."""
    run_dir = pathlib.Path(tmp) / f"ft-{tag}"
    log = pathlib.Path(tmp) / f"ft-{tag}.ftlog"
    ftvm = pathlib.Path(sys.executable).parent / "ftvm"
    cmd = [str(ftvm) if ftvm.exists() else sys.executable, *([] if ftvm.exists() else ["-m", "hypervisor.cli"]),
           "run", str(guest), "--run-dir", str(run_dir), "--log", str(log)]
    if kill_after is not None:
        cmd += ["--kill-primary-after", str(kill_after)]
    if nodes != 2:
        cmd += ["--nodes", str(nodes)]
    t = time.perf_counter()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise FtvmError(f"bench: ftvm run {guest.name} failed: {p.stderr.decode().strip()[-300:]}")
    summary = json.loads((run_dir / "observer.json").read_text())
    summary["wall_s"] = wall
    nodes = {}
    for name in "ABCD":
        try:
            nodes[name] = json.loads((run_dir / f"{name}.status.json").read_text())
        except (OSError, ValueError):
            pass
    try:
        summary["viewservice"] = json.loads((run_dir / "viewservice.json").read_text())
    except (OSError, ValueError):
        summary["viewservice"] = None
    return summary, nodes, log


def run_views_bench(runs, gdir, tmp, say):
    """Time to restore redundancy after a primary kill (until the new backup has the
    state), by guest memory size; view-change time after a missed ping. The primary is
    killed once a backup is up to date (before that no failover is possible)."""
    res = {"restore_s": {}, "view_change_ms": []}
    ftvm = pathlib.Path(sys.executable).parent / "ftvm"
    for mb in (16, 64, 256):
        say(f"bench: restore redundancy, {mb} MiB guest (3 nodes, kill the primary once a backup is ready)")
        vals = []
        for i in range(runs if mb < 256 else 1):
            run_dir = pathlib.Path(tmp) / f"v{mb}-{i}"
            p = subprocess.Popen([str(ftvm), "run", str(gdir / f"bigmem{mb}.elf"), "--nodes", "3", "--run-dir",
                                  str(run_dir)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)

            def st(n):
                try:
                    return json.loads((run_dir / f"{n}.status.json").read_text())
                except (OSError, ValueError):
                    return {}
            deadline = time.monotonic() + 120
            killed = None
            while time.monotonic() < deadline and p.poll() is None:
                nodes = {n: st(n) for n in "ABC"}
                if any(s.get("role") == "backup" and s.get("ready") for s in nodes.values()):
                    prim = [s for s in nodes.values() if s.get("role") == "primary"]
                    if prim:
                        killed = time.time()
                        os.kill(prim[0]["pid"], 9)
                        break
                time.sleep(0.02)
            p.communicate(timeout=300)
            nodes = {n: st(n) for n in "ABC"}
            after = sorted(t for s in nodes.values() for t in s.get("protected_unix") or [] if killed and t > killed)
            if after:
                vals.append(after[0] - killed)
            try:
                vs = json.loads((run_dir / "viewservice.json").read_text())
            except (OSError, ValueError):
                vs = {}
            for e in vs.get("history", []):
                if e["why"].startswith("primary") and e["after_missed_ping_ms"] is not None:
                    res["view_change_ms"].append(e["after_missed_ping_ms"])
        res["restore_s"][mb] = sorted(vals)
    res["etcd"] = run_etcd_views_bench(runs, gdir, tmp, say)
    return res


def _restore_once(ftvm, guest, run_dir, extra=()):
    """Kill the primary once a backup is up to date; seconds until the new backup has
    the state (None if it never did)."""
    p = subprocess.Popen([str(ftvm), "run", str(guest), "--nodes", "3", "--run-dir", str(run_dir), *extra],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def st(n):
        try:
            return json.loads((run_dir / f"{n}.status.json").read_text())
        except (OSError, ValueError):
            return {}
    deadline = time.monotonic() + 120
    killed = None
    while time.monotonic() < deadline and p.poll() is None:
        nodes = {n: st(n) for n in "ABC"}
        if any(s.get("role") == "backup" and s.get("ready") for s in nodes.values()):
            prim = [s for s in nodes.values() if s.get("role") == "primary"]
            if prim:
                killed = time.time()
                os.kill(prim[0]["pid"], 9)
                break
        time.sleep(0.02)
    p.communicate(timeout=300)
    after = sorted(t for n in "ABC" for t in st(n).get("protected_unix") or [] if killed and t > killed)
    return after[0] - killed if after else None


STEADY_S = 4.0                  # the measured stretch of a steady run


def _steady_requests(ftvm, guest, run_dir, cluster, url):
    """Requests the etcd members received per second, and the guest's output bytes per
    second, over STEADY_S of a steady run (from when a backup is ready; no kills). The
    requests are read from the members' own counters, so every process's requests count,
    also those of a node that restarted."""
    import threading
    p = subprocess.Popen([str(ftvm), "run", str(guest), "--nodes", "3", "--run-dir", str(run_dir),
                          "--coordinator", url], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    got = [0]

    def drain():
        while True:
            b = p.stdout.read1(65536)
            if not b:
                return
            got[0] += len(b)
    th = threading.Thread(target=drain, daemon=True)
    th.start()

    def ready():
        for n in "ABC":
            try:
                s = json.loads((run_dir / f"{n}.status.json").read_text())
            except (OSError, ValueError):
                continue
            if s.get("role") == "backup" and s.get("ready"):
                return True
        return False
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.02)
    res = None
    if p.poll() is None and ready():
        t0, r0, b0 = time.monotonic(), cluster.client_requests(), got[0]
        while p.poll() is None and time.monotonic() - t0 < STEADY_S:
            time.sleep(0.05)
        t1, r1, b1 = time.monotonic(), cluster.client_requests(), got[0]
        if p.poll() is None and t1 - t0 > 0.5 * STEADY_S:
            res = {"ops_per_s": (r1 - r0) / (t1 - t0), "output_bytes_per_s": (b1 - b0) / (t1 - t0),
                   "seconds": t1 - t0}
    p.wait(timeout=300)
    th.join(timeout=10)
    return res


def run_etcd_views_bench(runs, gdir, tmp, say):
    """The etcd coordinator beside the embedded view service, runs interleaved: the
    failover outage the observer sees (kill to next output), the time to restore
    redundancy for a 64 MiB guest, and etcd requests per second during steady runs of
    two guests with different output rates (the rate must not follow the output)."""
    from ..ft.etcd_local import LocalCluster
    import shutil
    if not shutil.which("etcd") and not os.path.exists("/usr/bin/etcd"):
        say("bench: etcd-server not installed; the etcd figures are skipped")
        return None
    ftvm = pathlib.Path(sys.executable).parent / "ftvm"
    out = {"outage_ms": {"embedded": [], "etcd": []}, "restore64_s": {"embedded": [], "etcd": []},
           "ops_per_s": {}}
    with LocalCluster(pathlib.Path(tmp) / "etcd") as cluster:
        for i in range(runs):
            for kind in ("embedded", "etcd"):
                extra = ["--coordinator", f"{cluster.url}/bench/o{i}"] if kind == "etcd" else []
                say(f"bench: failover outage, {kind} coordinator, run {i + 1}")
                run_dir = pathlib.Path(tmp) / f"eo-{kind}-{i}"
                p = subprocess.run([str(ftvm), "run", str(gdir / "lines_long.elf"), "--nodes", "3", "--run-dir",
                                    str(run_dir), "--kill-primary-after", "1.0", *extra],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                if p.returncode == 0:
                    obs = json.loads((run_dir / "observer.json").read_text())
                    for k in obs.get("kills", []):
                        if k.get("next_output_s") is not None:
                            out["outage_ms"][kind].append((k["next_output_s"] - k["t"]) * 1000)
                extra = ["--coordinator", f"{cluster.url}/bench/r{i}"] if kind == "etcd" else []
                say(f"bench: restore redundancy, 64 MiB guest, {kind} coordinator, run {i + 1}")
                r = _restore_once(ftvm, gdir / "bigmem64.elf", pathlib.Path(tmp) / f"er-{kind}-{i}", extra)
                if r is not None:
                    out["restore64_s"][kind].append(r)
        for i in range(runs):
            for guest in ("lines_long.elf", "lines_fast.elf"):
                say(f"bench: etcd requests during a steady run of {guest}, run {i + 1}")
                r = _steady_requests(ftvm, gdir / guest, pathlib.Path(tmp) / f"eops-{guest}-{i}", cluster,
                                     f"{cluster.url}/bench/ops{i}-{guest}")
                if r:
                    out["ops_per_s"].setdefault(guest, []).append(r)
    for d in (out["outage_ms"], out["restore64_s"]):
        for k in d:
            d[k].sort()
    return out


def run_ft_bench(runs, gdir, tmp, say):
    res = {}
    guest_s, plain_s, ratios, same_ratios = [], [], [], []
    for i in range(runs):
        say(f"bench: compute.elf run {i + 1}/{runs}: plain, then `ftvm run` (primary and backup processes)")
        t = plain_run_stock(gdir / "compute.elf")[0]
        t_same = plain_run(elf_loader.load_file(gdir / "compute.elf")[1])[0]
        summ, _, _ = ft_run(gdir / "compute.elf", tmp, f"compute{i}")
        g = summ["exit_s"] - summ["first_hello_s"]
        plain_s.append(t)
        guest_s.append(g)
        ratios.append(t / g)
        same_ratios.append(t_same / g)
        res["compute_wall_s"] = min(res.get("compute_wall_s", 1e9), summ["wall_s"])
    res["plain_compute_s"] = median(plain_s)
    res["compute_guest_s"] = median(guest_s)
    res["plain_over_ft"] = median(ratios)
    res["plain_over_ft_each"] = ratios
    res["same_engine_over_ft"] = median(same_ratios)
    say("bench: Output Rule latency on lines.elf")
    lat = []
    for i in range(runs):
        _, nodes, _ = ft_run(gdir / "lines.elf", tmp, f"lines{i}")
        st = nodes["A"].get("output_rule_us") or {}
        lat.append((st.get("p50"), st.get("p99"), st.get("n")))
        res["io_sched"] = nodes["A"].get("io_sched")
    lat.sort()
    res["output_rule_p50_us"], res["output_rule_p99_us"], res["outputs"] = lat[len(lat) // 2]
    say("bench: failover outage (SIGKILL of the primary -> next output from the new primary)")
    outages = []
    for i in range(max(5, runs)):
        # lines_long (about 6 s): lines.elf now ends in about 1 s, before most of these kills
        summ, _, _ = ft_run(gdir / "lines_long.elf", tmp, f"kill{i}", kill_after=0.8 + 0.1 * i)
        for k in summ["kills"]:
            if k["next_output_s"] is not None:
                outages.append((k["next_output_s"] - k["t"]) * 1000)
    outages.sort()
    res["failover_outage_ms"] = outages
    res["failover_outage_median_ms"] = outages[len(outages) // 2] if outages else None
    say("bench: logging bandwidth on tsc_heavy.elf")
    summ, _, log = ft_run(gdir / "tsc_heavy.elf", tmp, "tsc")
    secs = summ["exit_s"] - summ["first_hello_s"]
    res["tsc_log_bytes"] = log.stat().st_size
    res["tsc_guest_s"] = secs
    res["logging_mbit_s"] = log.stat().st_size * 8 / secs / 1e6
    return res


def run_bench(runs, guest_dir, as_json, say, only=None):
    gdir = pathlib.Path(guest_dir) if guest_dir else ROOT / "guest_programs" / "build"
    rows = []
    results = {}
    if only in ("linux", "redis"):
        from .linux import linux_rows, run_linux_bench
        from .redis import redis_rows, run_redis_bench
        run, rows_of, title = {
            "linux": (run_linux_bench, linux_rows, "ftvm bench: Linux programs (whole-process wall times, medians)"),
            "redis": (run_redis_bench, redis_rows, "ftvm bench: Debian's redis-server with redis-benchmark -c 50"),
        }[only]
        # In the checkout, not /tmp: a Linux guest's /tmp is its own, in memory.
        with tempfile.TemporaryDirectory(prefix="ftvm-bench-", dir=str(ROOT)) as tmp:
            results[only] = run(runs, tmp, say)
        if as_json:
            print(json.dumps(results[only], indent=2))
        else:
            _table(rows_of(results[only]), title)
        return results
    if only == "debug":
        from .debug import debug_rows, run_debug_bench
        with tempfile.TemporaryDirectory(prefix="ftvm-bench-") as tmp:
            results["debug"] = run_debug_bench(tmp, say)
        if as_json:
            print(json.dumps(results, indent=2))
        else:
            _table(debug_rows(results["debug"]), "ftvm bench: the debugger on a replay")
        return results
    if only in ("views", "kv"):
        from .kv import kv_rows, run_kv_bench
        run, rows, title = {"views": (lambda tmp: run_views_bench(runs, gdir, tmp, say), _views_rows,
                                      "ftvm bench: view service and state transfer"),
                            "kv": (lambda tmp: run_kv_bench(runs, tmp, say), kv_rows,
                                   "ftvm bench: kv guest with Redis clients")}[only]
        with tempfile.TemporaryDirectory(prefix="ftvm-bench-") as tmp:
            results[only] = run(tmp)
        if as_json:
            print(json.dumps(results, indent=2))
        else:
            _table(rows(results[only]), title)
        return results
    results["engine"] = engine_summary()
    if only == "ft":
        with tempfile.TemporaryDirectory(prefix="ftvm-bench-") as tmp:
            results["ft"] = run_ft_bench(runs, gdir, tmp, say)
        return _print_ft(results, as_json)
    with tempfile.TemporaryDirectory(prefix="ftvm-bench-") as tmp:
        for guest in ("compute", "tsc_heavy"):
            path = gdir / f"{guest}.elf"
            data, image = elf_loader.load_file(path)
            log = pathlib.Path(tmp) / f"{guest}.ftlog"
            plain, same, rec, rep = [], [], [], []
            for i in range(runs):
                say(f"bench: {guest} run {i + 1}/{runs}: plain, plain on ftvm's engine, record, replay")
                t, out_p, st_p, plain_on = plain_run_stock(path)
                plain.append(t)
                # The like-for-like baseline: the patched engine ftvm runs on, with no
                # counting and no log (the stock wheel lacks the engine's own speed-ups).
                same.append(plain_run(image)[0])
                t, out_r, end = record_run(data, image, path.name, log)
                rec.append(t)
                t, out_rp, res = replay_run(log)
                rep.append(t)
                # tsc-heavy prints elapsed guest time, which differs from run to run.
                same_out = out_r == out_rp and (guest == "tsc_heavy" or out_p == out_r)
                if not (same_out and st_p == end.status == res.status):
                    raise FtvmError(f"bench: {guest}: plain, record and replay disagree "
                                    f"(exit {st_p}/{end.status}/{res.status})")
            n_tsc, tsc_bytes = tsc_count(log)
            results[guest] = {"plain_s": median(plain), "record_s": median(rec), "replay_s": median(rep),
                              "plain_on": plain_on,
                              "plain_over_record": median([p / r for p, r in zip(plain, rec)]),
                              "same_engine_s": median(same),
                              "same_over_record": median([p / r for p, r in zip(same, rec)]),
                              "same_over_replay": median([p / r for p, r in zip(same, rep)]),
                              "plain_over_replay": median([p / r for p, r in zip(plain, rep)]),
                              "record_over_replay": median([r / p for r, p in zip(rec, rep)]),
                              "each_s": {"plain": plain, "record": rec, "replay": rep},
                              "rdtsc": n_tsc, "rdtsc_bytes": tsc_bytes,
                              "bytes_per_rdtsc": tsc_bytes / n_tsc if n_tsc else None,
                              "guest_memory_bytes": image.mapped_bytes() + abi.STACK_SIZE_DEFAULT}
        say("bench: peak memory of `ftvm record compute.elf`")
        rss = peak_rss_of_record(gdir / "compute.elf", pathlib.Path(tmp) / "rss.ftlog")
        results["compute"]["record_peak_rss_bytes"] = rss
        if only != "record":
            results["ft"] = run_ft_bench(runs, gdir, tmp, say)
            results["views"] = run_views_bench(runs, gdir, tmp, say)
            from .kv import run_kv_bench
            results["kv"] = run_kv_bench(runs, tmp, say)
    c, t = results["compute"], results["tsc_heavy"]
    mem_budget = c["guest_memory_bytes"] + (100 << 20)
    rows = _engine_rows(results["engine"]) + [
        ("compute: plain / record", f"{c['plain_s']:.3f} s", f"{c['record_s']:.3f} s",
         f"{c['plain_over_record']:.3f}", "≥ 0.97", c["plain_over_record"] >= 0.97),
        ("compute: plain / replay", f"{c['plain_s']:.3f} s", f"{c['replay_s']:.3f} s",
         f"{c['plain_over_replay']:.3f}", "≥ 0.97", c["plain_over_replay"] >= 0.97),
        ("compute: replay vs record", f"{c['record_s']:.3f} s", f"{c['replay_s']:.3f} s",
         f"{c['record_over_replay']:.3f}", "≥ 1.00 (replay no slower)", c["record_over_replay"] >= 1.0),
        ("tsc-heavy: plain / record", f"{t['plain_s']:.3f} s", f"{t['record_s']:.3f} s",
         f"{t['plain_over_record']:.3f}", "≥ 0.80", t["plain_over_record"] >= 0.8),
        ("compute: same engine, no counting or log / record", f"{c['same_engine_s']:.3f} s", f"{c['record_s']:.3f} s",
         f"{c['same_over_record']:.3f}", "like for like", None),
        ("compute: same engine / replay", f"{c['same_engine_s']:.3f} s", f"{c['replay_s']:.3f} s",
         f"{c['same_over_replay']:.3f}", "like for like", None),
        ("tsc-heavy: same engine / record", f"{t['same_engine_s']:.3f} s", f"{t['record_s']:.3f} s",
         f"{t['same_over_record']:.3f}", "like for like", None),
        ("tsc-heavy: replay vs record", f"{t['record_s']:.3f} s", f"{t['replay_s']:.3f} s",
         f"{t['record_over_replay']:.3f}", "≥ 1.00 (replay no slower)", t["record_over_replay"] >= 1.0),
        ("bytes per RDTSC record", "", f"{t['bytes_per_rdtsc']:.2f} B", f"{t['rdtsc']} RDTSCs",
         "≤ 16", t["bytes_per_rdtsc"] <= 16),
        ("ftvm record peak memory (compute)", f"guest {c['guest_memory_bytes'] >> 20} MiB",
         f"{rss / 2**20:.1f} MiB", f"budget {mem_budget / 2**20:.1f} MiB", "≤ guest + 100 MiB", rss <= mem_budget),
    ]
    if "ft" in results:
        rows += _ft_rows(results["ft"])
    if "views" in results:
        rows += _views_rows(results["views"])
    if "kv" in results:
        from .kv import kv_rows
        rows += kv_rows(results["kv"])
    if as_json:
        print(json.dumps(results, indent=2))
        return results
    _table(rows, f"ftvm bench (median of {runs} interleaved runs; plain on the {c['plain_on']}; "
                 f"{os.cpu_count()} cores)")
    return results


def engine_summary():
    """Which block counter this run uses, and what setup's Unicorn build cost."""
    info = counter.build_info()
    return {"counter": counter.mode(), "inline_available": counter.inline_available(),
            "unicorn_build_s": info.get("build_s"), "build_failed": info.get("reason")}


def _engine_rows(e):
    how = {"inline": "inline, in translated code (patched Unicorn)", "hook": "C block hook"}[e["counter"]]
    if e["counter"] == "hook" and e["inline_available"]:
        how += f" ({counter.ENV}=hook)"
    rows = [("block counter", "", how, "", "", None)]
    b = e["unicorn_build_s"]
    if e["build_failed"]:
        rows.append(("patched Unicorn build", "", "failed", e["build_failed"][:40], "", False))
    elif b is not None:
        rows.append(("patched Unicorn build (added to fresh-machine setup)", "", f"{b:.0f} s", "", "≤ 180 s",
                     b <= 180))
    return rows


def _ft_rows(f):
    med = f["failover_outage_median_ms"]
    return [
        ("compute: plain / `ftvm run`", f"{f['plain_compute_s']:.3f} s", f"{f['compute_guest_s']:.3f} s",
         f"{f['plain_over_ft']:.3f}", "≥ 0.90", f["plain_over_ft"] >= 0.90),
        ("compute: same engine, no counting or log / `ftvm run`", "", f"{f['compute_guest_s']:.3f} s",
         f"{f['same_engine_over_ft']:.3f}", "like for like", None),
        ("  `ftvm run` end to end (with process start)", "", f"{f['compute_wall_s']:.3f} s", "", "", None),
        ("Output Rule added per output (loopback): p50", "", f"p50 {f['output_rule_p50_us']:.0f} µs",
         f"{f['outputs']} outputs", "≤ 200 µs", f["output_rule_p50_us"] <= 200),
        ("Output Rule added per output (loopback): p99", "", f"p99 {f['output_rule_p99_us']:.0f} µs",
         f"I/O threads: {f.get('io_sched') or '?'}", "≤ 5 ms", f["output_rule_p99_us"] <= 5000),
        ("failover outage, SIGKILL -> next output", "", "-" if med is None else f"median {med:.0f} ms",
         " ".join(f"{x:.0f}" for x in f["failover_outage_ms"]), "≤ 300 ms median (aim 100)",
         med is not None and med <= 300),
        ("logging bandwidth, tsc-heavy under `ftvm run`", f"{f['tsc_log_bytes'] / 1e6:.1f} MB",
         f"{f['logging_mbit_s']:.1f} Mbit/s", f"in {f['tsc_guest_s']:.2f} s", "printed (VMware: 1.5-18)", None),
    ]


def _views_rows(v):
    rows = []
    for mb, vals in v["restore_s"].items():
        med = vals[len(vals) // 2] if vals else None
        rows.append((f"restore redundancy after a primary kill, {mb} MiB guest", "",
                     "-" if med is None else f"median {med:.2f} s", " ".join(f"{x:.2f}" for x in vals),
                     "≤ 1 s for 64 MiB" if mb == 64 else "printed", (med is not None and med <= 1.0) if mb == 64 else None))
    vc = sorted(v["view_change_ms"])
    rows.append(("view change, first missed ping -> new view", "", "-" if not vc else f"median {vc[len(vc) // 2]:.0f} ms",
                 " ".join(f"{x:.0f}" for x in vc), "printed", None))
    e = v.get("etcd")
    if e:
        def med(xs):
            return xs[len(xs) // 2] if xs else None
        emb, etc = e["outage_ms"]["embedded"], e["outage_ms"]["etcd"]
        rows.append(("failover outage seen by the observer, embedded view service", "",
                     "-" if not emb else f"median {med(emb):.0f} ms", " ".join(f"{x:.0f}" for x in emb), "printed", None))
        rows.append(("failover outage seen by the observer, etcd coordinator", "",
                     "-" if not etc else f"median {med(etc):.0f} ms", " ".join(f"{x:.0f}" for x in etc), "≤ 300 ms",
                     None if not etc else med(etc) <= 300))
        remb, retc = e["restore64_s"]["embedded"], e["restore64_s"]["etcd"]
        ok = None if not (remb and retc) else abs(med(retc) - med(remb)) <= 0.2 * med(remb)
        rows.append(("restore redundancy, 64 MiB guest, embedded / etcd", "",
                     "-" if not (remb and retc) else f"median {med(remb):.2f} / {med(retc):.2f} s",
                     " ".join(f"{x:.2f}" for x in remb) + " / " + " ".join(f"{x:.2f}" for x in retc),
                     "etcd within 20%", ok))
        meds = {}
        for guest, os_ in e["ops_per_s"].items():
            os_ = sorted(os_, key=lambda o: o["ops_per_s"])
            m = meds[guest] = os_[len(os_) // 2]
            rows.append((f"etcd requests per second, steady run of {guest}", "",
                         f"median {m['ops_per_s']:.0f}/s", f"output {m['output_bytes_per_s'] / 1e3:.0f} kB/s; "
                         + " ".join(f"{o['ops_per_s']:.0f}" for o in os_), "printed", None))
        if len(meds) == 2:
            (_, slow), (_, fast) = sorted(meds.items(), key=lambda kv: kv[1]["output_bytes_per_s"])
            out_x = fast["output_bytes_per_s"] / max(slow["output_bytes_per_s"], 1e-9)
            req_x = fast["ops_per_s"] / max(slow["ops_per_s"], 1e-9)
            rows.append(("etcd requests per second vs output rate", "", f"requests x{req_x:.2f}",
                         f"output x{out_x:.1f}", "does not grow with the output (≤ x1.5)", req_x <= 1.5))
    return rows


def _print_ft(results, as_json):
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        _table(_engine_rows(results["engine"]) + _ft_rows(results["ft"]), "ftvm bench: fault tolerance")
    return results


def _table(rows, title):
    from rich.console import Console as RichConsole
    from rich.table import Table
    table = Table(title=title)
    for col in ("measure", "baseline", "ftvm", "ratio / figure", "target", "met"):
        table.add_column(col, justify="left" if col in ("measure", "target") else "right")
    for name, base, ours, ratio, target, ok in rows:
        met = "" if ok is None else ("[green]yes[/]" if ok else "[red]no[/]")
        table.add_row(name, base, ours, ratio, target, met)
    RichConsole(width=140).print(table)
