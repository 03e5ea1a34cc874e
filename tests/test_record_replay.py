"""record == replay, byte for byte, for every guest program, through the real CLI."""
import subprocess

import pytest

from conftest import run_ftvm

CASES = {
    # guest: (stdin, expected exit status, a string the console must contain)
    "hello.elf": (b"", 0, b"Hello from an ftvm guest!"),
    "clock.elf": (b"", 0, b"monotonic=yes"),
    "echo.elf": (b"one\ntwo three\nlast", 0, b"echo[2]: TWO THREE\necho[3]: LAST\necho: 3 lines, 18 bytes"),
    "ticker.elf": (b"", 0, b"ticker: ticks=5"),
    "compute.elf": (b"", 0, b"compute: primes=148933 hash=0xe99dc9f7df849729"),
    "tsc_heavy.elf": (b"", 0, b"monotonic=yes"),
    "fault.elf": (b"", 139, b"fault: reading 0xdead0000"),
    "badop.elf": (b"", 132, b"badop: executing ud2"),
    "random.elf": (b"", 0, b"random: 0x"),
    "mixed.elf": (b"abc\ndef\n", 0, b"mixed: bytes=8"),
}


@pytest.mark.parametrize("guest", sorted(CASES))
def test_record_equals_replay(guests, tmp_path, guest):
    stdin, status, expect = CASES[guest]
    log = tmp_path / "run.ftlog"
    rec = run_ftvm("record", guests / guest, "-o", log, input=stdin)
    assert rec.returncode == status, rec.stderr
    assert expect in rec.stdout
    assert "Traceback" not in rec.stderr
    rep = run_ftvm("replay", log)
    assert rep.returncode == status, rep.stderr
    assert rep.stdout == rec.stdout
    assert "identical to the recording" in rep.stderr


def test_random_values_come_from_the_log(guests, tmp_path):
    """Two recordings differ (real entropy); each replay matches its own recording."""
    outs = []
    for i in range(2):
        log = tmp_path / f"r{i}.ftlog"
        rec = run_ftvm("record", guests / "random.elf", "-o", log)
        rep = run_ftvm("replay", log)
        assert rep.stdout == rec.stdout
        outs.append(rec.stdout)
    assert outs[0] != outs[1]


def test_fault_is_reported_with_address_pc_and_point(guests, tmp_path):
    log = tmp_path / "f.ftlog"
    rec = run_ftvm("record", guests / "fault.elf", "-o", log)
    assert rec.returncode == 139
    line = rec.stderr.strip().splitlines()[-1]
    assert "read of unmapped memory at address 0xdead0000" in line
    assert "pc 0x" in line and "block" in line
    show = run_ftvm("log", "show", log, "--kind", "end")
    assert b"fault status 139" in show.stdout


@pytest.mark.parametrize("name,code,what,address", [
    # mov rbx, 0xdead0000; mov rax, [rbx+8]
    ("read", bytes.fromhex("48bb0000adde00000000" "488b4308"), "read of unmapped memory", 0xdead0008),
    # mov rsp, 0x1008; push rax
    ("push", bytes.fromhex("48c7c408100000" "50"), "write to unmapped memory", 0x1000),
    # mov rsp, 0x1008; call .+5
    ("call", bytes.fromhex("48c7c408100000" "e800000000"), "write to unmapped memory", 0x1000),
    # mov rsp, 0x1000; ret
    ("ret", bytes.fromhex("48c7c400100000" "c3"), "read of unmapped memory", 0x1000),
    # mov rbx, <entry>; mov [rbx], eax   (the text segment is read-only)
    ("text", None, "write to read-only memory", "entry"),
])
def test_memory_faults_name_their_address(guests, name, code, what, address):
    """With no memory hooks installed (they keep every store on Unicorn's slow path),
    the address comes from the faulting instruction: operand or stack slot."""
    from hypervisor import elf_loader
    from hypervisor.vcpu import VCPU

    _, image = elf_loader.load_file(guests / "hello.elf")
    if code is None:
        code = bytes.fromhex("48bb") + image.entry.to_bytes(8, "little") + bytes.fromhex("8903")
        address = image.entry

    class NoPorts:
        def port_in(self, port, size):
            return 0

        def port_out(self, port, size, value):
            pass

    vcpu = VCPU(image, 1 << 16, NoPorts())
    vcpu.write(image.entry, code)
    fault = vcpu.run()
    assert fault is not None and fault.status == 139, fault
    assert (fault.what, fault.address) == (what, address), fault.describe()
    assert fault.pc == image.entry + len(code) - (4 if name == "read" else 1 if name in ("push", "ret") else
                                                  5 if name == "call" else 2)


def test_guest_stuck_in_hlt_is_reported(guests, tmp_path):
    log = tmp_path / "s.ftlog"
    rec = run_ftvm("record", guests / "stuck.elf", "-o", log)
    assert rec.returncode == 6, rec.stderr
    assert "no interrupt can ever wake it" in rec.stderr
    rep = run_ftvm("replay", log)
    assert rep.returncode == 6 and rep.stdout == rec.stdout


def test_echo_with_no_input_ends_cleanly(guests, tmp_path):
    rec = run_ftvm("record", guests / "echo.elf", "-o", tmp_path / "e.ftlog", input=b"")
    assert rec.returncode == 0
    assert b"echo: 0 lines, 0 bytes" in rec.stdout


def test_divergence_at_a_random_read_is_one_clear_error(guests, tmp_path):
    """A log whose random-number value sits at another block count than the guest's read:
    replay stops with the divergence error, and no Python traceback from the IN hook
    ("Exception ignored on converting result of ctypes callback") comes first."""
    import dataclasses

    from logging_channel import records as R
    from logging_channel.logfile import LogWriter
    from conftest import log_records

    log = tmp_path / "r.ftlog"
    rec = run_ftvm("record", guests / "random.elf", "-o", log)
    assert rec.returncode == 0, rec.stderr
    bad = tmp_path / "bad.ftlog"
    w = LogWriter(bad)
    moved = False
    for r in log_records(log):
        if isinstance(r, R.Rng) and not moved:
            r = dataclasses.replace(r, blocks=r.blocks + 7)
            moved = True
        w.append(r)
    w.close()
    assert moved
    rep = run_ftvm("replay", bad)
    assert rep.returncode != 0
    assert "random-number read" in rep.stderr, rep.stderr
    assert "Exception ignored" not in rep.stderr and "Traceback" not in rep.stderr, rep.stderr


def test_untouched_guest_memory_costs_no_host_memory(guests, tmp_path):
    """zeromem.elf has about 1 GiB of zero-initialised data and touches one page of it:
    recording it must not back the rest with host memory (it took 1.1 GB: the state
    digest read every page)."""
    import sys
    log = tmp_path / "z.ftlog"
    probe = ("import resource, subprocess, sys; "
             "p = subprocess.run(sys.argv[1:], capture_output=True); "
             "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    from conftest import FTVM
    out = subprocess.run([sys.executable, "-c", probe, str(FTVM), "record", str(guests / "zeromem.elf"), "-o", str(log)],
                         capture_output=True, text=True, timeout=120)
    status, rss_kib = map(int, out.stdout.split())
    assert status == 0, out.stderr
    assert rss_kib < 300 * 1024, f"recording used {rss_kib // 1024} MiB"
    rep = run_ftvm("replay", "-q", log)
    assert rep.returncode == 0 and rep.stdout == b"zeromem: 1\n", rep.stderr
