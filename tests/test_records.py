"""Unit tests of the log record format (pure code)."""
import ast
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logging_channel import records as R

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)


def digest_st():
    regs = st.tuples(*[st.integers(0, 2**128 - 1) if n.startswith("xmm") else u64 for n in R.DIGEST_REGS])
    return st.builds(R.Digest, u64, u64, u64, regs,
                     st.lists(st.tuples(u64, u32), max_size=4).map(tuple), u64, u32)


@st.composite
def tsc_st(draw):
    n = draw(st.integers(1, 50))
    blocks = sorted(draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n)))
    pcs = draw(st.lists(st.integers(0x400000, 0x500000), min_size=n, max_size=n))
    values = draw(st.lists(u64, min_size=n, max_size=n))
    return R.TscBatch.from_entries(blocks, pcs, values)


records = st.one_of(
    st.builds(R.Input, u64, u64, st.one_of(st.none(), st.binary(max_size=64))),
    st.builds(R.Irq, u64, u64, st.integers(0, 255)),
    st.builds(R.Rng, u64, u32),
    tsc_st(),
    digest_st(),
    st.builds(R.End, st.sampled_from(R.END_REASONS), st.integers(0, 255), st.text(max_size=40), digest_st(), u64),
)


@given(records)
def test_round_trip(rec):
    frame = R.encode(rec)
    back, size = R.decode(frame)
    assert back == rec and size == len(frame)


@settings(max_examples=60)
@given(records, st.data())
def test_any_single_bit_flip_is_caught(rec, data):
    frame = bytearray(R.encode(rec))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(R.FrameError):
        back, _ = R.decode(bytes(frame))
        # A flip in the length field can make the frame look truncated; it never decodes.
        assert back != rec


def test_rdtsc_entries_are_small():
    n = 10_000
    batch = R.TscBatch.from_entries(range(0, 12 * n, 12), (0x401234,) * n, range(10**9, 10**9 + 150 * n, 150))
    assert len(R.encode(batch)) / n <= 5


def test_truncated_frame_is_reported_as_truncated():
    frame = R.encode(R.Irq(1, 2, 3))
    for cut in range(len(frame)):
        with pytest.raises(R.FrameError) as e:
            R.decode(frame[:cut])
        assert e.value.truncated


@settings(max_examples=60)
@given(st.lists(records, min_size=1, max_size=6), st.data())
def test_a_run_of_frames_is_checked_in_one_call(recs, data):
    """frames.check (C) takes exactly the runs decode takes, one bit flip anywhere is
    refused naming the frame, and the run slices and joins like the list of frames."""
    from logging_channel import frames as F
    blob = b"".join(R.encode(r) for r in recs)
    run = F.check(blob)
    assert len(run) == len(recs) and list(run.records()) == recs
    i = data.draw(st.integers(0, len(recs)))
    assert run[i:].join() == b"".join(R.encode(r) for r in recs[i:]) and list(run[i:]) == [R.encode(r) for r in recs[i:]]
    bad = bytearray(blob)
    bit = data.draw(st.integers(0, len(blob) * 8 - 1))
    bad[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(R.FrameError):
        F.check(bytes(bad))


PURE = ["logging_channel/records.py"]
FORBIDDEN = {"zmq", "socket", "time", "random", "os", "threading", "unicorn", "subprocess"}


@pytest.mark.parametrize("path", PURE)
def test_deterministic_core_does_no_io(path):
    root = pathlib.Path(__file__).resolve().parents[1]
    tree = ast.parse((root / path).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names & FORBIDDEN, f"{path} imports {names & FORBIDDEN}"
