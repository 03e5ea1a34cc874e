"""What a Linux run is: the program, its arguments and environment, the root and data
directories, the working directory, and the few values fixed at its start (the wall
clock's offset, AT_RANDOM). Kept in the log's header, so that replay and every node of a
fault-tolerant run start the same process."""
from __future__ import annotations

import dataclasses
import json
import os
import time

DEFAULT_ENV = ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8", "TERM=dumb", "USER=ftvm",
               "LOGNAME=ftvm", "SHELL=/bin/sh", "TZ=UTC"]
DEFAULT_DATA_GUEST = "/data"
SPEC_SUFFIX = ".ftvm-linux.json"


@dataclasses.dataclass
class LinuxSpec:
    program: str                      # guest path of the program
    argv: list
    env: list
    root: str = "/"
    data_host: str | None = None
    data_guest: str = DEFAULT_DATA_GUEST
    cwd: str = "/"
    realtime_base_ns: int = 0         # CLOCK_REALTIME = guest time + this
    at_random: str = ""               # AT_RANDOM's 16 bytes, hex
    program_sha256: str = ""
    files: dict = dataclasses.field(default_factory=dict)   # interpreter path -> sha256
    listen_port: int | None = None    # the port the front end forwards (--listen), if any

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def fresh(self):
        """The values fixed at a new start: the wall clock and AT_RANDOM."""
        self.realtime_base_ns = time.time_ns()
        self.at_random = os.urandom(16).hex()
        return self

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f)

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls.from_dict(json.load(f))
