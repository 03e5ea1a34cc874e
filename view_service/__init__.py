"""The view service: decides which node is primary and which is backup.

core.py is the decision logic (pure, driven by tests with fake time and transcripts).
It is a single point of failure by design (the classic primary/backup view service);
nodes reach it only through the Coordinator interface, so a replicated store such as
etcd can take its place.
"""
