"""The gdb remote serial protocol's framing, pure (no sockets): packets are
``$payload#xx`` with a modulo-256 checksum, ``}`` escapes ``# $ } *`` (XOR 0x20), the
receiver answers ``+`` or ``-`` (until no-ack mode), and a lone 0x03 byte is an
interrupt. See the gdb manual, "Remote Protocol".
"""
from __future__ import annotations

PACKET_MAX = 16384          # what we tell gdb (PacketSize) and the most we accept


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape(payload: bytes) -> bytes:
    out = bytearray()
    for b in payload:
        if b in b"#$}*":
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def frame(payload: bytes | str) -> bytes:
    if isinstance(payload, str):
        payload = payload.encode()
    body = escape(payload)
    return b"$" + body + b"#" + b"%02x" % checksum(body)


def unescape(body: bytes) -> bytes:
    out = bytearray()
    it = iter(body)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                raise ValueError("packet ends inside an escape")
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


class PacketReader:
    """Bytes in, events out: ("packet", payload), ("interrupt",), ("ack",), ("nack",),
    or ("bad", reason) for a packet that fails its checksum or is too long (the caller
    answers "-"). Bytes outside packets other than + - and 0x03 are skipped."""

    def __init__(self, limit: int = PACKET_MAX):
        self.limit = limit
        self._buf = bytearray()
        self._in_packet = False

    def feed(self, data: bytes):
        events = []
        for b in data:
            if not self._in_packet:
                if b == 0x24:                 # $
                    self._in_packet = True
                    self._buf.clear()
                elif b == 0x03:
                    events.append(("interrupt",))
                elif b == 0x2B:
                    events.append(("ack",))
                elif b == 0x2D:
                    events.append(("nack",))
                continue
            self._buf.append(b)
            hash_at = len(self._buf) - 3
            if len(self._buf) >= 3 and self._buf[hash_at] == 0x23 and not _escaped(self._buf, hash_at):
                body, sum_text = bytes(self._buf[:hash_at]), bytes(self._buf[hash_at + 1:])
                self._in_packet = False
                self._buf.clear()
                try:
                    want = int(sum_text, 16)
                except ValueError:
                    events.append(("bad", f"checksum {sum_text!r} is not hex"))
                    continue
                if want != checksum(body):
                    events.append(("bad", f"checksum {want:#04x}, the packet sums to {checksum(body):#04x}"))
                    continue
                try:
                    events.append(("packet", unescape(body)))
                except ValueError as e:
                    events.append(("bad", str(e)))
            elif len(self._buf) > self.limit + 3:
                self._in_packet = False
                self._buf.clear()
                events.append(("bad", f"packet longer than {self.limit} bytes"))
        return events


def _escaped(buf, i):
    """Whether buf[i] follows an escape byte (count the run of } before it)."""
    n = 0
    j = i - 1
    while j >= 0 and buf[j] == 0x7D:
        n += 1
        j -= 1
    return n % 2 == 1


def hexs(data: bytes) -> str:
    return data.hex()


def unhex_text(text: str) -> str:
    return bytes.fromhex(text).decode("utf-8", "replace")
