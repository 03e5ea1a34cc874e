"""The disk device: requests with DMA and completion interrupts on an image file,
recorded and replayed, under fault tolerance, with injected and real disk errors."""
import os
import re
import subprocess

import pytest

from conftest import FTVM, GUESTS, run_ftvm


def test_disk_requests_record_and_replay_identically(guests, tmp_path):
    img, log = tmp_path / "disk.img", tmp_path / "d.ftlog"
    r = run_ftvm("record", GUESTS / "disktest.elf", "-o", log, "--disk", img, "--disk-size", "1M")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert re.search(r"disktest: ok \d+ sectors crc=[0-9a-f]{8}", out), out
    assert os.path.getsize(img) == 1 << 20
    rp = run_ftvm("replay", log)
    assert rp.returncode == 0 and rp.stdout == r.stdout, rp.stderr   # incl. the buffer touched in flight
    show = run_ftvm("log", "show", log, "-k", "disk")
    assert "request 1 done: ok" in show.stdout.decode()
    # The data written is really on the image: a second run reads it back.
    r2 = run_ftvm("record", GUESTS / "disktest.elf", "-o", tmp_path / "d2.ftlog", "--disk", img)
    assert r2.returncode == 0, r2.stderr


def test_disk_under_ft_and_shared_reads(guests, tmp_path):
    for reads in ("log", "shared"):
        img, log = tmp_path / f"{reads}.img", tmp_path / f"{reads}.ftlog"
        r = run_ftvm("run", GUESTS / "disktest.elf", "--disk", img, "--disk-size", "1M", "--disk-reads", reads,
                     "--run-dir", tmp_path / f"rd-{reads}", "--log", log)
        assert r.returncode == 0 and b"disktest: ok" in r.stdout, r.stderr
        extra = ["--disk", img] if reads == "shared" else []
        rp = run_ftvm("replay", log, *extra)
        assert rp.returncode == 0 and rp.stdout == r.stdout, rp.stderr
        if reads == "shared":
            # Without the image, a shared-reads log cannot be replayed: said clearly.
            bad = run_ftvm("replay", log)
            assert bad.returncode != 0 and "--disk" in bad.stderr and "Traceback" not in bad.stderr


def test_injected_disk_error_reaches_the_guest(guests, tmp_path):
    img, log = tmp_path / "disk.img", tmp_path / "e.ftlog"
    r = subprocess.run([str(FTVM), "record", str(GUESTS / "disktest.elf"), "-o", str(log),
                        "--disk", str(img), "--disk-size", "1M"], capture_output=True, timeout=60,
                       env=dict(os.environ, FTVM_DISK_FAULTS="write:2=eio"))
    assert r.returncode == 4, r.stderr
    assert b"write error status 1" in r.stdout
    rp = run_ftvm("replay", log)          # the error is in the log: replay needs no fault injection
    assert rp.returncode == 4 and rp.stdout == r.stdout, rp.stderr


def _mount_tiny_tmpfs(path, size="256k"):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")


def test_a_really_full_disk_is_an_error_status_not_a_crash(guests, tmp_path):
    mnt = tmp_path / "tiny"
    _mount_tiny_tmpfs(mnt)
    try:
        img = mnt / "disk.img"
        # A sparse 64 MiB image on a 256 KiB file system: the first writes find no room.
        with open(mnt / "filler", "wb") as f:
            f.write(b"x" * (200 << 10))
        log = tmp_path / "full.ftlog"
        r = run_ftvm("record", GUESTS / "disktest.elf", "-o", log, "--disk", img, "--disk-size", "64M")
        assert r.returncode == 4, (r.stdout, r.stderr)
        assert b"write error status 2" in r.stdout       # ENOSPC, as the guest sees it
        assert "Traceback" not in r.stderr
        rp = run_ftvm("replay", log)
        assert rp.returncode == 4 and rp.stdout == r.stdout
    finally:
        subprocess.run(["umount", str(mnt)])


def test_bad_disk_options_are_clear_errors(guests, tmp_path):
    r = run_ftvm("record", GUESTS / "disktest.elf", "-o", tmp_path / "x.ftlog", "--disk-size", "1M")
    assert r.returncode == 2 and "--disk-size needs --disk" in r.stderr
    r = run_ftvm("record", GUESTS / "disktest.elf", "-o", tmp_path / "x.ftlog", "--disk", tmp_path / "missing.img")
    assert r.returncode == 7 and "give --disk-size" in r.stderr
    odd = tmp_path / "odd.img"
    odd.write_bytes(b"x" * 1000)
    r = run_ftvm("record", GUESTS / "disktest.elf", "-o", tmp_path / "x.ftlog", "--disk", odd)
    assert r.returncode == 7 and "not a positive multiple of 4096" in r.stderr
    img = tmp_path / "d.img"
    img.write_bytes(bytes(8192))
    r = run_ftvm("record", GUESTS / "disktest.elf", "-o", tmp_path / "x.ftlog", "--disk", img, "--disk-size", "1M")
    assert r.returncode == 7 and "--disk-size says" in r.stderr
    r = run_ftvm("record", GUESTS / "disktest.elf", "-o", tmp_path / "x.ftlog", "--disk", img, "--disk-size", "12x")
    assert r.returncode == 7 and "disk size" in r.stderr


def test_no_disk_attached(guests, tmp_path):
    r = run_ftvm("record", GUESTS / "disktest.elf", "-o", tmp_path / "n.ftlog")
    assert r.returncode == 3 and b"disktest: no disk" in r.stdout
