"""Damaged logs are refused with the record index and byte offset; a truncated log
replays to its last whole record and then says it was cut short."""
import re
import struct
import zlib

import pytest

from conftest import run_ftvm
from logging_channel import records as R


@pytest.fixture(scope="module")
def echo_log(guests, tmp_path_factory):
    d = tmp_path_factory.mktemp("echo")
    log = d / "echo.ftlog"
    rec = run_ftvm("record", guests / "echo.elf", "-o", log, "--digest-every-events", "1",
                   input=b"alpha\nbeta\ngamma\n")
    assert rec.returncode == 0
    return log.read_bytes(), rec.stdout


def frames(data):
    """[(index, offset, kind, length)] of a whole log."""
    out, off, i = [], len(R.FILE_MAGIC), 0
    while off < len(data):
        _, kind, length, _ = R.FRAME.unpack_from(data, off)
        out.append((i, off, kind, length))
        off += R.FRAME.size + length
        i += 1
    return out


def replay_bytes(tmp_path, data):
    p = tmp_path / "damaged.ftlog"
    p.write_bytes(data)
    return run_ftvm("replay", p)


def assert_one_line_error(p, status):
    assert p.returncode == status, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, p.stderr
    return errors[0]


def test_bit_flip_in_every_record_is_refused_with_index_and_offset(echo_log, tmp_path):
    data, _ = echo_log
    for index, off, kind, length in frames(data):
        for pos in (off + R.FRAME.size + length // 2, off + 7):   # inside the body; inside the CRC
            bad = bytearray(data)
            bad[pos] ^= 0x10
            p = replay_bytes(tmp_path, bytes(bad))
            line = assert_one_line_error(p, 3)
            assert f"record {index} at byte {off}" in line, line
            assert p.stdout == b"", "a damaged log is refused before anything runs"


def test_bad_length(echo_log, tmp_path):
    data, _ = echo_log
    index, off, kind, length = frames(data)[2]
    for new_len in (length + 1, length - 1, 0x7FFFFFFF):
        bad = bytearray(data)
        struct.pack_into("<I", bad, off + 2, new_len)
        line = assert_one_line_error(replay_bytes(tmp_path, bytes(bad)), 3)
        assert f"record {index} at byte {off}" in line


def test_wrong_version_even_with_a_valid_checksum(echo_log, tmp_path):
    data, _ = echo_log
    index, off, kind, length = frames(data)[1]
    bad = bytearray(data)
    bad[off] = 9
    body = bytes(bad[off + R.FRAME.size: off + R.FRAME.size + length])
    struct.pack_into("<I", bad, off + 6, zlib.crc32(body, zlib.crc32(bytes(bad[off:off + 6]))))
    line = assert_one_line_error(replay_bytes(tmp_path, bytes(bad)), 3)
    assert "format version 9" in line and f"record {index} at byte {off}" in line


def test_garbage(tmp_path):
    for junk in (b"hello, I am not a log\n" * 10, bytes(range(256)), b"\x00" * 64):
        line = assert_one_line_error(replay_bytes(tmp_path, junk), 3)
        assert "not an ftvm log" in line


def test_garbage_after_the_end_record(echo_log, tmp_path):
    data, _ = echo_log
    last = frames(data)[-1]
    line = assert_one_line_error(replay_bytes(tmp_path, data + b"\x01\x02garbage"), 3)
    assert f"record {last[0] + 1}" in line


def test_valid_checksum_but_nonsense_body_is_refused(echo_log, tmp_path):
    data, _ = echo_log
    index, off, kind, length = [f for f in frames(data) if f[2] == R.IRQ][0]
    body = b"\x93\xa1x\xa1y\xa1z"   # msgpack ["x", "y", "z"]: well-formed, wrong content
    head = R.FRAME_HEAD.pack(R.FORMAT_VERSION, kind, len(body))
    frame = head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + body
    bad = data[:off] + frame + data[off + R.FRAME.size + length:]
    p = replay_bytes(tmp_path, bad)
    line = assert_one_line_error(p, 3)
    assert f"record {index} at byte {off}" in line and "irq" in line


def test_truncated_log_replays_up_to_the_cut(echo_log, tmp_path):
    data, full_out = echo_log
    fr = frames(data)
    cuts = sorted({f[1] + 3 for f in fr[1:]} | {f[1] for f in fr[1:]} | {len(data) - 1})
    for cut in cuts:
        p = replay_bytes(tmp_path, data[:cut])
        line = assert_one_line_error(p, 4)
        assert "cut short" in line
        assert full_out.startswith(p.stdout), "replay prints a prefix of the recorded output"
    # Cut just before the end record: replay runs to the point of the last whole record
    # and no further (beyond it, an event the cut lost may have happened).
    end_off = fr[-1][1]
    p = replay_bytes(tmp_path, data[:end_off])
    assert p.returncode == 4
    last = [r for r in log_records_of(tmp_path, data[:end_off]) if hasattr(r, "blocks")][-1]
    assert f"up to block {last.blocks}" in p.stderr
    assert re.search(r"record \d+ \(byte \d+\)", p.stderr)


def log_records_of(tmp_path, data):
    p = tmp_path / "partial.ftlog"
    p.write_bytes(data)
    from logging_channel.logfile import LogReader
    with LogReader(p) as r:
        return [rec for _, _, rec in r]


def test_empty_and_magic_only(tmp_path):
    for data in (b"", R.FILE_MAGIC[:3], R.FILE_MAGIC):
        p = replay_bytes(tmp_path, data)
        assert p.returncode == 4, p.stderr
        assert "Traceback" not in p.stderr


def test_log_show_stops_at_damage(echo_log, tmp_path):
    data, _ = echo_log
    index, off, kind, length = frames(data)[3]
    bad = bytearray(data)
    bad[off + R.FRAME.size] ^= 0xFF
    p = tmp_path / "d.ftlog"
    p.write_bytes(bytes(bad))
    r = run_ftvm("log", "show", p)
    assert r.returncode == 3
    assert len(r.stdout.splitlines()) == index
    assert f"record {index} at byte {off}" in r.stderr


def _with_body(data, index, body: bytes):
    """The log with record ``index``'s body replaced by ``body``, under a valid CRC."""
    for i, off, kind, length in frames(data):
        if i == index:
            version = data[off]
            head = R.FRAME_HEAD.pack(version, kind, len(body))
            frame = head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + body
            return data[:off] + frame + data[off + R.FRAME.size + length:]
    raise AssertionError(index)


@pytest.mark.parametrize("where", ["end", "middle"])
def test_malformed_body_with_a_valid_crc_is_refused_before_any_output(echo_log, tmp_path, where):
    """A record whose CRC is right but whose body is not a record (a buggy or hostile
    writer): refused before the guest prints anything (docs/log-format.md)."""
    import msgpack
    data, _ = echo_log
    fr = frames(data)
    index = fr[-1][0] if where == "end" else next(i for i, _, kind, _ in fr[len(fr) // 2:] if kind != R.END)
    bad = _with_body(data, index, msgpack.packb(["not", "a", "record"]))
    p = replay_bytes(tmp_path, bad)
    assert p.returncode != 0
    assert p.stdout == b"", "refused before any output"
    assert f"record {index}" in p.stderr or f"#{index}" in p.stderr or str(index) in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
