"""Host-side tests of the kv server's portable core (guest_programs/kv/*.c).

The core is compiled with the host's gcc together with tests/kv_hosttest.c,
a driver that simulates the network and disk devices and runs a small script (see the
comment at its top). The tests here write scripts, run them and check the replies,
the console and the disk image. The disk format is also re-implemented here
(independently, with zlib's CRC-32) to build images by hand: stale generations,
torn tails, out-of-order epochs.
"""
import os
import random
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GP = ROOT / "guest_programs"
SECTOR = 4096
SMALL_DISK = 2 + 2 * 640          # the smallest disk kv uses: two 2.5 MiB regions


# --- building and running the driver -----------------------------------------------

@pytest.fixture(scope="module")
def kvh(tmp_path_factory):
    gcc = shutil.which("gcc")
    if not gcc:
        pytest.skip("gcc is not installed")
    out = tmp_path_factory.mktemp("kvhost") / "kvhost"
    flags = ["-O2", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Werror"]
    if os.environ.get("KV_SANITIZE"):
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    sources = sorted((GP / "kv").glob("*.c")) + [ROOT / "tests" / "kv_hosttest.c"]
    p = subprocess.run([gcc, *flags, "-I", str(GP), *map(str, sources), "-o", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return Runner(out)


def esc(b: bytes) -> str:
    out = []
    for c in b:
        if c == 0x5C:
            out.append("\\\\")
        elif 32 <= c < 127:
            out.append(chr(c))
        else:
            out.append(f"\\x{c:02x}")
    return "".join(out)


def unesc(s: str) -> bytes:
    out, i = bytearray(), 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            n = s[i + 1]
            if n == "r":
                out += b"\r"; i += 2
            elif n == "n":
                out += b"\n"; i += 2
            elif n == "\\":
                out += b"\\"; i += 2
            elif n == "x":
                out.append(int(s[i + 2:i + 4], 16)); i += 4
            else:
                raise AssertionError(f"bad escape in {s!r}")
        else:
            out += c.encode("latin-1"); i += 1
    return bytes(out)


def resp(*args) -> bytes:
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class Result:
    def __init__(self, text):
        self.text = text
        self.console = []
        self.dumps = []           # (conn, closed, bytes) in order
        self.stats = []
        self.crashes = 0
        for line in text.splitlines():
            if line.startswith("OUT "):
                _, conn, closed, *rest = line.split(" ", 3)
                self.dumps.append((int(conn), closed == "1", unesc(rest[0] if rest else "")))
            elif line.startswith("STAT "):
                self.stats.append(dict(kv.split("=") for kv in line[5:].split()))
            elif line == "CRASHED":
                self.crashes += 1
            elif line.startswith("ERROR"):
                raise AssertionError(f"driver: {line}\n{text[-3000:]}")
            else:
                self.console.append(line)

    def out(self, conn, n=0):
        """The n-th dump of connection conn: (bytes, closed)."""
        got = [(d, c) for cc, c, d in self.dumps if cc == conn]
        return got[n]


class Runner:
    def __init__(self, exe):
        self.exe = exe

    def __call__(self, lines, expect_rc=0):
        script = "\n".join(lines) + "\n"
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")   # a simulated crash leaks on purpose
        p = subprocess.run([str(self.exe)], input=script.encode("latin-1"), capture_output=True, timeout=300,
                           env=env)
        text = p.stdout.decode("latin-1")
        assert p.returncode == expect_rc, f"rc {p.returncode}\n{text[-3000:]}\n{p.stderr.decode()[-3000:]}"
        return Result(text)


def send(conn, data: bytes):
    return f"data {conn} {esc(data)}"


def session(conn, *cmds):
    """Lines that open conn, send the commands (one data event), settle and dump."""
    return [f"open {conn}", send(conn, b"".join(resp(*c) for c in cmds)), "settle", f"dump {conn}"]


# --- the protocol -------------------------------------------------------------------

def test_pipelined_and_split_commands(kvh):
    pipeline = b"".join(resp("SET", f"k{i}", f"v{i}") + resp("GET", f"k{i}") for i in range(100))
    split = resp("SET", "split", "x" * 300) + resp("GET", "split") + b"PING\r\n"
    lines = ["disk 0", "boot", "open 1", send(1, pipeline), "settle", "dump 1", "open 2"]
    # the second client's commands arrive in pieces of 1, 2, 3 ... bytes
    i, k = 0, 1
    while i < len(split):
        lines.append(send(2, split[i:i + k]))
        i += k
        k = k % 7 + 1
    lines += ["settle", "dump 2"]
    r = kvh(lines)
    assert r.out(1)[0] == b"".join(b"+OK\r\n$%d\r\nv%d\r\n" % (len(str(i)) + 1, i) for i in range(100))
    assert r.out(2)[0] == b"+OK\r\n$300\r\n" + b"x" * 300 + b"\r\n+PONG\r\n"
    assert "kv: no disk attached, data lives in memory only" in r.console
    assert r.console[-1] == "kv: ready"


def test_inline_commands(kvh):
    inline = (b"PING\r\n\r\n  \r\nset a hello\r\nGET a\n"
              b"set \"x y\" \"q\\x41\\n\\\"\"\r\nget \"x y\"\r\n"
              b"set s 'it\\'s'\r\nget s\r\necho hi\r\n")
    r = kvh(["disk 0", "boot", "open 1", send(1, inline), "settle", "dump 1",
             "open 2", send(2, b"set \"unbalanced x\r\nPING\r\n"), "settle", "dump 2",
             "open 3", send(3, b"get a\r\n"), "settle", "dump 3"])
    assert r.out(1)[0] == (b"+PONG\r\n+OK\r\n$5\r\nhello\r\n+OK\r\n$4\r\nqA\n\"\r\n"
                           b"+OK\r\n$4\r\nit's\r\n$2\r\nhi\r\n")
    assert r.out(2) == (b"-ERR Protocol error: unbalanced quotes in request\r\n", True)
    assert r.out(3) == (b"$5\r\nhello\r\n", False)


@pytest.mark.parametrize("bad, message", [
    (b"*abc\r\n", b"invalid multibulk length"),
    (b"*99999999\r\n", b"invalid multibulk length"),
    (b"*1\r\n$x\r\n", b"invalid bulk length"),
    (b"*1\r\n$-5\r\n", b"invalid bulk length"),
    (b"*1\r\n$99999999999\r\n", b"invalid bulk length"),
    (b"*1\r\n$2000000\r\n", b"invalid bulk length"),
    (b"*1\r\nfoo\r\n", b"expected '$', got 'f'"),
    (b"*1\r\n$3\r\nabcde\r\n", b"bulk string not terminated by CRLF"),
    (b"*2\nfoo", b"invalid multibulk length"),
    (b"x" * 70000, b"too big inline request"),
])
def test_malformed_input_closes_only_that_connection(kvh, bad, message):
    r = kvh(["disk 0", "boot", "open 1", "open 2", send(2, resp("SET", "a", "1")), "settle",
             send(1, resp("PING") + bad + resp("PING")), "settle", "dump 1",
             send(1, resp("PING")), send(2, resp("GET", "a")), "settle", "dump 1", "dump 2"])
    out, closed = r.out(1)
    assert out == b"+PONG\r\n-ERR Protocol error: " + message + b"\r\n"
    assert closed
    assert r.out(1, 1) == (b"", True)           # nothing more for a closed connection
    assert r.out(2) == (b"+OK\r\n$1\r\n1\r\n", False)


def test_incomplete_command_waits_for_more(kvh):
    r = kvh(["disk 0", "boot", "open 1", send(1, b"*2\r\n$3\r\nGET\r\n$1\r"), "settle", "dump 1",
             send(1, b"\nk\r\n"), "settle", "dump 1"])
    assert r.out(1) == (b"", False)
    assert r.out(1, 1) == (b"$-1\r\n", False)


def test_incr_semantics(kvh):
    cmds = [("INCR", "n"), ("INCRBY", "n", "41"), ("DECR", "n"), ("DECRBY", "n", "-10"), ("GET", "n"),
            ("SET", "s", "abc"), ("INCR", "s"), ("SET", "sp", " 1"), ("INCR", "sp"),
            ("SET", "lz", "01"), ("INCR", "lz"), ("SET", "pl", "+1"), ("INCR", "pl"),
            ("SET", "big", "9223372036854775807"), ("INCR", "big"), ("GET", "big"),
            ("SET", "neg", "-9223372036854775808"), ("DECR", "neg"), ("INCR", "neg"),
            ("INCRBY", "n", "x"), ("INCRBY", "n", "99999999999999999999"), ("INCR", "a", "b")]
    r = kvh(["disk 0", "boot", *session(1, *cmds)])
    nonint = b"-ERR value is not an integer or out of range\r\n"
    overflow = b"-ERR increment or decrement would overflow\r\n"
    assert r.out(1)[0] == (b":1\r\n:42\r\n:41\r\n:51\r\n$2\r\n51\r\n"
                           b"+OK\r\n" + nonint + b"+OK\r\n" + nonint + b"+OK\r\n" + nonint + b"+OK\r\n" + nonint +
                           b"+OK\r\n" + overflow + b"$19\r\n9223372036854775807\r\n"
                           b"+OK\r\n" + overflow + b":-9223372036854775807\r\n" +
                           nonint + nonint + b"-ERR wrong number of arguments for 'incr' command\r\n")


def test_mset_mget_append_del_exists(kvh):
    cmds = [("MSET", "a", "1", "b", "2", "c", "3"), ("MGET", "a", "x", "b", "c"), ("MSET", "a", "1", "b"),
            ("APPEND", "a", "23"), ("APPEND", "new", "xyz"), ("MGET", "a", "new"), ("STRLEN", "a"),
            ("EXISTS", "a", "a", "b", "nope"), ("DEL", "a", "b", "nope", "a"), ("DEL", "nope"),
            ("EXISTS", "a", "b", "c"), ("DBSIZE",)]
    r = kvh(["disk 0", "boot", *session(1, *cmds)])
    assert r.out(1)[0] == (b"+OK\r\n*4\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n$1\r\n3\r\n"
                           b"-ERR wrong number of arguments for 'mset' command\r\n"
                           b":3\r\n:3\r\n*2\r\n$3\r\n123\r\n$3\r\nxyz\r\n:3\r\n"
                           b":3\r\n:2\r\n:0\r\n:1\r\n:2\r\n")


def test_client_and_admin_commands(kvh):
    cmds = [("PING",), ("PING", "hi"), ("ECHO", "x y"), ("CONFIG", "GET", "save"), ("config", "get", "appendonly"),
            ("COMMAND",), ("COMMAND", "DOCS"), ("CLIENT", "SETINFO", "LIB-NAME", "redis-py"),
            ("CLIENT", "SETNAME", "me"), ("SELECT", "0"), ("SELECT", "1"), ("SELECT", "x"),
            ("XYZ", "a"), ("GET",), ("GET", "a", "b"), ("SET", "k", "v", "EX", "10"), ("SET", "k", "v", "NX"),
            ("set", "k", "v"), ("FLUSHALL",), ("DBSIZE",), ("QUIT",), ("PING",)]
    r = kvh(["disk 0", "boot", *session(1, *cmds), "open 2", send(2, resp("INFO")), "settle", "dump 2"])
    out, closed = r.out(1)
    assert out == (b"+PONG\r\n$2\r\nhi\r\n$3\r\nx y\r\n*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
                   b"*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n*0\r\n*0\r\n+OK\r\n+OK\r\n+OK\r\n"
                   b"-ERR DB index is out of range\r\n-ERR value is not an integer or out of range\r\n"
                   b"-ERR unknown command 'XYZ'\r\n"
                   b"-ERR wrong number of arguments for 'get' command\r\n"
                   b"-ERR wrong number of arguments for 'get' command\r\n"
                   b"-ERR syntax error\r\n-ERR syntax error\r\n+OK\r\n+OK\r\n:0\r\n+OK\r\n")
    assert closed                                  # QUIT: +OK, then closed; the PING after it is not run
    info, _ = r.out(2)
    assert info.startswith(b"$") and b"# Server\r\nredis_version:7.0.0-ftvm\r\n" in info
    assert b"# Keyspace" in info and b"# Persistence" in info


def test_hello_switches_to_resp3(kvh):
    cmds = [("HELLO", "3"), ("GET", "nope"), ("MGET", "a", "nope"), ("CONFIG", "GET", "appendonly", "nosuch"),
            ("HELLO", "2", "AUTH", "u", "p", "SETNAME", "x"), ("GET", "nope"), ("HELLO", "4"), ("HELLO", "x"),
            ("INFO", "keyspace")]
    r = kvh(["disk 8192", "boot", "open 7", send(7, resp("SET", "a", "1")), "settle", "dump 7",
             *session(7, *cmds)])
    assert r.out(7)[0] == b"+OK\r\n"
    hello = (b"$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n$5\r\nproto\r\n:%d\r\n"
             b"$2\r\nid\r\n:7\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
             b"$7\r\nmodules\r\n*0\r\n")
    keyspace = b"# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n"
    assert r.out(7, 1)[0] == (b"%7\r\n" + hello % 3 + b"_\r\n*2\r\n$1\r\n1\r\n_\r\n"
                              b"%1\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n" +
                              b"*14\r\n" + hello % 2 + b"$-1\r\n-NOPROTO unsupported protocol version\r\n"
                              b"-ERR Protocol version is not an integer or out of range\r\n"
                              b"$%d\r\n%s\r\n" % (len(keyspace), keyspace))


def test_many_connections(kvh):
    n = 300
    lines = ["disk 8192", "boot"]
    for c in range(1, n + 1):
        lines += [f"open {c}", send(c, resp("SET", f"key{c}", f"val{c}") + resp("GET", f"key{c}"))]
    lines.append("settle")
    lines += [f"dump {c}" for c in range(1, n + 1)]
    r = kvh(lines)
    for c in range(1, n + 1):
        assert r.out(c) == (b"+OK\r\n$%d\r\nval%d\r\n" % (len(str(c)) + 3, c), False)


def test_eof_and_reset(kvh):
    r = kvh(["disk 8192", "boot",
             "open 1", send(1, resp("SET", "a", "1") + resp("GET", "a")), "eof 1",
             "open 2", send(2, resp("SET", "b", "2")), "reset 2",
             "open 3", send(3, resp("PING") + b"*2\r\n$3"), "eof 3",
             "settle", "dump 1", "dump 2", "dump 3",
             "open 4", send(4, resp("MGET", "a", "b")), "settle", "dump 4"])
    assert r.out(1) == (b"+OK\r\n$1\r\n1\r\n", True)     # replied after the write, then closed
    assert r.out(2) == (b"", False)                      # reset: nothing is sent
    assert r.out(3) == (b"+PONG\r\n", True)              # an incomplete command is dropped
    assert r.out(4) == (b"*2\r\n$1\r\n1\r\n$1\r\n2\r\n", False)


def test_out_of_memory_is_an_error_not_a_crash(kvh):
    big = 900 * 1024
    lines = ["disk 0", "boot", "open 1"]
    for i in range(25):
        lines += [send(1, b"*3\r\n$3\r\nSET\r\n$4\r\nb%03d\r\n$%d\r\n" % (i, big)), f"datarep 1 {big} z",
                  send(1, b"\r\n")]
    lines += ["settle", "dump 1", send(1, resp("DEL", "b000", "b001") + resp("SET", "after", "x" * 1000)
                                        + resp("DBSIZE")), "settle", "dump 1"]
    r = kvh(lines)
    out = r.out(1)[0]
    oks = out.count(b"+OK\r\n")
    assert 10 <= oks < 25
    assert out.count(b"-OOM ") == 25 - oks
    assert r.out(1, 1)[0] == b":2\r\n+OK\r\n:%d\r\n" % (oks - 1)


def test_big_values(kvh, tmp_path):
    v = bytes(random.Random(1).randrange(256) for _ in range(600 * 1024))
    cmd = resp("SET", b"big\x00key", v)
    lines = ["disk 16384", "boot", "open 1"]
    for i in range(0, len(cmd), 50000):               # many data events
        lines.append(send(1, cmd[i:i + 50000]))
    lines += ["settle", "dump 1", send(1, resp("GET", b"big\x00key") + resp("STRLEN", b"big\x00key")), "settle",
              "dump 1", send(1, resp("APPEND", b"big\x00key", v[:1000])), "settle", "dump 1",
              "boot", "open 2", send(2, resp("GET", b"big\x00key")), "settle", "dump 2"]
    r = kvh(lines)
    assert r.out(1)[0] == b"+OK\r\n"
    assert r.out(1, 1)[0] == b"$%d\r\n%s\r\n:%d\r\n" % (len(v), v, len(v))
    assert r.out(1, 2)[0] == b":%d\r\n" % (len(v) + 1000)
    assert r.out(2)[0] == b"$%d\r\n%s\r\n" % (len(v) + 1000, v + v[:1000])


# --- durability and group commit ------------------------------------------------------

def test_reply_only_after_the_write_completes(kvh):
    r = kvh(["disk 8192", "boot",
             "open 1", "open 2", "open 3",
             send(1, resp("SET", "a", "1") + resp("GET", "a")),
             send(2, resp("SET", "b", "2")),
             send(3, resp("GET", "a") + resp("DEL", "zzz")),
             "round", "pending", "dump 1", "dump 2", "dump 3",
             "complete", "pending", "dump 1", "round", "dump 1", "dump 2", "pending"])
    lines = r.text.splitlines()
    assert "PENDING 1" in lines                       # one write for both SETs (group commit)
    assert r.out(1, 0) == (b"", False)                # nothing before the write completed
    assert r.out(2, 0) == (b"", False)
    assert r.out(3, 0) == (b"$1\r\n1\r\n:0\r\n", False)   # reads are not held back
    assert r.out(1, 1) == (b"", False)                # completed, but not yet taken into account
    assert r.out(1, 2) == (b"+OK\r\n$1\r\n1\r\n", False)
    assert r.out(2, 1) == (b"+OK\r\n", False)


def test_group_commit_batches_while_a_write_is_in_flight(kvh):
    lines = ["disk 8192", "boot"]
    lines += [f"open {c}" for c in range(1, 21)]
    lines += [send(1, resp("SET", "first", "1")), "round", "pending"]
    lines += [send(c, resp("SET", f"k{c}", c)) for c in range(2, 21)]
    lines += ["round", "pending", "complete 1", "round", "pending", "dump 1", "dump 2",
              "complete 1", "round", "pending"] + [f"dump {c}" for c in range(2, 21)]
    r = kvh(lines)
    pend = [l for l in r.text.splitlines() if l.startswith("PENDING")]
    # The 19 SETs that came while the first write was in flight go out together in a
    # second write at once (pipelined), not after the first completes.
    assert pend == ["PENDING 1", "PENDING 2", "PENDING 1", "PENDING 0"]
    assert r.out(1)[0] == b"+OK\r\n"
    assert r.out(2)[0] == b""                          # in the second write
    assert all(r.out(c, 1 if c == 2 else 0)[0] == b"+OK\r\n" for c in range(2, 21))


def test_log_writes_in_flight_are_bounded_and_complete_in_order(kvh, tmp_path):
    img = tmp_path / "disk.img"
    lines = ["disk 8192", "boot"]
    for c in range(1, 8):          # one SET per round: a write each, while none completes
        lines += [f"open {c}", send(c, resp("SET", f"k{c}", "x" * (3000 + c))), "round", "pending"]
    lines += ["complete 1", "round", *[f"dump {c}" for c in range(1, 8)], "settle",
              *[f"dump {c}" for c in range(1, 8)], "stat", f"save {img}",
              "boot", *session(20, ("MGET", *[f"k{c}" for c in range(1, 8)]))]
    r = kvh(lines)
    pend = [int(l.split()[1]) for l in r.text.splitlines() if l.startswith("PENDING")]
    assert pend[:4] == [1, 2, 3, 4] and max(pend) == 4    # KV_WBATCH, then records wait
    assert r.out(1, 0)[0] == b"+OK\r\n"                   # the first write's client only
    assert all(r.out(c, 0)[0] == b"" for c in range(2, 8))
    assert all(r.out(c, 1)[0] == b"+OK\r\n" for c in range(2, 8))
    want = b"*7\r\n" + b"".join(b"$%d\r\n%s\r\n" % (3000 + c, b"x" * (3000 + c)) for c in range(1, 8))
    assert r.out(20)[0] == want                             # the log on disk has no hole


def test_a_failed_write_fails_the_writes_in_flight_behind_it(kvh):
    r = kvh(["disk 8192", "boot", *session(1, ("SET", "a", "1")),
             "fault write eio 1",
             "open 2", send(2, resp("SET", "b", "2")), "round",
             "open 3", send(3, resp("SET", "c", "3")), "round", "pending",
             "complete 1", "round", "dump 2", "dump 3", "complete 1", "round", "dump 3", "pending",
             *session(4, ("SET", "d", "4")),
             "boot", *session(5, ("MGET", "a", "b", "c", "d"))])
    assert "PENDING 2" in r.text.splitlines()
    assert r.out(2)[0] == b"-ERR disk write failed: I/O error\r\n"
    # c's write itself succeeded, but it follows the hole b's write left: not durable
    assert r.out(3, 0)[0] == b""
    assert r.out(3, 1)[0] == b"-ERR disk write failed: I/O error\r\n"
    assert r.out(4)[0] == b"+OK\r\n"
    # b's and c's records stayed in the log buffer and went out again with d's
    assert r.out(5)[0] == b"*4\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n$1\r\n4\r\n"


@pytest.mark.parametrize("torn", [0, 1])
def test_crash_with_writes_in_flight_keeps_what_was_acknowledged(kvh, torn):
    big = "v" * 6000
    r = kvh(["disk 8192", "boot",
             "open 1", send(1, resp("SET", "k1", big)), "round",
             "open 2", send(2, resp("SET", "k2", big)), "round",
             "open 3", send(3, resp("SET", "k3", big)), "round", "pending",
             "complete 1", "round", "dump 1", f"crashat 1 torn {torn}", "complete", "dump 2", "dump 3",
             "boot", *session(9, ("EXISTS", "k1"), ("EXISTS", "k2"), ("EXISTS", "k3"))])
    assert r.crashes == 1
    assert "PENDING 3" in r.text.splitlines()
    assert r.out(1)[0] == b"+OK\r\n"
    assert r.out(2)[0] == b"" and r.out(3)[0] == b""
    got = r.out(9)[0]
    assert got.startswith(b":1\r\n")                       # acknowledged: kept
    assert got in (b":1\r\n:0\r\n:0\r\n", b":1\r\n:1\r\n:0\r\n")   # never k3 without k2


def test_a_waiting_client_is_not_served_further(kvh):
    r = kvh(["disk 8192", "boot", "open 1",
             send(1, resp("SET", "a", "1") + resp("INCR", "a") + resp("GET", "a")),
             "round", "dump 1", "complete", "round", "dump 1", "complete", "round", "dump 1"])
    assert r.out(1, 0)[0] == b""
    assert r.out(1, 1)[0] == b"+OK\r\n"
    assert r.out(1, 2)[0] == b":2\r\n$1\r\n2\r\n"


def test_recovery_round_trip(kvh, tmp_path):
    rnd = random.Random(7)
    model = {}
    cmds = []
    for i in range(400):
        k = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 20)))
        op = rnd.random()
        if op < 0.5:
            v = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 3000)))
            cmds.append(("SET", k, v)); model[k] = v
        elif op < 0.6:
            kk = list(model)[:3]
            cmds.append(("DEL", *kk, k)); [model.pop(x, None) for x in kk + [k]]
        elif op < 0.7:
            v = b"abc"
            cmds.append(("APPEND", k, v)); model[k] = model.get(k, b"") + v
        elif op < 0.8:
            cmds.append(("SET", k, b"10")); cmds.append(("INCRBY", k, b"-3")); model[k] = b"7"
        else:
            pairs = [(bytes([65 + j]) + k, b"m%d" % j) for j in range(3)]
            cmds.append(("MSET", *[x for p in pairs for x in p])); model.update(pairs)
        if i == 150:
            cmds.append(("FLUSHALL",)); model.clear()
    keys = sorted(model)
    img = tmp_path / "disk.img"
    r = kvh(["disk 16384", "boot", *session(1, *cmds), "stat", f"save {img}",
             "boot", *session(2, ("MGET", *keys), ("DBSIZE",)), "stat"])
    assert len(r.out(1)[0]) > 0
    got = r.out(2)[0]
    want = b"*%d\r\n" % len(keys) + b"".join(b"$%d\r\n%s\r\n" % (len(model[k]), model[k]) for k in keys)
    assert got == want + b":%d\r\n" % len(keys)
    rec = [l for l in r.console if l.startswith("kv: recovered")]
    assert rec and re.match(r"kv: recovered %d keys from \d+ log records \(generation 1\)" % len(keys), rec[0])
    assert r.stats[0] == r.stats[1]


def test_crash_mid_write_loses_only_unacknowledged_data(kvh):
    for torn in (0, 1, 2):
        big = "v" * 5000      # the second write spans several sectors, so it can tear
        lines = ["disk 8192", "boot", *session(1, ("SET", "acked", "yes")),
                 "open 2", send(2, b"".join(resp("SET", f"lost{i}", big) for i in range(1))),
                 "open 3", send(3, resp("MSET", *[x for i in range(4) for x in (f"m{i}", big)])),
                 "round", f"crashat 1 torn {torn}", "complete", "dump 2", "dump 3",
                 "boot", *session(9, ("MGET", "acked", "lost0", "m0", "m3"), ("DBSIZE",))]
        r = kvh(lines)
        assert r.crashes == 1
        assert r.out(1)[0] == b"+OK\r\n"
        assert r.out(2)[0] == b"" and r.out(3)[0] == b""
        got = r.out(9)[0]
        # a torn write may have persisted the first record (its sector came through),
        # never a partial MSET
        assert got.startswith(b"*4\r\n$3\r\nyes\r\n")
        assert got.endswith(b"$-1\r\n$-1\r\n:1\r\n") or got.endswith(b"$-1\r\n$-1\r\n:2\r\n")
        assert b"$-1\r\n$-1\r\n$-1\r\n:1" in got or torn > 0


def test_garbage_tail_is_ignored(kvh, tmp_path):
    img = tmp_path / "disk.img"
    r = kvh(["disk 4096", "boot", *session(1, *[("SET", f"k{i}", "x" * i) for i in range(50)]), "stat",
             f"save {img}"])
    logend = int(r.stats[0]["logend"])
    data = bytearray(img.read_bytes())
    start = 2 * SECTOR + logend                   # region 0 starts at sector 2
    rnd = random.Random(3)
    data[start:start + 3 * SECTOR] = bytes(rnd.randrange(256) for _ in range(3 * SECTOR))
    # and a well-formed record of the right generation, but with a wrong CRC
    sb = parse_sb(data)
    rec = bytearray(record(2, [b"evil", b"1"], sb["disk_id"], sb["gen"], sb["sbseq"], 50))
    rec[-1] ^= 1
    data[start:start + len(rec)] = rec
    img.write_bytes(bytes(data))
    r = kvh([f"load {img}", "boot", *session(2, ("DBSIZE",), ("GET", "k49"), ("GET", "evil"),
                                             ("SET", "after", "1")),
             "boot", *session(3, ("DBSIZE",), ("GET", "after"))])
    assert r.out(2)[0] == b":50\r\n$49\r\n" + b"x" * 49 + b"\r\n$-1\r\n+OK\r\n"
    assert r.out(3)[0] == b":51\r\n$1\r\n1\r\n"


# --- the disk format, independently -------------------------------------------------

def record(type_, args, disk_id, gen, epoch, index):
    payload = struct.pack("<I", len(args)) + b"".join(struct.pack("<I", len(a)) + a for a in args)
    tail = struct.pack("<IIIIIHH", disk_id, gen, epoch, index, len(payload), type_, 0)
    return struct.pack("<II", 0x314C564B, zlib.crc32(tail + payload)) + tail + payload


def superblock(sbseq, gen, disk_id, region, region_sectors, snap_records, snap_bytes, base_seq, sectors):
    b = struct.pack("<IIQIIIIIIQQQ", 0x4253564B, 1, sbseq, gen, disk_id, region, region_sectors,
                    snap_records, 0, snap_bytes, base_seq, sectors)
    return (b + struct.pack("<I", zlib.crc32(b))).ljust(SECTOR, b"\0")


def parse_sb(data):
    best = None
    for slot in (0, 1):
        b = data[slot * SECTOR:slot * SECTOR + 68]
        magic, ver, sbseq, gen, disk_id, region, rs, nsnap, _, snap_bytes, base, sectors = \
            struct.unpack("<IIQIIIIIIQQQ", b[:64])
        if magic == 0x4253564B and zlib.crc32(b[:64]) == struct.unpack("<I", b[64:68])[0]:
            if best is None or sbseq > best["sbseq"]:
                best = dict(slot=slot, sbseq=sbseq, gen=gen, disk_id=disk_id, region=region,
                            region_sectors=rs, snap_records=nsnap, snap_bytes=snap_bytes)
    return best


def build_image(path, sectors, sb, region_bytes_at):
    data = bytearray(sectors * SECTOR)
    data[0:SECTOR] = sb
    for region_off, blob in region_bytes_at:
        data[region_off:region_off + len(blob)] = blob
    path.write_bytes(bytes(data))


def test_format_matches_the_documented_layout(kvh, tmp_path):
    img = tmp_path / "disk.img"
    r = kvh(["disk 4096", "boot", *session(1, ("SET", "a", "1"), ("DEL", "a"), ("APPEND", "b", "xy")),
             f"save {img}"])
    assert "kv: formatted a new disk of 4096 sectors" in r.console
    data = img.read_bytes()
    sb = parse_sb(data)
    assert sb["gen"] == 1 and sb["region"] == 0 and sb["region_sectors"] == (4096 - 2) // 2
    assert sb["sbseq"] == 1
    base = 2 * SECTOR
    recs = [record(2, [b"a", b"1"], sb["disk_id"], 1, 1, 0), record(3, [b"a"], sb["disk_id"], 1, 1, 1),
            record(4, [b"b", b"xy"], sb["disk_id"], 1, 1, 2)]
    blob = b"".join(recs)
    assert data[base:base + len(blob)] == blob
    assert data[base + len(blob):base + SECTOR] == bytes(SECTOR - len(blob))


def test_stale_generation_and_epoch_rules(kvh, tmp_path):
    sectors = 4096
    rs = (sectors - 2) // 2
    did = 0xABCDEF01
    sb = superblock(sbseq=9, gen=3, disk_id=did, region=0, region_sectors=rs, snap_records=0, snap_bytes=0,
                    base_seq=0, sectors=sectors)
    good = [record(2, [b"k%d" % i, b"v%d" % i], did, 3, 5 + (i // 2), i) for i in range(4)]

    def recovered(tail):
        img = tmp_path / "t.img"
        build_image(img, sectors, sb, [(2 * SECTOR, b"".join(good) + tail)])
        r = kvh([f"load {img}", "boot", *session(1, ("DBSIZE",), ("MGET", "k3", "x"))])
        return r.out(1)[0], r.console

    base = b"*2\r\n$2\r\nv3\r\n"
    assert recovered(b"") == (b":4\r\n" + base + b"$-1\r\n", recovered(b"")[1])
    # a stale record from generation 1, right index, valid CRC: rejected
    out, _ = recovered(record(2, [b"x", b"stale"], did, 1, 6, 4))
    assert out == b":4\r\n" + base + b"$-1\r\n"
    # right generation, but the index is out of sequence
    assert recovered(record(2, [b"x", b"1"], did, 3, 6, 7))[0] == b":4\r\n" + base + b"$-1\r\n"
    # an epoch that goes backwards (a stale record of an earlier run) is rejected
    assert recovered(record(2, [b"x", b"1"], did, 3, 4, 4))[0] == b":4\r\n" + base + b"$-1\r\n"
    # an epoch above the superblock's sbseq (the run's superblock never made it) too
    assert recovered(record(2, [b"x", b"1"], did, 3, 10, 4))[0] == b":4\r\n" + base + b"$-1\r\n"
    # another disk's record
    assert recovered(record(2, [b"x", b"1"], did ^ 1, 3, 6, 4))[0] == b":4\r\n" + base + b"$-1\r\n"
    # a snapshot-type record after the snapshot
    assert recovered(record(1, [b"x", b"1"], did, 3, 6, 4))[0] == b":4\r\n" + base + b"$-1\r\n"
    # while a good next record is taken, and the console says so
    out, console = recovered(record(2, [b"x", b"ok"], did, 3, 9, 4))
    assert out == b":5\r\n" + base + b"$2\r\nok\r\n"
    assert "kv: recovered 5 keys from 5 log records (generation 3)" in console


def test_older_superblock_and_snapshot(kvh, tmp_path):
    """Two superblocks: the higher sbseq wins even in slot 1; its snapshot is loaded
    and the log after it replayed; a torn newer superblock leaves the older in force."""
    sectors = 4096
    rs = (sectors - 2) // 2
    did = 77
    snap = [record(1, [b"s%d" % i, b"snap%d" % i], did, 4, 6, i) for i in range(3)]
    snap_bytes = sum(map(len, snap))
    log = [record(3, [b"s0"], did, 4, 7, 3), record(2, [b"n", b"new"], did, 4, 7, 4)]
    old = superblock(5, 3, did, 0, rs, 0, 0, 0, sectors)
    new = superblock(7, 4, did, 1, rs, 3, snap_bytes, 100, sectors)   # a later run rewrote it
    data = bytearray(sectors * SECTOR)
    data[0:SECTOR] = old
    data[SECTOR:2 * SECTOR] = new
    r1 = 2 * SECTOR + rs * SECTOR
    blob = b"".join(snap + log)
    data[r1:r1 + len(blob)] = blob
    r0 = 2 * SECTOR
    old_blob = record(2, [b"old", b"1"], did, 3, 5, 0)
    data[r0:r0 + len(old_blob)] = old_blob
    img = tmp_path / "a.img"
    img.write_bytes(bytes(data))
    r = kvh([f"load {img}", "boot", *session(1, ("MGET", "s0", "s1", "s2", "n", "old"))])
    assert r.out(1)[0] == b"*5\r\n$-1\r\n$5\r\nsnap1\r\n$5\r\nsnap2\r\n$3\r\nnew\r\n$-1\r\n"
    assert "kv: recovered 3 keys from 5 log records (generation 4)" in r.console
    # the newer superblock torn: the older one (generation 3, region 0) is used
    data[SECTOR + 20] ^= 0xFF
    img.write_bytes(bytes(data))
    r = kvh([f"load {img}", "boot", *session(1, ("MGET", "s1", "old"))])
    assert r.out(1)[0] == b"*2\r\n$-1\r\n$1\r\n1\r\n"


# --- compaction ---------------------------------------------------------------------

def fill_cmds(n, size, rounds):
    return [("SET", f"key{i % n}", f"{r}:" + "v" * size) for r in range(rounds) for i in range(n)]


def test_compaction_round_trip(kvh, tmp_path):
    img = tmp_path / "c.img"
    cmds = fill_cmds(20, 2000, 40)          # ~1.6 MiB of log for 40 KiB of data
    lines = ["disk %d" % SMALL_DISK, "boot"]
    for i in range(0, len(cmds), 50):
        lines += ["open %d" % (i + 1), send(i + 1, b"".join(resp(*c) for c in cmds[i:i + 50])), "settle"]
    lines += ["stat", f"save {img}", "boot", *session(5000, ("MGET", *[f"key{i}" for i in range(20)]),
                                                      ("SET", "after", "1")),
              "stat", "boot", *session(5001, ("GET", "key7"), ("GET", "after"), ("DBSIZE",)), "stat"]
    r = kvh(lines)
    comp = [l for l in r.console if l.startswith("kv: compacted the log into generation")]
    assert comp, r.console
    st = r.stats[0]
    assert int(st["gen"]) >= 2 and int(st["logend"]) < 2560 * 1024
    want = b"*20\r\n" + b"".join(b"$2003\r\n39:" + b"v" * 2000 + b"\r\n" for _ in range(20))
    assert r.out(5000)[0] == want + b"+OK\r\n"
    assert r.out(5001)[0] == b"$2003\r\n39:" + b"v" * 2000 + b"\r\n$1\r\n1\r\n:21\r\n"
    assert r.stats[1]["gen"] == st["gen"]
    # recovery read the snapshot in the new region
    assert any(re.match(r"kv: recovered 20 keys from \d+ log records \(generation %s\)" % st["gen"], l)
               for l in r.console)


def test_save_twice_reuses_a_region_without_replaying_stale_records(kvh):
    long_history = [("SET", f"old{i}", "x" * 100) for i in range(300)] + [("DEL", *[f"old{i}" for i in range(300)])]
    r = kvh(["disk 4096", "boot", *session(1, *long_history, ("SET", "a", "1"), ("SAVE",), ("SET", "b", "2"),
                                           ("SAVE",), ("SET", "c", "3")),
             "stat", "boot", *session(2, ("DBSIZE",), ("MGET", "a", "b", "c", "old5")), "stat"])
    assert r.out(1)[0].endswith(b"+OK\r\n" * 5)
    assert r.stats[0]["gen"] == "3" and r.stats[1]["gen"] == "3"
    assert r.out(2)[0] == b":3\r\n*4\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n$-1\r\n"


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_crash_during_compaction(kvh, crash_at):
    """SAVE writes the snapshot (here several requests) and then the superblock; a
    crash at any of those steps recovers the same data, from one generation or the other."""
    data = [("SET", f"k{i}", "%d:" % i + "d" * 30000) for i in range(60)]   # ~1.8 MiB: 2 snapshot writes
    r = kvh(["disk 8192", "boot", *session(1, *data, ("SET", "last", "L")),
             "open 2", f"crashat {crash_at} torn 1", send(2, resp("SAVE")),
             "boot", *session(3, ("DBSIZE",), ("GET", "k59"), ("GET", "last")), "stat"])
    assert r.crashes == 1
    assert r.out(3)[0] == b":61\r\n$30003\r\n59:" + b"d" * 30000 + b"\r\n$1\r\nL\r\n"
    assert r.stats[0]["gen"] in ("1", "2")


def test_log_full_and_deletes_still_work(kvh):
    val = "y" * 60000
    lines = ["disk %d" % SMALL_DISK, "boot", "open 1"]
    for i in range(60):
        lines += [send(1, resp("SET", f"u{i}", val)), "settle"]
    lines += ["dump 1",
              send(1, resp("DEL", "u0", "u1", "u2") + resp("DBSIZE")), "settle", "dump 1",
              "boot", *session(2, ("DBSIZE",))]
    r = kvh(lines)
    out = r.out(1)[0]
    assert out.count(b"+OK\r\n") >= 20
    assert b"-ERR persistence log is full" in out
    n = out.count(b"+OK\r\n")
    assert r.out(1, 1)[0] == b":3\r\n:%d\r\n" % (n - 3)
    assert r.out(2)[0] == b":%d\r\n" % (n - 3)


# --- disk errors ---------------------------------------------------------------------

@pytest.mark.parametrize("status, message", [("eio", b"I/O error"), ("enospc", b"no space left on device")])
def test_write_error_is_reported_and_retried(kvh, status, message):
    r = kvh(["disk 8192", "boot", *session(1, ("SET", "a", "1")),
             f"fault write {status} 1", *session(2, ("SET", "b", "2"), ("GET", "b")),
             *session(3, ("SET", "c", "3")),
             "boot", *session(4, ("MGET", "a", "b", "c"))])
    assert r.out(1)[0] == b"+OK\r\n"
    assert r.out(2)[0] == b"-ERR disk write failed: " + message + b"\r\n$1\r\n2\r\n"
    assert r.out(3)[0] == b"+OK\r\n"
    # b's record stayed in the log buffer and went out with c's: no hole in the log
    assert r.out(4)[0] == b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n"
    assert any(l.startswith("kv: disk write failed: ") for l in r.console)


def test_persistent_write_errors_never_crash(kvh):
    lines = ["disk 8192", "boot", "fault write enospc 1000"]
    for i in range(30):
        lines += [f"open {i + 1}", send(i + 1, resp("SET", f"k{i}", "v" * 50000)), "settle", f"dump {i + 1}"]
    lines += [*session(100, ("PING",), ("DBSIZE",))]
    r = kvh(lines)
    for i in range(30):
        out = r.out(i + 1)[0]
        assert out.startswith(b"-ERR disk write failed: no space left on device") or out.startswith(b"-OOM"), out
    assert r.out(100)[0].startswith(b"+PONG\r\n:")


def test_boot_superblock_write_failure(kvh):
    """The run's superblock must be on the disk before any record of the run: until it
    is, a mutation waits for another attempt, and fails (not applied) if that fails."""
    r = kvh(["disk 8192", "fault write eio 2", "boot", *session(1, ("SET", "a", "1"), ("GET", "a")),
             *session(2, ("SET", "b", "2")), "boot", *session(3, ("MGET", "a", "b"))])
    assert "kv: mutations wait until the superblock can be written" in r.console
    assert r.out(1)[0] == b"-ERR disk write failed: I/O error\r\n$-1\r\n"   # not applied
    assert r.out(2)[0] == b"+OK\r\n"
    assert r.out(3)[0] == b"*2\r\n$-1\r\n$1\r\n2\r\n"


def test_small_and_missing_disk(kvh):
    r = kvh(["disk 100", "boot", *session(1, ("SET", "a", "1"), ("GET", "a"))])
    assert any("too small" in l for l in r.console)
    assert r.out(1)[0] == b"+OK\r\n$1\r\n1\r\n"
