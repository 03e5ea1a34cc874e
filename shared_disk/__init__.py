"""Shared storage: the arbiter whose atomic test-and-set decides who may be primary."""
