"""Negative control: change one logged RDTSC value, re-encode the record with a valid
checksum, and replay must report a divergence at the right execution point."""
import re

from conftest import log_records, run_ftvm
from logging_channel import records as R


def rewrite(path, out, fn):
    data = path.read_bytes()
    recs = log_records(path)
    blob = bytearray(R.FILE_MAGIC)
    for rec in recs:
        rec = fn(rec)
        if rec.kind == R.HEADER:
            blob += data[len(R.FILE_MAGIC): len(R.FILE_MAGIC) + R.FRAME.size + R.FRAME.unpack_from(data, 8)[2]]
        else:
            blob += R.encode(rec)
    out.write_bytes(bytes(blob))


def test_changed_rdtsc_value_is_caught_at_the_next_rdtsc(guests, tmp_path):
    log = tmp_path / "clock.ftlog"
    assert run_ftvm("record", guests / "clock.elf", "-o", log).returncode == 0
    batches = [r for r in log_records(log) if r.kind == R.TSC]
    first = batches[0]
    k = len(first.values) // 2
    # The clock guest busy-waits until 2 ms of guest time have passed: make RDTSC #k say
    # they have, so its loop ends early and the next RDTSC runs elsewhere.
    target_block_k, next_block = first.blocks[k], first.blocks[k + 1]

    def change(rec):
        if rec == first:
            vals = list(rec.values)
            vals[k] = vals[0] + 5_000_000
            return R.TscBatch.from_entries(rec.blocks, rec.pcs, tuple(vals))
        return rec

    bad = tmp_path / "bad.ftlog"
    rewrite(log, bad, change)
    p = run_ftvm("replay", bad)
    assert p.returncode == 5, p.stderr
    msg = p.stderr.strip().splitlines()[-1]
    m = re.search(r"replay diverged at block (\d+) pc (0x[0-9a-f]+): RDTSC #(\d+) ran at block (\d+) pc (0x[0-9a-f]+), "
                  r"but the log has it at block (\d+) pc (0x[0-9a-f]+)", msg)
    assert m, msg
    index, ran, ran_pc = int(m.group(3)), int(m.group(4)), int(m.group(5), 16)
    logged, logged_pc = int(m.group(6)), int(m.group(7), 16)
    assert index == k + 1, "caught at the very next RDTSC"
    assert (logged, logged_pc) == (next_block, first.pcs[k + 1])
    assert target_block_k <= ran and (ran, ran_pc) != (logged, logged_pc)
    # And the untouched log replays cleanly (the control of the control).
    assert run_ftvm("replay", log).returncode == 0


def test_changed_input_byte_is_caught_by_the_digest(guests, tmp_path):
    log = tmp_path / "echo.ftlog"
    assert run_ftvm("record", guests / "echo.elf", "-o", log, "--digest-every-events", "1",
                    input=b"abc\n").returncode == 0

    def change(rec):
        if rec.kind == R.INPUT and rec.data:
            return R.Input(rec.blocks, rec.pc, b"abd\n")
        return rec

    bad = tmp_path / "bad.ftlog"
    rewrite(log, bad, change)
    p = run_ftvm("replay", bad)
    assert p.returncode == 5
    assert "state digest differs" in p.stderr or "final state differs" in p.stderr
