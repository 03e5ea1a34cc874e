"""`ftvm log plot LOG -o FILE.svg` and `ftvm status --run-dir DIR --plot FILE`: a run
on one time axis.

``gather`` reads a log into plain lists (pure: no plotting); ``draw`` makes the
picture with matplotlib. The time axis is guest time, taken from the log's state
digests and RDTSC results (the execution point's block count is interpolated between
them); a log that never read a clock is drawn against blocks executed. Every marked
instant carries its time in its SVG id (``failover-1-t4.123``), so that a test can read
the picture's data back.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import os

from logging_channel import records as R
from logging_channel.logfile import LogReader

from .errors import FtvmError, LogTruncated

BINS = 120                      # rate curves: this many bins over the run
CLOCK_CALLS = (201, 96, 228)    # time, gettimeofday, clock_gettime: their logged value is guest time


@dataclasses.dataclass
class RunData:
    name: str
    samples: list          # (blocks, guest ns), increasing
    end_blocks: int
    end_reason: str | None
    views: list            # (blocks, view, primary, backup)
    golives: list          # (blocks, view, node, outage_ms)
    transfers: list        # (blocks, view, to, size)
    output: list           # (blocks, bytes) output written
    inputs: list           # (blocks, bytes) input taken in
    events: dict           # kind name -> [blocks]
    faults: list           # (blocks, text)
    lag: list = dataclasses.field(default_factory=list)   # (seconds, node, lag ms), from a run directory

    def t(self, blocks) -> float:
        """Seconds of guest time at a block count (blocks itself if the log has no time)."""
        s = self.samples
        if len(s) < 2:
            return float(blocks)
        i = bisect.bisect_left(s, (blocks, -1))
        if i <= 0:
            (b0, t0), (b1, t1) = s[0], s[1]
        elif i >= len(s):
            (b0, t0), (b1, t1) = s[-2], s[-1]
        else:
            (b0, t0), (b1, t1) = s[i - 1], s[i]
        if b1 == b0:
            return t0 / 1e9
        return (t0 + (t1 - t0) * (blocks - b0) / (b1 - b0)) / 1e9

    @property
    def timed(self):
        return len(self.samples) >= 2


def gather(path) -> RunData:
    samples, views, golives, transfers, output, inputs, faults, writes = [], [], [], [], [], [], [], []
    clock_samples = []
    events: dict[str, list] = {}
    header, end = None, None
    last_out = 0
    try:
        for _, _, rec in LogReader(path):
            k = rec.kind
            if k == R.HEADER:
                header = rec
            elif k == R.TSC:
                e = rec.entries
                for j in range(0, len(e), 3 * max(1, len(e) // 3 // 64)):   # at most ~64 per batch
                    samples.append((e[j], e[j + 2]))
            elif k == R.DIGEST:
                if rec.vtime:
                    samples.append((rec.blocks, rec.vtime))
                if rec.out_bytes > last_out:
                    output.append((rec.blocks, rec.out_bytes - last_out))
                    last_out = rec.out_bytes
            elif k == R.VIEW:
                views.append((rec.blocks, rec.view, rec.primary, rec.backup))
            elif k == R.GOLIVE:
                golives.append((rec.blocks, rec.view, rec.node, rec.outage_ms))
            elif k == R.TRANSFER:
                transfers.append((rec.blocks, rec.view, rec.to, rec.size))
            elif k == R.END:
                end = rec
                if rec.digest.vtime:
                    samples.append((rec.blocks, rec.digest.vtime))
                if rec.digest.out_bytes > last_out:
                    output.append((rec.blocks, rec.digest.out_bytes - last_out))
                if rec.reason == "fault":
                    faults.append((rec.blocks, rec.detail))
            elif k in (R.INPUT, R.IRQ, R.NET, R.DISK, R.SYSCALL):
                events.setdefault(R.KIND_NAMES[k], []).append(rec.blocks)
                if k == R.INPUT and rec.data:
                    inputs.append((rec.blocks, len(rec.data)))
                elif k == R.NET and rec.type == 2:
                    inputs.append((rec.blocks, len(rec.data or b"")))
                elif k == R.SYSCALL:
                    ret = rec.ret if rec.ret < 2**63 else 0
                    if rec.nr in CLOCK_CALLS and len(rec.values) == 1 and isinstance(rec.values[0], int):
                        clock_samples.append((rec.blocks, rec.values[0]))    # the guest time it read
                    if rec.nr == 1 and rec.args and rec.args[0] in (1, 2):
                        writes.append((rec.blocks, ret))      # write(1|2) of a Linux program
                    elif rec.nr == 0 and rec.args and rec.args[0] == 0:
                        inputs.append((rec.blocks, ret))      # read(0)
    except LogTruncated:
        pass
    if header is None:
        raise FtvmError(f"{path}: not a log with a header")
    samples = _from_zero(_monotone(clock_samples if len(clock_samples) >= 2 else samples))
    end_blocks = end.blocks if end is not None else max([b for b, _ in samples] + [0])
    linux = header.config.get("linux") or {}
    name = os.path.basename(linux.get("program") or header.elf_name or str(path))
    if writes:
        output = writes         # exact: each write(1|2) at its point (digests only sample the total)
    d = RunData(name, samples, end_blocks, end.reason if end else None, views, golives, transfers,
                output, inputs, events, faults)
    return d


def _from_zero(samples):
    """Guest time counted from the start of the run: the first samples' rate carried
    back to block 0 (guest clocks need not start at zero)."""
    if len(samples) < 2:
        return samples
    (b0, t0), (b1, t1) = samples[0], samples[1]
    origin = t0 - (t1 - t0) * b0 / (b1 - b0) if b1 > b0 else t0
    origin = min(max(origin, t0 - (t1 - t0) * 4), t0)     # not far before the first sample
    out = [(b, t - origin) for b, t in samples]
    if out[0][0] > 0:
        out.insert(0, (0, 0))
    return out


def _monotone(samples):
    out = []
    for b, t in sorted(samples):
        if out and (t < out[-1][1] or b == out[-1][0]):
            continue
        out.append((b, t))
    return out


def read_lag(run_dir):
    """(seconds since start, node, lag ms) samples that the run's nodes wrote, if any."""
    path = os.path.join(run_dir, "lag.jsonl")
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    d = json.loads(line)
                    out.append((d["t"], d["node"], d["lag_ms"]))
                except (ValueError, KeyError):
                    continue
    return out


# --- drawing ------------------------------------------------------------------------------------

NODE_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974"]


def draw(d: RunData, out_path, title=None):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FtvmError("plotting needs matplotlib: pip install 'ftvm[plot]' (make setup installs it)") from None
    matplotlib.rcParams["svg.hashsalt"] = "ftvm"
    matplotlib.rcParams["svg.fonttype"] = "none"
    end_t = d.t(d.end_blocks)
    unit = "guest time (s)" if d.timed else "blocks executed (the guest read no clock)"
    rows = 4 if d.lag else 3
    fig, axes = plt.subplots(rows, 1, figsize=(12, 2.2 + 1.8 * rows), sharex=True,
                             gridspec_kw={"height_ratios": [0.8] + [1.6] * (rows - 1)})
    ax_role, ax_io, ax_ev = axes[0], axes[1], axes[2]
    fig.suptitle(title or f"{d.name}: {_summary(d)}", fontsize=12, x=0.01, ha="left")

    # Who was primary, and when the backup was there.
    spans = _primaries(d)
    nodes = sorted({p for _, _, p, _ in spans} | {b for _, _, _, b in spans if b})
    color = {n: NODE_COLORS[i % len(NODE_COLORS)] for i, n in enumerate(nodes)}
    min_label = 0.07 * (end_t or 1)
    for t0, t1, primary, backup in spans:
        wide = t1 - t0 >= min_label
        ax_role.axvspan(t0, t1, ymin=0.5, ymax=0.95, color=color.get(primary, "#999999"), alpha=0.85)
        if wide:
            ax_role.text((t0 + t1) / 2, 0.72, f"primary {primary}", ha="center", va="center", color="white",
                         fontsize=9, fontweight="bold", clip_on=True)
        if backup:
            ax_role.axvspan(t0, t1, ymin=0.05, ymax=0.45, color=color.get(backup, "#999999"), alpha=0.45)
            if wide:
                ax_role.text((t0 + t1) / 2, 0.25, f"backup {backup}", ha="center", va="center", fontsize=8,
                             clip_on=True)
        elif wide:
            ax_role.text((t0 + t1) / 2, 0.25, "no backup", ha="center", va="center", fontsize=8,
                         color="#AA0000", clip_on=True)
    ax_role.set_yticks([])
    ax_role.set_ylim(0, 1)
    ax_role.set_ylabel("roles", rotation=0, ha="right", va="center")

    # Failovers, transfers and faults, across every panel.
    for i, (b, view, node, outage) in enumerate(d.golives, 1):
        t = d.t(b)
        for ax in axes:
            ln = ax.axvline(t, color="#C44E52", lw=2)
            ln.set_gid(f"failover-{i}-t{t:.6f}")
        ax_role.annotate(f"failover {i}: {node} live, view {view}\nout {outage} ms", (t, 1.0),
                         xytext=(3, 2), textcoords="offset points", fontsize=8, color="#C44E52",
                         va="bottom", annotation_clip=False)
    for i, (b, view, to, size) in enumerate(d.transfers, 1):
        t = d.t(b)
        for ax in axes:
            ln = ax.axvline(t, color="#8172B3", lw=1.2, ls="--")
            ln.set_gid(f"transfer-{i}-t{t:.6f}")
        ax_ev.annotate(f"state to {to}\n{size / 2**20:.1f} MiB", (t, 1.0), xycoords=("data", "axes fraction"),
                       xytext=(3, -2), textcoords="offset points", fontsize=8, color="#8172B3", va="top")
    for i, (b, text) in enumerate(d.faults, 1):
        t = d.t(b)
        for ax in axes:
            ln = ax.axvline(t, color="black", lw=2, ls=":")
            ln.set_gid(f"fault-{i}-t{t:.6f}")
        ax_ev.annotate(f"fault: {text}", (t, 0.5), xycoords=("data", "axes fraction"), fontsize=8,
                       ha="right", xytext=(-3, 0), textcoords="offset points")

    # Output and input rates.
    edges = [end_t * i / BINS for i in range(BINS + 1)]
    width = (end_t / BINS) or 1.0
    per_s = 1.0 if not d.timed else 1.0 / width
    for series, label, col in ((d.output, "output", "#4C72B0"), (d.inputs, "input", "#55A868")):
        if series:
            if series is d.output and d.events.get("syscall") is None:   # digest samples: spread them
                ys = _spread([(d.t(b), n) for b, n in series], edges)
            else:
                ys = _binned([(d.t(b), n) for b, n in series], edges)
            ax_io.step(edges[:-1], [y * per_s / 1024 for y in ys], where="post", label=label, color=col)
    ax_io.set_ylabel("KiB/s" if d.timed else "KiB/bin")
    ax_io.set_ylim(bottom=0)
    if d.output or d.inputs:
        ax_io.legend(loc="upper right", fontsize=8, frameon=False)
    ax_io.set_title("console output and input", fontsize=9, loc="left")

    # Events.
    for name in sorted(d.events):
        ys = _binned([(d.t(b), 1) for b in d.events[name]], edges)
        ax_ev.step(edges[:-1], [y * per_s for y in ys], where="post", label=f"{name} ({len(d.events[name])})")
    ax_ev.set_ylabel("per second" if d.timed else "per bin")
    ax_ev.set_ylim(bottom=0)
    if d.events:
        ax_ev.legend(loc="upper right", fontsize=8, frameon=False)
    ax_ev.set_title("events from the log (system calls, input, interrupts, network, disk)", fontsize=9, loc="left")

    if d.lag:
        ax_lag = axes[3]
        for node in sorted({n for _, n, _ in d.lag}):
            pts = [(t, v) for t, n, v in d.lag if n == node]
            ax_lag.plot([p[0] for p in pts], [p[1] for p in pts], label=f"backup {node}",
                        color=color.get(node, None))
        ax_lag.set_ylabel("lag ms")
        ax_lag.set_title("backup lag behind the primary (wall clock, from the run directory)", fontsize=9, loc="left")
        ax_lag.legend(loc="upper right", fontsize=8, frameon=False)

    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_xlim(0, end_t if end_t > 0 else 1)
    axes[-1].set_xlabel(unit)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)


def _summary(d):
    bits = [f"{len(d.golives)} failover{'s' if len(d.golives) != 1 else ''}",
            f"{len(d.transfers)} state transfer{'s' if len(d.transfers) != 1 else ''}",
            f"{sum(len(v) for v in d.events.values())} events"]
    if d.end_reason:
        bits.append(f"ended: {d.end_reason}")
    return ", ".join(bits)


def _primaries(d):
    """[(t0, t1, primary, backup)] from VIEW and GOLIVE records (A first, as ftvm run starts)."""
    changes = [(b, 1, p, bk) for b, _, p, bk in d.views]
    for b, _, node, _ in d.golives:
        changes.append((b, 0, node, None))      # the new primary's view record follows its go-live
    changes.sort(key=lambda c: (c[0], c[1]))
    changes = [(b, p, bk) for b, _, p, bk in changes]
    cur_p, cur_b = "A", (None if d.views else ("B" if not d.golives else None))
    if not d.views and not d.golives:
        cur_b = None
    spans, start = [], 0.0
    for b, p, bk in changes:
        t = d.t(b)
        if t > start:
            spans.append((start, t, cur_p, cur_b))
        start = t
        if p != cur_p:
            cur_b = None
        cur_p = p
        if bk is not None or p == cur_p:
            cur_b = bk
    spans.append((start, d.t(d.end_blocks), cur_p, cur_b))
    merged = []
    for sp in spans:
        if sp[1] <= sp[0]:
            continue
        if merged and merged[-1][2:] == sp[2:]:
            merged[-1] = (merged[-1][0], sp[1], sp[2], sp[3])
        else:
            merged.append(sp)
    return merged


def _spread(points, edges):
    """Amounts known at sample times, each spread evenly since the previous sample."""
    ys = [0.0] * (len(edges) - 1)
    prev = 0.0
    for t, v in sorted(points):
        t0, t1 = prev, max(t, prev)
        prev = t1
        if t1 <= t0:
            ys[min(len(ys) - 1, max(0, int(t1 / (edges[-1] or 1) * len(ys))))] += v
            continue
        for i in range(len(ys)):
            a, b = max(edges[i], t0), min(edges[i + 1], t1)
            if b > a:
                ys[i] += v * (b - a) / (t1 - t0)
    return ys


def _binned(points, edges):
    ys = [0.0] * (len(edges) - 1)
    n = len(ys)
    end = edges[-1] or 1.0
    for t, v in points:
        i = min(n - 1, max(0, int(t / end * n)))
        ys[i] += v
    return ys


def plot_log(log_path, out_path, say=lambda m: None):
    d = gather(log_path)
    draw(d, out_path)
    say(f"wrote {out_path}: {_summary(d)}")
    return d


def plot_run_dir(run_dir, out_path, say=lambda m: None):
    """The run directory's most complete log (the whole-run log if the run ended, else
    the current primary's), with the backups' lag if the nodes recorded it."""
    logs = []
    for root, _, files in os.walk(run_dir):
        for f in files:
            if f.endswith(".ftlog"):
                p = os.path.join(root, f)
                logs.append((os.path.getsize(p), p))
    if not logs:
        raise FtvmError(f"{run_dir}: no logs in this run directory")
    path = max(logs)[1]
    d = gather(path)
    d.lag = read_lag(run_dir)
    draw(d, out_path, title=f"{d.name} ({os.path.basename(path)} in {run_dir}): {_summary(d)}")
    say(f"wrote {out_path} from {path}: {_summary(d)}")
    return d
