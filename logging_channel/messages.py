"""Messages of the logging channel and of the observer link. Pure code, no I/O.

Every message is

    u8 version | u8 type | 16 bytes sender | u32 view | u64 seq | u32 payload length | u32 CRC32 | payload

little-endian; the CRC32 covers the 34 header bytes before it and the payload, which
is one msgpack object. The sender is the node's name (UTF-8, at most 16 bytes, padded
with NULs; the observer's is empty): names, not numbers derived from them, so two
nodes cannot share one (version 1 carried a 16-bit sum of the name's bytes, and "n12"
and "n21" collided). ``view`` is the view (epoch) the sender believes in: it fences
stale primaries. ``seq`` depends on the type (below). A message that fails any check
is refused with a reason; receivers count and drop such messages, never crash.

| type | direction | seq | payload |
|---|---|---|---|
| LOG | primary -> backup | index of the first record | [frames (bin), count, primary blocks, tsc_offset_ns(, sender's clock)] |
| ACK | backup -> primary | records received (next index wanted) | [replayed blocks, records received(, disk reads replayed(, echo of the clock in the latest LOG))] |
| HEARTBEAT | both ways | sender's clock (ns) | [echo of the peer's last clock seen, ns held since, sender role(, primary: records a new backup must have before it may be promoted)] |
| OUTPUT | node -> observer | console byte offset | bytes |
| EXIT | node -> observer | console bytes in all | [status, detail] |
| HELLO | node -> observer | input offset wanted | [node name, role, pid, detail(, network events wanted, network events the backup has)] |
| INPUT | observer -> node | input byte offset | bytes, or nil for end of input |
| CONFIRM | observer -> nodes | console bytes delivered | nil, or network stream bytes delivered |
| STOP | observer -> nodes | 0 | nil: the run is over, exit |
| SNAP | primary -> new backup | chunk index | [chunks, CRC32 of the chunk, chunk (bin), log index the state is at] |
| NETIN | front end -> node | index of the first network event | [[connection, type 1-4, bytes], ...] |
| NETOUT | node -> front end | network output stream offset | bytes (frames, see hypervisor/sources/net.py) |
"""
from __future__ import annotations

import dataclasses
import struct
import zlib

import msgpack

VERSION = 2
HEAD = struct.Struct("<BB16sIQI")
SENDER_MAX = 16
CRC = struct.Struct("<I")
SIZE = HEAD.size + CRC.size
PAYLOAD_MAX = 64 << 20

LOG, ACK, HEARTBEAT, OUTPUT, EXIT, HELLO, INPUT, CONFIRM, STOP, SNAP, NETIN, NETOUT = range(1, 13)
TYPE_NAMES = {LOG: "log", ACK: "ack", HEARTBEAT: "heartbeat", OUTPUT: "output", EXIT: "exit",
              HELLO: "hello", INPUT: "input", CONFIRM: "confirm", STOP: "stop", SNAP: "snap",
              NETIN: "netin", NETOUT: "netout"}


@dataclasses.dataclass(frozen=True)
class Message:
    type: int
    sender: str                 # a node's name; "" for the observer
    view: int
    seq: int
    payload: object


class BadMessage(Exception):
    """A message failed a check; ``reason`` says which."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def sender_name_ok(name: str) -> bool:
    """A name a node may have: 1 to 16 bytes of UTF-8, no NUL."""
    raw = name.encode()
    return 0 < len(raw) <= SENDER_MAX and b"\0" not in raw


def encode(type_: int, sender: str, view: int, seq: int, payload=None) -> bytes:
    body = msgpack.packb(payload, use_bin_type=True)
    raw = sender.encode()
    assert len(raw) <= SENDER_MAX and b"\0" not in raw, sender
    head = HEAD.pack(VERSION, type_, raw, view, seq, len(body))
    return head + CRC.pack(zlib.crc32(body, zlib.crc32(head))) + body


def decode(data: bytes) -> Message:
    if len(data) < SIZE:
        raise BadMessage(f"{len(data)} bytes, shorter than a header ({SIZE})")
    version, type_, sender, view, seq, length = HEAD.unpack_from(data, 0)
    if version != VERSION:
        raise BadMessage(f"version {version}, expected {VERSION}")
    if type_ not in TYPE_NAMES:
        raise BadMessage(f"unknown type {type_}")
    if length > PAYLOAD_MAX or len(data) != SIZE + length:
        raise BadMessage(f"payload length {length} does not match the {len(data) - SIZE} bytes that came")
    (crc,) = CRC.unpack_from(data, HEAD.size)
    body = data[SIZE:]
    if zlib.crc32(body, zlib.crc32(data[:HEAD.size])) != crc:
        raise BadMessage("CRC32 mismatch")
    try:
        payload = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise BadMessage(f"payload is not valid msgpack ({e})") from None
    if not _shape_ok(type_, payload):
        raise BadMessage(f"{TYPE_NAMES[type_]} payload has the wrong shape")
    try:
        name = sender.rstrip(b"\0").decode()
    except UnicodeDecodeError:
        raise BadMessage("sender name is not UTF-8") from None
    return Message(type_, name, view, seq, payload)


def _ints(xs, n):
    return isinstance(xs, list) and len(xs) == n and all(type(x) is int for x in xs)


def _shape_ok(t, p):
    if t == LOG:
        return (isinstance(p, list) and len(p) in (4, 5) and isinstance(p[0], bytes)
                and all(type(x) is int for x in p[1:]))
    if t == ACK:
        return _ints(p, 2) or _ints(p, 3) or _ints(p, 4)
    if t == HEARTBEAT:
        return (isinstance(p, list) and len(p) in (3, 4) and type(p[0]) is int and type(p[1]) is int
                and isinstance(p[2], str) and all(type(x) is int for x in p[3:]))
    if t == OUTPUT:
        return isinstance(p, bytes)
    if t == EXIT:
        return isinstance(p, list) and len(p) == 2 and type(p[0]) is int and isinstance(p[1], str)
    if t == HELLO:
        return (isinstance(p, list) and len(p) in (4, 5, 6) and isinstance(p[0], str) and isinstance(p[1], str)
                and type(p[2]) is int and isinstance(p[3], str) and all(type(x) is int for x in p[4:]))
    if t == INPUT:
        return p is None or isinstance(p, bytes)
    if t == CONFIRM:
        return p is None or type(p) is int
    if t == STOP:
        return p is None
    if t == NETIN:
        return isinstance(p, list) and all(
            isinstance(e, list) and len(e) == 3 and type(e[0]) is int and 0 <= e[0] < 1 << 32
            and e[1] in (1, 2, 3, 4) and isinstance(e[2], bytes) for e in p)
    if t == NETOUT:
        return isinstance(p, bytes)
    if t == SNAP:
        return (isinstance(p, list) and len(p) == 4 and type(p[0]) is int and type(p[1]) is int
                and isinstance(p[2], bytes) and type(p[3]) is int)
    return False
