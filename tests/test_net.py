"""The network device and the TCP front end: record/replay with real sockets, and
clients that keep their connections through a primary kill (netecho guest)."""
import json
import os
import signal
import socket
import struct
import subprocess
import time

import pytest

from conftest import FTVM, GUESTS, run_ftvm
from hypervisor.ft.transport import free_tcp_port
from hypervisor.sources.net import FRAME, parse_frames
from logging_channel import messages as M


def wait_port(port, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ftvm exited early with {proc.returncode}: {proc.stderr.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def start(args, tmp_path):
    port = free_tcp_port("127.0.0.1")
    p = subprocess.Popen([str(FTVM), *map(str, args), "--listen", f"127.0.0.1:{port}"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_port(port, p)
    return p, port


def talk(port, data: bytes) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            return out
        out += d


def test_frames_parse_across_chunk_boundaries():
    stream = FRAME.pack(7, 2, 3) + b"abc" + FRAME.pack(9, 3, 0)
    buf = bytearray()
    got = []
    for i in range(len(stream)):
        buf += stream[i:i + 1]
        got += parse_frames(buf)
    assert got == [(7, 2, b"abc"), (9, 3, b"")] and not buf


def test_netin_messages_are_shape_checked():
    ok = M.decode(M.encode(M.NETIN, "", 2, 5, [[1, 2, b"x"], [1, 3, b""]]))
    assert ok.payload == [[1, 2, b"x"], [1, 3, b""]]
    for bad in ([[1, 9, b"x"]], [[1, 2, "text"]], [[1, 2]], {"a": 1}):
        with pytest.raises(M.BadMessage):
            M.decode(M.encode(M.NETIN, "", 2, 5, bad))


def test_record_serves_clients_and_replays_identically(guests, tmp_path):
    log = tmp_path / "ne.ftlog"
    p, port = start(["record", GUESTS / "netecho.elf", "-o", log], tmp_path)
    # (connection 1 was wait_port's probe) pipelined lines, a line split across sends, a
    # connection reset, then a client that ends the guest
    assert talk(port, b"hello\nworld\n") == b"2:1 HELLO\n2:2 WORLD\n"
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"spl")
    time.sleep(0.2)
    s.sendall(b"it\n")
    f = s.makefile("rb")
    assert f.readline() == b"3:1 SPLIT\n"
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    f.close()
    s.close()                                           # RST
    time.sleep(0.3)                                     # (before the guest is told to exit)
    assert talk(port, b"abc\nexit\n") == b"4:1 ABC\n"
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert b"netecho: 4 connections, 4 lines" in out
    r = run_ftvm("replay", log)
    assert r.returncode == 0 and r.stdout == out, r.stderr
    show = run_ftvm("log", "show", log, "-k", "net", "--json")
    kinds = [json.loads(line)["type"] for line in show.stdout.decode().splitlines()]
    assert kinds.count("open") == 4 and "reset" in kinds and kinds.count("data") >= 4


def test_listen_on_a_taken_port_is_a_clear_error(guests, tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    for cmd in (["record", GUESTS / "netecho.elf", "-o", tmp_path / "x.ftlog"],
                ["run", GUESTS / "netecho.elf", "--run-dir", tmp_path / "rd"]):
        r = run_ftvm(*cmd, "--listen", f"127.0.0.1:{port}", timeout=30)
        assert r.returncode == 2 and "cannot listen there" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_ftvm("record", GUESTS / "netecho.elf", "-o", tmp_path / "x.ftlog", "--listen", "nonsense")
    assert r.returncode == 2 and "HOST:PORT" in r.stderr


def test_clients_keep_their_connections_through_a_primary_kill(guests, tmp_path):
    run_dir, log = tmp_path / "rd", tmp_path / "whole.ftlog"
    p, port = start(["run", GUESTS / "netecho.elf", "--run-dir", run_dir, "--log", log], tmp_path)
    socks = [socket.create_connection(("127.0.0.1", port), timeout=15) for _ in range(8)]
    files = [s.makefile("rb") for s in socks]
    pauses = []
    for i in range(1, 201):
        for s in socks:
            s.sendall(b"line %d\n" % i)
        for k, f in enumerate(files):
            t = time.monotonic()
            got = f.readline()
            pauses.append(time.monotonic() - t)
            assert got.endswith(b":%d LINE %d\n" % (i, i)), (k, i, got)   # no reply lost, repeated or reordered
        if i == 100:
            pids = json.loads((run_dir / "run.json").read_text())["pids"]
            os.kill(pids["A"], signal.SIGKILL)
    socks[0].sendall(b"exit\n")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert b"netecho: 9 connections, 1600 lines" in out
    assert "failover: node B is primary" in err.decode()
    assert max(pauses) > 0.05          # the kill happened while clients were connected ...
    assert max(pauses) < 5             # ... and they saw only a pause
    r = run_ftvm("replay", log)
    assert r.returncode == 0 and r.stdout == out, r.stderr
    summary = json.loads((run_dir / "observer.json").read_text())
    assert summary["net"]["connections"] == 9 and summary["conflicts"] == 0


def test_ctrl_c_ends_a_server_run(guests, tmp_path):
    p, port = start(["run", GUESTS / "netecho.elf", "--run-dir", tmp_path / "rd"], tmp_path)
    assert talk(port, b"x\n") == b"2:1 X\n"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert b"Traceback" not in err
