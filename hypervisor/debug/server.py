"""`ftvm replay LOG --gdb [HOST:]PORT`: a gdb remote-protocol server on a replay.

One debugger at a time: while one is attached, another connection is told so and
closed; the one attached is not disturbed. A client that sends garbage gets "-" (bad
checksum) or an error reply; a client that goes away, even in the middle of a command,
leaves the replay where that command left it, for the next client.

Writing guest memory or registers is refused (E01): the guest would then no longer
be the recorded run, and nothing after that point could be trusted.
"""
from __future__ import annotations

import select
import socket
import time

from ..errors import FtvmError
from . import rsp, target
from .timeline import BadPoint, Point, Stop, Timeline

SIGNALS = {132: 4, 136: 8, 139: 11, 133: 5}      # exit status of a fault -> gdb signal


class Disconnected(Exception):
    """The client went away."""


class GdbServer:
    def __init__(self, tl: Timeline, listen: str, say, program: str | None = None):
        self.tl = tl
        self.say = say
        host, port = parse_listen(listen)
        self.listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((host, port))
        except OSError as e:
            raise FtvmError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        self.listener.listen(4)
        self.address = self.listener.getsockname()[:2]
        self.program = program
        self.client = None
        self.reader = None
        self.noack = False
        self.last_stop = Stop("target")
        self.interrupt_seen = False
        self.closed = False
        self.reg_tid = 0            # the thread gdb reads registers of (Hg); 0: the running one
        tl.interrupted = self._interrupted

    def gdb_command(self):
        host, port = self.address
        where = f":{port}" if host in ("127.0.0.1", "::1", "localhost") else f"{host}:{port}"
        prog = f"{self.program} " if self.program else ""
        return f"gdb {prog}-ex 'target remote {where}'"

    # --- connections ------------------------------------------------------------------------
    def serve(self, once=False):
        """Serve clients one after the other (``once``: only the first)."""
        while not self.closed:
            r, _, _ = select.select([self.listener], [], [], 0.5)
            if not r:
                continue
            conn, addr = self.listener.accept()
            self.say(f"debugger connected from {addr[0]}:{addr[1]}")
            self._session(conn)
            self.say(f"debugger gone; replay stays at {self.tl.describe()}")
            if once:
                break

    def close(self):
        self.closed = True
        self.listener.close()

    def _refuse(self, conn):
        try:
            conn.sendall(rsp.frame("E.another debugger is attached to this replay"))
        except OSError:
            pass
        conn.close()
        self.say("refused a second debugger connection (one is attached)")

    def _session(self, conn):
        self.client, self.reader, self.noack = conn, rsp.PacketReader(), False
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                r, _, _ = select.select([conn, self.listener], [], [])
                if self.listener in r:
                    other, _ = self.listener.accept()
                    self._refuse(other)
                if conn not in r:
                    continue
                data = conn.recv(65536)
                if not data:
                    return
                for ev in self.reader.feed(data):
                    if not self._event(ev):
                        return
        except (Disconnected, ConnectionError, OSError):
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass
            self.client = None

    def _send(self, payload):
        try:
            self.client.sendall(rsp.frame(payload))
        except OSError:
            raise Disconnected() from None

    def _event(self, ev):
        kind = ev[0]
        if kind == "bad":
            self.say(f"debugger sent a damaged packet ({ev[1]}); asked for it again")
            if not self.noack:
                self.client.sendall(b"-")
            return True
        if kind in ("ack", "nack"):
            return True
        if kind == "interrupt":
            self._send(self._stop_reply(Stop("interrupt")))
            return True
        if not self.noack:
            self.client.sendall(b"+")
        return self._packet(ev[1])

    def _interrupted(self):
        """Polled between chunks of a long run: a 0x03 from gdb (or its departure)."""
        if self.client is None:
            return False
        try:
            r, _, _ = select.select([self.client], [], [], 0)
            if not r:
                return False
            data = self.client.recv(65536, socket.MSG_PEEK)
            if not data:
                return True                     # gone: stop now, the session ends after
            if data[:1] == b"\x03":
                self.client.recv(1)
                return True
            if data[:1] in (b"+", b"-"):
                self.client.recv(1)
        except OSError:
            return True
        return False

    # --- packets --------------------------------------------------------------------------------
    def _packet(self, p: bytes):
        try:
            text = p.decode("latin-1")
        except UnicodeDecodeError:
            self._send("E01")
            return True
        try:
            reply = self._dispatch(text)
        except BadPoint as e:
            reply = "E." + str(e)
        except (ValueError, IndexError) as e:
            self.say(f"debugger sent a packet we cannot parse ({text[:40]!r}: {e})")
            reply = "E01"
        if reply is None:
            return False
        self._send(reply)
        if text == "QStartNoAckMode":
            self.noack = True
        return not text.startswith("D")

    def _dispatch(self, t: str):
        tl = self.tl
        if t.startswith("qSupported"):
            return (f"PacketSize={rsp.PACKET_MAX:x};qXfer:features:read+;swbreak+;hwbreak+;"
                    "ReverseStep+;ReverseContinue+;QStartNoAckMode+;vContSupported+")
        if t == "QStartNoAckMode":
            return "OK"
        if t.startswith("qXfer:features:read:target.xml:"):
            off, length = (int(x, 16) for x in t.rsplit(":", 1)[1].split(","))
            xml = target.target_xml().encode()
            part = xml[off:off + length]
            return ("l" if off + length >= len(xml) else "m") + part.decode()
        if t.startswith("qXfer:"):
            return ""
        if t == "?":
            return self._stop_reply(self.last_stop)
        if t.startswith("Hg"):
            tid = _tid(t[2:])
            if tid not in (0, -1) and tid not in dict(tl.threads()):
                return "E01"
            self.reg_tid = tid
            return "OK"
        if t[:1] == "H" or t == "qSymbol::":
            return "OK"
        if t.startswith("T"):
            return "OK" if _tid(t[1:]) in dict(tl.threads()) else "E01"
        if t == "qfThreadInfo":
            return "m" + ",".join(f"{tid:x}" for tid, _ in tl.threads())
        if t == "qsThreadInfo":
            return "l"
        if t == "qC":
            return f"QC{tl.current_tid():x}"
        if t == "qAttached":
            return "1"
        if t.startswith("qThreadExtraInfo,"):
            return rsp.hexs(dict(tl.threads()).get(_tid(t.split(",", 1)[1]), "gone").encode())
        if t == "vCont?":
            return "vCont;c;C;s;S"
        if t == "g":
            regs = tl.registers_of(self.reg_tid)
            if regs is None:
                return "E01"
            return target.read_all(regs, self._orig_rax()).hex()
        if t[:1] == "p":
            i = int(t[1:], 16)
            regs = tl.registers_of(self.reg_tid)
            if i >= len(target.REGISTERS) or regs is None:
                return "E45"
            return target.read_register(regs, i, self._orig_rax()).hex()
        if t[:1] in "GPMX":
            self.say("refused a write to the guest's registers or memory: the replay would no longer be "
                     "the recorded run")
            return "E01"
        if t[:1] == "m":
            addr, n = (int(x, 16) for x in t[1:].split(","))
            return self._read_mem(addr, min(n, rsp.PACKET_MAX // 2))
        if t[:1] in "Zz":
            return self._breakpoint(t)
        if t.startswith("vCont;"):
            action = t[6:].split(";")[0].split(":")[0]     # all-stop: the first action decides
            if action[:1] in ("s", "S"):
                return self._resume(tl.step)
            if action[:1] in ("c", "C"):
                return self._resume(tl.forward)
            return "E01"
        if t[:1] in ("c", "C"):
            return self._resume(tl.forward)               # a resume address is not supported: ignored
        if t[:1] in ("s", "S"):
            return self._resume(tl.step)
        if t == "bs":
            return self._resume(tl.reverse_step)
        if t == "bc":
            return self._resume(tl.reverse_continue)
        if t.startswith("qRcmd,"):
            try:
                return self._monitor(rsp.unhex_text(t[6:]))
            except BadPoint as e:          # gdb shows "O" output; an error reply here would be garbled
                self._send("O" + rsp.hexs(f"ftvm: {e}\n".encode()))
                return "OK"
        if t == "D" or t.startswith("D;"):
            return "OK"
        if t == "k" or t.startswith("vKill"):
            if t.startswith("vKill"):
                self._send("OK")
            return None
        return ""

    def _orig_rax(self):
        k = self.tl.rp.kernel
        if k is not None and k.pending is not None:
            return k.pending[0]
        return -1

    def _read_mem(self, addr, n):
        out = bytearray()
        while len(out) < n:
            a = addr + len(out)
            chunk = min(n - len(out), 4096 - (a & 0xFFF))
            try:
                out += self.tl.m.vcpu.read(a, chunk)
            except Exception:
                break
        return out.hex() if out else "E14"

    def _breakpoint(self, t):
        insert = t[0] == "Z"
        kind, addr, length = t[1:].split(",")[:3]
        addr = int(addr, 16)
        length = int(length.split(";")[0], 16)
        tl = self.tl
        if kind in ("0", "1"):
            (tl.add_breakpoint if insert else tl.remove_breakpoint)(addr)
            return "OK"
        wk = {"2": "watch", "3": "rwatch", "4": "awatch"}.get(kind)
        if wk is None:
            return ""
        if insert:
            tl.add_watchpoint(wk, addr, length)
        else:
            tl.remove_watchpoint(wk, addr, length)
        return "OK"

    def _resume(self, op):
        t0 = time.perf_counter()
        stop = op()
        self.last_stop = stop
        self.last_op_s = time.perf_counter() - t0
        return self._stop_reply(stop)

    def _stop_reply(self, stop: Stop):
        r = stop.reason
        self.reg_tid = 0
        th = f"thread:{self.tl.current_tid():x};"
        if r == "interrupt":
            return "T02" + th
        if r == "break":
            return "T05swbreak:;" + th
        if r in ("watch", "rwatch", "awatch"):
            return f"T05{r}:{stop.addr:x};" + th
        if r == "begin":
            return "T05replaylog:begin;" + th
        if r in ("exit", "end"):
            self.say(f"end of the recording: {stop.message}")
            return "T05replaylog:end;" + th
        if r == "fault":
            return f"T{SIGNALS.get(stop.status, 11):02x}" + th
        return "T05" + th

    # --- monitor commands -------------------------------------------------------------------------
    def _monitor(self, cmd):
        words = cmd.split(None, 1)
        verb = words[0] if words else "help"
        arg = words[1].strip() if len(words) > 1 else ""
        tl = self.tl
        if verb == "when":
            text = tl.describe()
        elif verb == "goto":
            if not arg:
                raise BadPoint("monitor goto POINT: a block count (120000), BLOCKS+N (N instructions after it), "
                               "'block N pc X' as `ftvm log show` prints it, #N (event), or sys:N (system call)")
            self._goto(arg)
            self.last_stop = Stop("target")
            text = (f"now at {tl.describe()}\n(gdb still shows the old place: `maint flush register-cache` "
                    "and `frame` show the new one)")
        elif verb == "checkpoints":
            lines = [f"{len(tl.checkpoints)} checkpoints, {tl.snapshot_bytes / 2**20:.1f} MiB "
                     f"(bound {tl.mem_max_bytes / 2**20:.0f} MiB), {tl.restores} restores so far"]
            lines += [f"  point {cp.point} ({cp.events} events){' temporary' if cp.temporary else ''}"
                      for cp in tl.checkpoints]
            text = "\n".join(lines)
        else:
            text = ("ftvm monitor commands:\n"
                    "  monitor when          the current execution point and event index\n"
                    "  monitor goto POINT    go there: a block count, BLOCKS+N, 'block N pc X' (as `ftvm log show`\n"
                    "                        prints it), #N (just before event N), sys:N (system call N pending),\n"
                    "                        or golive [N] (where a backup went live, in a whole-run log)\n"
                    "  monitor checkpoints   the snapshots reverse execution uses, and their memory")
        self._send("O" + rsp.hexs((text + "\n").encode()))
        return "OK"

    def _goto(self, arg):
        tl = self.tl
        a = arg.strip()
        parts = a.replace(",", " ").split()
        if a.startswith("#") or a.startswith("event:"):
            tl.goto_event(int(a.lstrip("#").removeprefix("event:")))
        elif a.startswith("sys:") or a.startswith("syscall:"):
            tl.goto_syscall(int(a.split(":", 1)[1]))
        elif parts and parts[0] == "golive":
            tl.goto_golive(int(parts[1]) if len(parts) > 1 else 0)
        elif parts and parts[0] == "block" and len(parts) >= 4 and parts[2] == "pc":
            tl.goto_pc(int(parts[1], 0), int(parts[3], 16))
        elif parts and parts[0] == "block" and len(parts) >= 2:
            tl.goto(_point(parts[1]))
        else:
            tl.goto(_point(a))


def _tid(text):
    """A thread id as gdb sends it: hex, -1 (all) or 0 (any); "p1.2" forms too."""
    t = text.strip()
    if t.startswith("p"):
        t = t.split(".", 1)[1] if "." in t else "0"
    return -1 if t == "-1" else int(t, 16)


def _point(text):
    try:
        if "+" in text:
            b, i = text.split("+", 1)
            return Point(int(b, 0), int(i, 0))
        return Point(int(text, 0), 0)
    except ValueError:
        raise BadPoint(f"{text!r} is not a point (examples: 120000, 120000+3, block 120000 pc 0x401000, #12, "
                       "sys:3)") from None


def parse_listen(text: str):
    """'PORT', ':PORT', 'HOST:PORT' or '[v6]:PORT' -> (host, port); loopback by default."""
    t = str(text).strip()
    host = "127.0.0.1"
    if t.startswith("["):
        h, _, rest = t[1:].partition("]")
        host, t = h, rest.lstrip(":")
    elif ":" in t:
        h, t = t.rsplit(":", 1)
        host = h or host
    try:
        port = int(t)
    except ValueError:
        raise FtvmError(f"--gdb {text!r}: give a port, or HOST:PORT") from None
    if not 0 <= port < 65536:
        raise FtvmError(f"--gdb {text!r}: port out of range")
    return host, port


def program_path(tl: Timeline, log_path: str) -> str:
    """A file gdb can read the guest's symbols from: the Linux program in its root, or
    the ftvm-ABI guest's ELF written out of the log next to it."""
    import os
    h = tl.header
    linux = h.config.get("linux")
    if linux:
        root = linux.get("root", "/")
        prog = linux.get("program", "")
        return prog if root in ("/", "") else os.path.join(root, prog.lstrip("/"))
    out = os.path.splitext(log_path)[0] + "." + os.path.basename(h.elf_name or "guest.elf")
    if not os.path.exists(out):
        with open(out, "wb") as f:
            f.write(h.elf)
    return out


def serve(log_path, listen, say, interval_ms=250, mem_max_bytes=1 << 30, once=False, on_ready=None):
    """What `ftvm replay LOG --gdb` does. Returns the exit status."""
    import shlex
    from ..console import fd_sink
    tl = Timeline(log_path, write=fd_sink(1), interval_s=interval_ms / 1000, mem_max_bytes=mem_max_bytes)
    server = GdbServer(tl, listen, say)
    prog = program_path(tl, str(log_path))
    server.program = shlex.quote(prog)
    say(f"gdb server for {log_path} on {server.address[0]}:{server.address[1]}; attach with:")
    say(f"  {server.gdb_command()}")
    say("reverse execution goes back to the start of the recording; snapshots every "
        f"{interval_ms} ms of replay, at most {mem_max_bytes >> 20} MiB (--snapshot-mem)")
    if on_ready is not None:
        on_ready(server)
    try:
        server.serve(once=once)
    finally:
        server.close()
    return 0
