"""Fault tolerance: a primary and a backup joined by the logging channel.

core.py is the deterministic part (output gate, failure detection, clock skew, lag,
go-live decisions): pure code, driven by tests with fake time. transport.py, node.py
and observer.py are the shells: ZeroMQ sockets, processes, files.
"""
