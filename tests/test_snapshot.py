"""State transfer's foundation: a snapshot taken at any event of a run, restored into a
fresh engine in a fresh machine, continues the run exactly (every event falls before
the snapshot, in the state, or after it, in the log)."""
import pytest

from conftest import record_inproc
from hypervisor import snapshot
from hypervisor.console import Console
from hypervisor.record import ScriptedInput
from hypervisor.replay import FileSource, Replayer
from logging_channel import records as R


@pytest.fixture(scope="module")
def mixed_log(guests, tmp_path_factory):
    d = tmp_path_factory.mktemp("snap")
    script = [(500, b"abc"), (3000, "tick"), (6000, b"defgh\n"), (9000, "tick"), (12000, None)]
    log, out, end = record_inproc(d, "mixed.elf", "m", ScriptedInput(script), digest_every_events=1)
    return log, out, end


def events_in(log):
    """The first record at each execution point (replay stops before all records of a point)."""
    from logging_channel.logfile import LogReader
    out, last = [], None
    with LogReader(log) as r:
        for i, _, rec in r:
            if rec.kind in (R.INPUT, R.IRQ, R.DIGEST, R.END) and rec.blocks != last:
                out.append((i, rec))
                last = rec.blocks
            elif rec.kind in (R.TSC, R.RNG) and out and out[-1][1].blocks == last:
                last = None     # values in between: the next point is a new one
    return out


def test_snapshot_at_every_event_continues_the_run(mixed_log):
    log, full_out, end = mixed_log
    evs = [(i, r) for i, r in events_in(log) if r.kind != R.END]
    assert len(evs) >= 5
    for n, (index, rec) in enumerate(evs):
        out = bytearray()
        rp = Replayer(log, Console(out.extend), to_event=None)
        # Run to just before record `index`: replay with a stop at its point.
        rp.to_blocks = rec.blocks
        res = rp.run()
        assert res.stopped_at is not None or res.end is not None
        assert rp.m.blocks == rec.blocks
        header_frame = R.encode(rp.header)
        blob = snapshot.capture(rp.m, header_frame, index, rp.m.console.total, b"")
        parts = {i: (cnt, crc, data) for i, cnt, crc, data in snapshot.chunks(blob, size=4096)}
        blob2 = snapshot.join(parts)
        assert blob2 == bytes(blob)
        out2 = bytearray()
        con = Console(out2.extend)
        m, header, log_index, _ = snapshot.restore(blob2, con)
        assert log_index == index and m.blocks == rec.blocks
        rest = Replayer(FileSource(log, start=index), con, header=header, machine=m).run()
        assert rest.end is not None and rest.status == end.status, f"event #{n}"
        assert bytes(out) + bytes(out2) == full_out, f"event #{n}: output differs"


def test_damaged_chunk_is_refused(mixed_log):
    log, _, _ = mixed_log
    rp = Replayer(log, Console(None))
    rp.to_blocks = 4000
    rp.run()
    blob = snapshot.capture(rp.m, R.encode(rp.header), 3, 0, b"")
    parts = {i: (cnt, crc, data) for i, cnt, crc, data in snapshot.chunks(blob, size=1024)}
    cnt, crc, data = parts[1]
    parts[1] = (cnt, crc, data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(snapshot.BadSnapshot, match="chunk 1 .* CRC32"):
        snapshot.join(parts)
    parts[1] = (cnt, crc, data)
    del parts[2]
    with pytest.raises(snapshot.BadSnapshot, match="missing"):
        snapshot.join(parts)
