"""The kv guest (kv.elf) with standard Redis clients: redis-py, redis-cli and
redis-benchmark, through record/replay, a primary kill and a full restart."""
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import GUESTS, run_ftvm
from hypervisor.bench.kv import KvServer, resp

redis = pytest.importorskip("redis")


def client(kv):
    # No retries: a timed-out command must show up as an error, not be sent again.
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    return redis.Redis(host="127.0.0.1", port=kv.port, socket_timeout=15, decode_responses=True,
                       retry=Retry(NoBackoff(), 0))


def raw(port, data, timeout=10):
    """Send bytes; return everything read until the server closes (or times out)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return out, True
            out += d
    except socket.timeout:
        return out, False
    finally:
        s.close()


def test_commands_with_redis_py_and_redis_cli_then_replay(guests, tmp_path):
    log = tmp_path / "kv.ftlog"
    with KvServer("record", tmp_path, tmp_path / "kv.img", disk_size="64M", log=log) as kv:
        r = client(kv)
        assert r.ping() is True
        assert r.echo("hi") == "hi"
        assert r.set("a", "1") is True and r.get("a") == "1"
        assert [r.incr("n") for _ in range(3)] == [1, 2, 3]
        assert r.append("a", "23") == 3 and r.get("a") == "123"
        assert r.mset({"x": "1", "y": "2"}) is True and r.mget("x", "y", "nope") == ["1", "2", None]
        assert r.exists("x", "y", "nope") == 2 and r.delete("x", "nope") == 1
        assert r.dbsize() == 3
        with pytest.raises(redis.ResponseError, match="unknown command"):
            r.execute_command("NOSUCHCMD", "k")
        with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
            r.execute_command("GET")
        with pytest.raises(redis.ResponseError, match="not an integer"):
            r.incr("a") if r.set("a", "abc") else None
        big = "v" * 100_000
        assert r.set("big", big) and r.get("big") == big
        p = r.pipeline(transaction=False)
        for i in range(500):
            p.set(f"p{i}", i)
        for i in range(500):
            p.get(f"p{i}")
        res = p.execute()
        assert res[:500] == [True] * 500 and res[500:] == [str(i) for i in range(500)]
        cli = shutil.which("redis-cli")
        if cli:
            out = subprocess.run([cli, "-p", str(kv.port), "SET", "cli", "yes"], capture_output=True, text=True)
            assert out.stdout.strip() == "OK"
            out = subprocess.run([cli, "-p", str(kv.port), "GET", "cli"], capture_output=True, text=True)
            assert out.stdout.strip() == "yes"
        assert r.flushall() is True and r.dbsize() == 0
    assert b"kv: ready" in kv.console()
    rp = run_ftvm("replay", log)
    assert rp.returncode == 130 and rp.stdout == kv.console(), rp.stderr


def test_malformed_resp_and_garbage_close_only_that_connection(guests, tmp_path):
    with KvServer("record", tmp_path, tmp_path / "kv.img", disk_size="64M") as kv:
        out, closed = raw(kv.port, b"*2\r\n$3\r\nGET\r\n$-7\r\n")
        assert out.startswith(b"-ERR Protocol error") and closed
        rnd = random.Random(7)
        for _ in range(10):
            out, closed = raw(kv.port, bytes(rnd.randrange(256) for _ in range(300)) + b"\r\n", timeout=3)
            # whatever the bytes parse as, the server answers (an error, or replies to inline words)
            assert out == b"" or out[:1] in b"+-:$*", out[:80]
        r = client(kv)
        assert r.set("still", "serving") and r.get("still") == "serving"
        assert r.dbsize() >= 1


def test_fifty_concurrent_clients_with_redis_benchmark(guests, tmp_path):
    exe = shutil.which("redis-benchmark")
    if exe is None:
        pytest.skip("redis-benchmark not installed (make setup installs redis-tools)")
    with KvServer("run", tmp_path, tmp_path / "kv.img", disk_size="64M") as kv:
        p = subprocess.run([exe, "-p", str(kv.port), "-c", "50", "-n", "3000", "-t", "set,get,incr", "-P", "4",
                            "-r", "1000", "--csv"], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert '"SET"' in p.stdout and '"GET"' in p.stdout and '"INCR"' in p.stdout
        r = client(kv)
        assert 100 < r.dbsize() <= 2000          # key:<0..999> and counter:<0..999>


class Writers:
    """Threads that SET and INCR as fast as acknowledgements come, remembering every
    acknowledged write. Any client-side error is recorded (there must be none)."""

    def __init__(self, kv, n=4):
        self.kv, self.stop, self.errors = kv, threading.Event(), []
        self.sets = {}                   # key -> last acknowledged value
        self.incrs = [0] * n             # acknowledged INCRs of counter:<t>
        self.threads = [threading.Thread(target=self._run, args=(t,)) for t in range(n)]

    def _run(self, t):
        r = client(self.kv)
        i = 0
        try:
            while not self.stop.is_set():
                i += 1
                key, val = f"k:{t}:{i % 300}", f"{t}-{i}"
                assert r.set(key, val) is True
                self.sets[key] = val
                got = r.incr(f"counter:{t}")
                self.incrs[t] += 1
                assert got == self.incrs[t], (t, got, self.incrs[t])    # no lost or repeated INCR
        except Exception as e:   # noqa: BLE001 - recorded and asserted on
            self.errors.append(repr(e))

    def __enter__(self):
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for th in self.threads:
            th.join(60)

    def check(self, kv):
        r = client(kv)
        assert not self.errors, self.errors
        for key, val in self.sets.items():
            assert r.get(key) == val, key
        for t, n in enumerate(self.incrs):
            assert int(r.get(f"counter:{t}") or 0) == n


def test_no_acknowledged_write_lost_through_a_primary_kill_and_a_full_restart(guests, tmp_path):
    disk, log = tmp_path / "kv.img", tmp_path / "whole.ftlog"
    with KvServer("run", tmp_path, disk, disk_size="64M", log=log) as kv:
        with Writers(kv) as w:
            time.sleep(1.5)
            os.kill(kv.pids()["A"], signal.SIGKILL)
            time.sleep(2.5)
        assert sum(w.incrs) > 50, w.incrs
        w.check(kv)
        assert "failover: node B is primary" in kv.stderr()
    rp = run_ftvm("replay", log)          # the whole run, across the failover
    assert rp.returncode == 130 and rp.stdout == kv.console(), rp.stderr
    # Full restart: every node stopped; a new run on the same disk has every write.
    with KvServer("run", tmp_path, disk) as kv2:
        w.check(kv2)
    assert b"kv: recovered" in kv2.console()


def test_disk_errors_become_error_replies(guests, tmp_path):
    with KvServer("record", tmp_path, tmp_path / "kv.img", disk_size="64M",
                  env={"FTVM_DISK_FAULTS": "write:4-=enospc"}) as kv:
        r = client(kv)
        errors = 0
        for i in range(20):
            try:
                r.set(f"e{i}", "x")
            except redis.ResponseError as e:
                assert "no space" in str(e)
                errors += 1
        assert errors > 0
        assert r.ping() is True       # still serving


def test_three_nodes_two_primary_kills_with_state_transfer(guests, tmp_path):
    """With the view service: the kv's network and disk state travel in the state
    transfer to the new backup, which later takes over again."""
    log = tmp_path / "three.ftlog"
    with KvServer("run", tmp_path, tmp_path / "kv.img", disk_size="64M", log=log, nodes=3) as kv:
        with Writers(kv, n=2) as w:
            for _ in range(2):
                time.sleep(3.5)           # long enough for redundancy to be restored
                r = run_ftvm("kill", "primary", "--run-dir", kv.run_dir)
                assert r.returncode == 0, r.stderr
            time.sleep(2)
        w.check(kv)
        assert kv.stderr().count("failover: node") == 2, kv.stderr()
    rp = run_ftvm("replay", log)
    assert rp.returncode == 130 and rp.stdout == kv.console(), rp.stderr
