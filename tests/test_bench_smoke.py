"""`ftvm bench` itself: every part it runs exists (a part once went missing and only
the full bench noticed), and the kv bench's pure helpers behave."""
from hypervisor import bench
from hypervisor.bench import kv as bench_kv


def test_every_bench_part_is_defined():
    for name in ("plain_run", "record_run", "replay_run", "ft_run", "run_ft_bench", "run_views_bench", "run_bench"):
        assert callable(getattr(bench, name)), name
    for name in ("run_kv_bench", "kv_rows", "redis_benchmark", "client_pause"):
        assert callable(getattr(bench_kv, name)), name


def test_resp_encoding():
    assert bench_kv.resp("SET", "k", b"v\r\n") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n"


def test_kv_rows_report_ratio_and_targets():
    k = {"throughput": {"record": {"SET": {"rps": 1000, "p50_ms": 1, "p99_ms": 2},
                                   "GET": {"rps": 1000, "p50_ms": 1, "p99_ms": 2}},
                        "run": {"SET": {"rps": 800, "p50_ms": 2, "p99_ms": 3},
                                "GET": {"rps": 500, "p50_ms": 2, "p99_ms": 3}}},
         "recovery": {"log": {"log_bytes": 1000, "ready_s": 1.0}, "shared": {"log_bytes": 100, "ready_s": 1.0}},
         "pause_ms": [100, 400, 200]}
    rows = {r[0]: r for r in bench_kv.kv_rows(k)}
    set_row = next(r for n, r in rows.items() if n.startswith("kv SET"))
    get_row = next(r for n, r in rows.items() if n.startswith("kv GET"))
    assert set_row[3] == "0.80" and set_row[5] is True
    assert get_row[3] == "0.50" and get_row[5] is False
    pause = next(r for n, r in rows.items() if n.startswith("failover pause"))
    assert pause[2] == "median 200 ms" and pause[5] is True


def test_kv_ratio_is_the_median_of_interleaved_pairs():
    k = {"throughput": {"record": {"SET": {"rps": 2000, "p50_ms": 1, "p99_ms": 2}},
                        "run": {"SET": {"rps": 1000, "p50_ms": 2, "p99_ms": 3}}},
         "pairs": {"SET": [0.9, 0.6, 0.75], "GET": []},
         "recovery": {"log": {"log_bytes": 1000, "ready_s": 1.0}, "shared": {"log_bytes": 100, "ready_s": 1.0}},
         "pause_ms": [100]}
    rows = bench_kv.kv_rows(k)
    set_row = next(r for r in rows if r[0].startswith("kv SET"))
    assert set_row[3] == "0.75" and set_row[5] is True        # not 1000/2000 = 0.50
    each = next(r for r in rows if "each record/FT pair" in r[0])
    assert each[3] == "0.90 0.60 0.75"
