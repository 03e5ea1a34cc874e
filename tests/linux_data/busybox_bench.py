"""A file-heavy busybox workload for `ftvm bench`: one busybox process, no shell.

`make_tree(root)` writes N small files (deterministic contents, 1-16 KiB, in 10
subdirectories) under root/tree and returns that directory. Two workloads:
  - md5sum_argv(tree): `busybox md5sum FILE...` over every file (reads; output is
    deterministic, so it also checks correctness);
  - cp_argv(tree, dest): `busybox cp -r TREE DEST` (reads and writes every file).
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

BUSYBOX = "/bin/busybox"


def make_tree(root, n=2000):
    """Creates root/tree with n files (removing an earlier one); returns its path."""
    tree = os.path.join(root, "tree")
    shutil.rmtree(tree, ignore_errors=True)
    for d in range(10):
        os.makedirs(os.path.join(tree, f"d{d}"))
    for i in range(n):
        seed = hashlib.sha256(str(i).encode()).digest()
        size = 1024 + (int.from_bytes(seed[:2], "little") % (15 * 1024))
        line = seed.hex().encode() + b"\n"
        body = (line * (size // len(line) + 1))[:size]
        with open(os.path.join(tree, f"d{i % 10}", f"f{i:04d}.txt"), "wb") as f:
            f.write(body)
    return tree


def files(tree):
    """Every file under tree, sorted."""
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(tree) for f in fs)


def md5sum_argv(tree):
    return ["md5sum"] + files(tree)


def cp_argv(tree, dest):
    return ["cp", "-r", tree, dest]


def timed(cmd):
    """Runs cmd (a list) with stdout captured; returns (seconds, stdout bytes)."""
    t = time.perf_counter()
    out = subprocess.run(cmd, stdout=subprocess.PIPE, check=True).stdout
    return time.perf_counter() - t, out


if __name__ == "__main__":
    # Native and qemu-user times of both workloads: python3 busybox_bench.py [N]
    with tempfile.TemporaryDirectory() as root:
        tree = make_tree(root, int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
        copy = os.path.join(root, "copy")
        for runner in ([], ["qemu-x86_64"]):
            t, out = timed(runner + [BUSYBOX] + md5sum_argv(tree))
            print(f"md5sum: {' '.join(runner) or 'native'} {t:.3f} s, {len(out)} bytes out")
            shutil.rmtree(copy, ignore_errors=True)
            t, _ = timed(runner + [BUSYBOX] + cp_argv(tree, copy))
            print(f"cp -r: {' '.join(runner) or 'native'} {t:.3f} s")
