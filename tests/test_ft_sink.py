"""The primary's unacknowledged log (hypervisor/ft/sink.py) against a plain list of frames."""
from hypothesis import example, given, settings
from hypothesis import strategies as st

from logging_channel import records as R
from logging_channel.logfile import LogWriter
from hypervisor.ft.sink import FtSink

ops = st.lists(st.one_of(
    st.tuples(st.just("rec"), st.integers(0, 1 << 40)),
    st.tuples(st.just("blob"), st.integers(1, 5)),
    st.tuples(st.just("ack"), st.integers(0, 40)),
    st.tuples(st.just("send"), st.integers(0, 40), st.integers(0, 40), st.integers(1, 300)),
), max_size=40)


@settings(max_examples=80, deadline=None)
@given(ops)
@example([("blob", 2), ("send", 0, 2, 1)])   # a first run over the byte limit went whole
def test_sink_keeps_what_a_list_of_frames_keeps(tmp_path_factory, steps):
    w = LogWriter(str(tmp_path_factory.mktemp("sink") / "a.ftlog"))
    sink = FtSink(w)
    model, base = [], sink.base       # frames from index `base` on
    for op in steps:
        if op[0] == "rec":
            rec = R.Irq(op[1], 2, 3)
            sink.append(rec)
            model.append(R.encode(rec))
        elif op[0] == "blob":
            fs = [R.encode(R.Rng(i, 7)) for i in range(op[1])]
            sink.append_frames(b"".join(fs), len(fs))
            model += fs
        elif op[0] == "ack":
            n = base + op[1]
            sink.acked(n)
            drop = min(max(0, n - base), len(model))
            del model[:drop]
            base += drop
        else:
            first, upto = base + op[1], base + op[1] + op[2]
            blob, count = sink.frames_from(first, upto, max_bytes=op[3])
            want, size = [], 0
            for f in model[max(0, first - base):max(0, upto - base)]:
                if want and size + len(f) > op[3]:
                    break
                want.append(f)
                size += len(f)
            assert (blob, count) == (b"".join(want), len(want))
            sink.sent = max(sink.sent, upto)
        assert sink.records == base + len(model) and sink.bytes == sum(map(len, model))
        assert sink.unsent_bytes() == sum(map(len, model[max(0, sink.sent - base):]))
    w.close()
