"""Fault injection for tests, kept out of the production modules: a bad network on the
logging channel and a node clock that disagrees with its peer's. Both are off unless
their environment variable is set; the shells ask this module once at start.
"""
from __future__ import annotations

import itertools
import os
import random

CHANNEL_FAULTS_ENV = "FTVM_CHANNEL_FAULTS"
CLOCK_SKEW_ENV = "FTVM_TEST_CLOCK_SKEW_NS_"      # + the node's name


def channel_faults_from_env():
    """A ChannelFaults from FTVM_CHANNEL_FAULTS, or None (the normal case)."""
    spec = os.environ.get(CHANNEL_FAULTS_ENV)
    return ChannelFaults(spec) if spec else None


def clock_skew_ns(name: str) -> int:
    """FTVM_TEST_CLOCK_SKEW_NS_<name>: make this node's clock disagree with its peer's,
    as two hosts' clocks do (guest time and every clock of the node move with it)."""
    return int(os.environ.get(CLOCK_SKEW_ENV + name, "0"))


class ChannelFaults:
    """Test hook: misbehave on node-to-node sends, as a bad network would. Configured
    by FTVM_CHANNEL_FAULTS, e.g. "drop=0.05,dup=0.05,reorder=0.05,delay_ms=5,seed=7":
    each message is dropped, duplicated, held back behind the next one, or delayed by
    up to delay_ms, with the given probabilities."""

    def __init__(self, spec: str):
        kv = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
        self.drop = float(kv.get("drop", 0))
        self.dup = float(kv.get("dup", 0))
        self.reorder = float(kv.get("reorder", 0))
        self.delay_s = float(kv.get("delay_ms", 0)) / 1000
        self.rng = random.Random(int(kv.get("seed", 0)))
        self.held = None
        self.delayed = []       # heap of (due, n, name, data)
        self._n = itertools.count()

    def plan(self, name, data, now):
        """[(due time, name, data)] to send for one message."""
        r = self.rng.random()
        if r < self.drop:
            return []
        out = [(now, name, data)]
        if r < self.drop + self.dup:
            out.append((now, name, data))
        elif r < self.drop + self.dup + self.reorder:
            held, self.held = self.held, (name, data)
            return [] if held is None else [(now, *held)]
        if self.held is not None:
            out.append((now, *self.held))
            self.held = None
        if self.delay_s:
            out = [(t + self.rng.random() * self.delay_s, n, d) for t, n, d in out]
        return out
