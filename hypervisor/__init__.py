"""ftvm hypervisor: runs a static x86-64 guest on Unicorn, records and replays it."""

__version__ = "0.1.0"
