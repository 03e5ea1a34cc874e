"""Malformed ELFs get a one-line error and exit status 2, never a traceback."""
import struct

import pytest

from conftest import run_ftvm

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")


@pytest.fixture(scope="module")
def hello(guests):
    return (guests / "hello.elf").read_bytes()


def phdrs(data):
    e = EHDR.unpack_from(data, 0)
    phoff, phnum = e[5], e[10]
    return [(phoff + i * PHDR.size, list(PHDR.unpack_from(data, phoff + i * PHDR.size))) for i in range(phnum)]


def loads(data):
    return [(off, p) for off, p in phdrs(data) if p[0] == 1]


def patched(data, fn):
    b = bytearray(data)
    fn(b)
    return bytes(b)


def set_phdr(b, off, p):
    PHDR.pack_into(b, off, *p)


def case_not_elf(d):
    return b"#!/bin/sh\necho not an elf\n"


def case_wrong_class(d):
    return patched(d, lambda b: b.__setitem__(4, 1))


def case_big_endian(d):
    return patched(d, lambda b: b.__setitem__(5, 2))


def case_wrong_machine(d):
    return patched(d, lambda b: struct.pack_into("<H", b, 18, 3))


def case_pie(d):
    return patched(d, lambda b: struct.pack_into("<H", b, 16, 3))


def case_segment_past_eof(d):
    off, p = loads(d)[1]
    return d[: p[2] + p[5] // 2]       # cut the file inside the second segment


def case_filesz_past_eof(d):
    def f(b):
        off, p = loads(d)[1]
        p[5] = p[6] = len(d) * 2
        set_phdr(b, off, p)
    return patched(d, f)


def case_overlapping(d):
    def f(b):
        (o1, p1), (o2, p2) = loads(d)[1], loads(d)[2]
        p2[3] = p1[3] + 8               # vaddr inside the previous segment
        set_phdr(b, o2, p2)
    return patched(d, f)


def case_entry_outside(d):
    return patched(d, lambda b: struct.pack_into("<Q", b, 24, 0x10))


def case_entry_in_data(d):
    rodata = [p for _, p in loads(d) if not p[1] & 1][-1]
    return patched(d, lambda b: struct.pack_into("<Q", b, 24, rodata[3]))


def case_too_big(d):
    def f(b):
        off, p = loads(d)[-1]
        p[6] = 8 << 30                  # 8 GiB of .bss
        set_phdr(b, off, p)
    return patched(d, f)


def case_header_cut(d):
    return d[:40]


def case_no_loads(d):
    def f(b):
        for off, p in loads(d):
            p[0] = 4                    # PT_NOTE
            set_phdr(b, off, p)
    return patched(d, f)


CASES = {
    "not_elf": (case_not_elf, "not an ELF file"),
    "wrong_class": (case_wrong_class, "wrong ELF class"),
    "big_endian": (case_big_endian, "wrong data encoding"),
    "wrong_machine": (case_wrong_machine, "wrong machine"),
    "pie": (case_pie, "position-independent"),
    "segment_past_eof": (case_segment_past_eof, "run past the end of file"),
    "filesz_past_eof": (case_filesz_past_eof, "run past the end of file"),
    "overlapping": (case_overlapping, "overlap"),
    "entry_outside": (case_entry_outside, "entry point 0x10 is not inside any executable segment"),
    "entry_in_data": (case_entry_in_data, "is not inside any executable segment"),
    "too_big": (case_too_big, "over the memory limit"),
    "header_cut": (case_header_cut, "cut short"),
    "no_loads": (case_no_loads, "no loadable"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_elf(hello, tmp_path, name):
    make, expect = CASES[name]
    path = tmp_path / f"{name}.elf"
    path.write_bytes(make(hello))
    p = run_ftvm("record", path, "-o", tmp_path / "x.ftlog")
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert expect in lines[0] and str(path) in lines[0], lines[0]
    assert p.stdout == b""


def test_missing_guest_file(tmp_path):
    p = run_ftvm("record", tmp_path / "nope.elf", "-o", tmp_path / "x.ftlog")
    assert p.returncode == 2 and "No such file" in p.stderr and "Traceback" not in p.stderr


def test_memory_limit_option(guests, tmp_path):
    p = run_ftvm("record", guests / "compute.elf", "--mem-limit", "2M", "-o", tmp_path / "x.ftlog")
    assert p.returncode == 2 and "over the memory limit of 2 MiB" in p.stderr


def test_unwritable_log_is_an_io_error(guests, tmp_path):
    p = run_ftvm("record", guests / "hello.elf", "-o", tmp_path / "no" / "such" / "dir" / "x.ftlog")
    assert p.returncode == 7 and "cannot create log" in p.stderr and "Traceback" not in p.stderr


def test_full_disk_is_an_io_error(guests, tmp_path):
    import os
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this machine")
    p = run_ftvm("record", guests / "hello.elf", "-o", "/dev/full")
    assert p.returncode == 7, p.stderr
    assert "disk full" in p.stderr and "Traceback" not in p.stderr
