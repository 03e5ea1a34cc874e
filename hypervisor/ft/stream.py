"""One offset stream, both ends. Pure code: no I/O, no clocks.

Console output, the network output stream, stdin and the front end's network events
all travel the same way: every piece carries the offset of its first element in one
growing stream, so a piece sent twice, late or out of order is harmless.

- The sender keeps what it sent until the receiver confirms it (``sent``, ``confirm``)
  and can hand back everything not yet confirmed, for a re-send or for a new primary
  (``unconfirmed``, ``since``).
- The receiver takes a piece at an offset and returns what is new in it, exactly
  once (``accept``): a duplicate gives nothing, an overlapping piece gives only its
  new tail, and a piece past a gap is kept (a bounded number of them) until the gap
  fills, so a reordered burst costs no re-send; past the bound it is dropped, and the
  sender fills the gap again.

Elements are bytes (``bytes`` pieces) or items (``list`` pieces, such as network
events); the code only slices and measures them.
"""
from __future__ import annotations

import collections

PIECES_MAX = 1 << 20        # unconfirmed pieces kept at most (the gate bounds bytes long before)
EARLY_PIECES_MAX = 256      # pieces past a gap a receiver keeps, waiting for the gap to fill
EARLY_BYTES_MAX = 4 << 20


class OffsetSender:
    def __init__(self, confirmed: int = 0):
        self.confirmed = confirmed          # the receiver has everything before this
        self.pieces = collections.deque()   # (offset, piece), sent and not yet confirmed
        self.end = confirmed                # offset after the last piece sent

    def sent(self, offset: int, piece):
        assert len(self.pieces) < PIECES_MAX, "unconfirmed pieces past their bound"
        self.pieces.append((offset, piece))
        self.end = max(self.end, offset + len(piece))

    def confirm(self, upto: int) -> bool:
        """The receiver has everything before ``upto``. True if that is news."""
        if upto <= self.confirmed:
            return False
        self.confirmed = upto
        while self.pieces and self.pieces[0][0] + len(self.pieces[0][1]) <= upto:
            self.pieces.popleft()
        return True

    def unconfirmed(self):
        """[(offset, piece)] sent and not confirmed, in order."""
        return list(self.pieces)

    def reset(self, confirmed: int):
        """Start over from ``confirmed`` (a new primary: it re-sends from there)."""
        self.pieces.clear()
        self.confirmed = self.end = confirmed


class OffsetReceiver:
    def __init__(self, received: int = 0):
        self.received = received            # everything before this has been taken
        self.duplicates = 0
        self.gaps = 0
        self.early = {}                     # offset -> piece, past a gap
        self.early_bytes = 0

    def accept(self, offset: int, piece):
        """What is new in ``piece`` (sent at ``offset``): returned exactly once."""
        end = offset + len(piece)
        if end <= self.received:
            self.duplicates += 1
            return piece[:0]
        if offset > self.received:
            self.gaps += 1
            if (offset not in self.early and len(self.early) < EARLY_PIECES_MAX
                    and self.early_bytes + len(piece) <= EARLY_BYTES_MAX):
                self.early[offset] = piece
                self.early_bytes += len(piece)
            return piece[:0]
        fresh = piece[self.received - offset:]
        self.received = end
        if self.early:
            fresh = self._drain(fresh)
        return fresh

    def _drain(self, fresh):
        """Pieces kept past the gap that now follow on."""
        parts = [fresh]
        while True:
            nxt = None
            for off in list(self.early):
                p = self.early[off]
                if off + len(p) <= self.received:
                    self.early_bytes -= len(self.early.pop(off))
                elif off <= self.received:
                    nxt = off
                    break
            if nxt is None:
                break
            p = self.early.pop(nxt)
            self.early_bytes -= len(p)
            parts.append(p[self.received - nxt:])
            self.received = nxt + len(p)
        return parts[0][:0].join(parts) if isinstance(fresh, (bytes, bytearray)) else sum(parts, fresh[:0])
