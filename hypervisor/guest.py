"""What runs: an ftvm-ABI guest (a static ELF written against guest_programs/ftvm.h) or
an unmodified Linux program. One rule picks the personality (``choose``), and each kind
knows how to write its log header and build its machine.

The rule: ``--personality abi|linux`` forces it. Otherwise an ELF is an ftvm-ABI guest
when it carries the ftvm ABI note (guest_programs/crt0.S puts it there), or when it is
a static, non-PIE executable with no interpreter, no thread-local storage and no
`syscall` instruction in its code (ftvm-ABI guests built before the note). Everything
else is a Linux program.
"""
from __future__ import annotations

import os
import shutil
import socket
import time

from logging_channel import records as R

from . import __version__, abi, elf_loader
from .errors import EXIT_USAGE, BadElf, FtvmError


class BadOption(FtvmError):
    """A Linux option (--cwd, --data, --env) names something that cannot be."""
    exit_status = EXIT_USAGE


class AbiGuest:
    personality = "abi"

    def __init__(self, elf_bytes, image, name):
        self.elf_bytes, self.image, self.name = elf_bytes, image, name

    def header(self, config):
        return R.Header(elf=self.elf_bytes, elf_sha256=self.image.sha256, elf_name=self.name, abi=abi.ABI_VERSION,
                        config=dict(config.to_dict(), host=socket.gethostname()),
                        created_unix=time.time(), ftvm_version=__version__)

    def machine(self, config, mode, console, entropy=None):
        from .machine import Machine
        return Machine(self.image, config, mode, console, entropy=entropy)


class LinuxGuest:
    personality = "linux"

    def __init__(self, spec):
        self.spec = spec

    @property
    def name(self):
        return os.path.basename(self.spec.program)

    def header(self, config):
        sp = self.spec
        return R.Header(elf=b"", elf_sha256=sp.program_sha256, elf_name=sp.program, abi=0,
                        config=dict(config.to_dict(), host=socket.gethostname(), personality="linux",
                                    linux=sp.to_dict()),
                        created_unix=time.time(), ftvm_version=__version__)

    def machine(self, config, mode, console, entropy=None, start=True):
        from .linux.machine import LinuxMachine
        return LinuxMachine(self.spec, config, mode, console, entropy=entropy, start=start)

    @classmethod
    def from_header(cls, header):
        from .linux.spec import LinuxSpec
        return cls(LinuxSpec.from_dict(header.config["linux"]))


PT_INTERP, PT_TLS, PT_NOTE = 3, 7, 4
ABI_NOTE_NAME = b"ftvm\0"


def choose(data: bytes) -> str:
    """'abi' or 'linux', by the rule in this module's docstring."""
    import struct
    if data[:4] != b"\x7fELF" or len(data) < 64:
        return "abi"           # let the ABI loader name what is wrong
    e_type = struct.unpack_from("<H", data, 16)[0]
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    has_interp = has_tls = False
    exec_code = []
    for i in range(phnum):
        off = phoff + 56 * i
        if off + 56 > len(data):
            return "abi"
        p_type, p_flags, p_off, _v, _p, p_filesz = struct.unpack_from("<IIQQQQ", data, off)
        if p_type == PT_NOTE and ABI_NOTE_NAME in data[p_off:p_off + p_filesz]:
            return "abi"
        has_interp |= p_type == PT_INTERP
        has_tls |= p_type == PT_TLS
        if p_type == 1 and p_flags & 1:
            exec_code.append(data[p_off:p_off + p_filesz])
    if e_type != 2 or has_interp or has_tls:
        return "linux"
    if any(b"\x0f\x05" in code for code in exec_code):
        return "linux"
    return "abi"


def find_program(program, root="/", cwd=None):
    """The guest path of PROGRAM: absolute as given; with a slash, relative to the
    working directory; a bare name is looked up in PATH inside the root."""
    from .linux.calls_files import _in_root
    cwd = cwd or os.getcwd()
    if "/" in program:
        return os.path.normpath(program if program.startswith("/") else os.path.join(cwd, program))
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        g = f"{d}/{program}"
        host = g if root == "/" else _in_root(root, g)
        if os.path.isfile(host) and os.access(host, os.X_OK):
            return g
    raise BadElf(f"{program}: not found in the root's PATH (/usr/local/bin:/usr/bin:/bin under {root})")


def open_guest(program, argv=None, *, personality=None, root="/", data=None, cwd=None, env=(), mem_limit=None,
               stack_size=None, listen=None):
    """Build the guest for PROGRAM (a host path, or a guest path in the root)."""
    from .linux.fs import file_identity
    from .linux.spec import DEFAULT_DATA_GUEST, DEFAULT_ENV, SPEC_SUFFIX, LinuxSpec
    if str(program).endswith(SPEC_SUFFIX):
        return LinuxGuest(LinuxSpec.load(program))
    root = os.path.abspath(root)
    if personality != "linux" and root == "/" and os.path.exists(program) and personality != "linux":
        try:
            with open(program, "rb") as f:
                head = f.read(64 << 20)
        except OSError as e:
            raise BadElf(f"{program}: cannot read it ({e.strerror})") from None
        if head[:2] == b"#!" and personality != "abi":
            interp = head[2:].split(b"\n", 1)[0].strip().decode(errors="replace")
            raise BadElf(f"{program}: not an ELF file but a script for {interp or 'an interpreter'}; run its interpreter: "
                         f"ftvm record -- {interp.split()[0] if interp else '/bin/sh'} {program}")
        if personality == "abi" or choose(head) == "abi":
            kw = {}
            if mem_limit is not None:
                kw["mem_limit"] = mem_limit
            if stack_size is not None:
                kw["stack_size"] = stack_size
            data_, image = elf_loader.load_file(program, **kw)
            return AbiGuest(data_, image, os.path.basename(program))
    if cwd is None:
        cwd = os.getcwd() if root == "/" else "/"
    gprog = find_program(program, root, cwd)
    from .linux.calls_files import _in_root
    host = gprog if root == "/" else _in_root(root, gprog)
    ident = file_identity(host)
    if ident is None:
        raise BadElf(f"{program}: No such file{'' if root == '/' else ' in the root ' + root}")
    with open(host, "rb") as f:
        head = f.read(64)
    if head[:4] != b"\x7fELF":
        what = "a script (run its interpreter: ftvm record -- /bin/sh SCRIPT)" if head[:2] == b"#!" else "not an ELF file"
        raise BadElf(f"{program}: {what}")
    data_host, data_guest = None, DEFAULT_DATA_GUEST
    if not cwd.startswith("/"):
        raise BadOption(f"--cwd {cwd}: give an absolute guest path")
    if data:
        data_host, _, g = data.partition(":")
        data_host = os.path.abspath(data_host)
        data_guest = g or DEFAULT_DATA_GUEST
        if not data_guest.startswith("/"):
            raise BadOption(f"--data {data}: the guest path {data_guest!r} must be absolute")
        os.makedirs(data_host, exist_ok=True)
    _check_cwd(cwd, root, data_host, data_guest)
    envs = list(DEFAULT_ENV)
    for kv in env:
        if "=" not in kv:
            raise BadOption(f"--env {kv!r}: use NAME=VALUE")
        name = kv.split("=", 1)[0]
        envs = [e for e in envs if not e.startswith(name + "=")] + [kv]
    spec = LinuxSpec(program=gprog, argv=[program] + list(argv or []), env=envs, root=root, data_host=data_host,
                     data_guest=data_guest, cwd=cwd, program_sha256=ident[2]).fresh()
    if listen:
        from .frontend import parse_addr
        spec.listen_port = parse_addr(listen)[1]
    return LinuxGuest(spec)


def _check_cwd(cwd, root, data_host, data_guest):
    """The working directory must exist in the guest's file system."""
    from .linux.calls_files import _in_root
    cwd = os.path.normpath(cwd)
    if cwd == "/tmp":
        return
    if data_host and (cwd == data_guest or cwd.startswith(data_guest.rstrip("/") + "/")):
        host = _in_root(data_host, "/" + cwd[len(data_guest):].lstrip("/"))
    else:
        host = cwd if root == "/" else _in_root(root, cwd)
    if not os.path.isdir(host):
        raise BadOption(f"--cwd {cwd}: no such directory in the guest's file system (root {root})")


_ = shutil
